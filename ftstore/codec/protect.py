"""Writing a sidecar for a payload, and writing a repaired payload from decoded stripes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..hashing import hash_file
from .decoder import StripeOutcome
from .encoder import encode_sidecar_body
from .layout import Layout
from .rq import LIBRARY_VERSION
from .sidecar import (
    ArtifactEssentials,
    SidecarHeader,
    block_length,
    build_block,
    header_bytes,
    sidecar_size,
    write_meta,
)


@dataclass(frozen=True)
class SidecarInfo:
    layout: Layout
    overhead: float
    size: int
    hash: str
    library_version: str


def write_sidecar(
    payload: Path,
    dest: Path,
    essentials: ArtifactEssentials,
    overhead: float,
    symbol_size: int | None = None,
    jobs: int | None = None,
) -> SidecarInfo:
    """Encode ``payload`` into a new sidecar file ``dest`` (fsynced). ``payload`` must already
    hold exactly ``essentials.size`` bytes matching ``essentials.source_hash``."""
    layout = Layout.plan(essentials.size, overhead, symbol_size)
    header = SidecarHeader(
        library_version=LIBRARY_VERSION,
        payload_size=essentials.size,
        symbol_size=layout.symbol_size,
        stripes=layout.stripes,
        source_symbols=layout.source_symbols,
        overhead=overhead,
        repair_symbols_per_stripe=list(layout.repair_counts),
        artifact=essentials,
    )
    hj = header_bytes(header)
    blen = block_length(hj, layout)
    with open(dest, "xb") as f:
        f.truncate(sidecar_size(blen, layout))
    src, rep = encode_sidecar_body(payload, dest, layout, blen, jobs)
    block = build_block(hj, src, rep)
    with open(dest, "r+b") as f:
        write_meta(f, block, layout)
        f.flush()
        os.fsync(f.fileno())
    digest, size = hash_file(dest)
    return SidecarInfo(layout, overhead, size, digest, LIBRARY_VERSION)


def write_repaired(payload: Path, dest: Path, layout: Layout, outcomes: list[StripeOutcome]) -> None:
    """Write ``dest``: the payload's bytes cut or zero-extended to the recorded size, with
    every recovered symbol patched in. The caller checks the result's BLAKE3."""
    with open(dest, "xb") as fo:
        if payload.exists():
            with open(payload, "rb") as fi:
                remaining = layout.size
                while remaining:
                    chunk = fi.read(min(remaining, 16 << 20))
                    if not chunk:
                        break
                    fo.write(chunk)
                    remaining -= len(chunk)
        fo.truncate(layout.size)
        for oc in outcomes:
            for i, sym in (oc.recovered or {}).items():
                off, length = layout.symbol_extent(layout.global_index(oc.stripe, i))
                fo.seek(off)
                fo.write(sym[:length])
        fo.flush()
        os.fsync(fo.fileno())
