"""Writing a sidecar for a payload, and patching a damaged payload with decoded symbols."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ftstore.hashing import SYMBOL_HASH_BYTES, hash_file, symbol_hash
from ftstore.codec.decoder import StripeOutcome
from ftstore.codec.encoder import encode_sidecar_body
from ftstore.codec.layout import Layout
from ftstore.codec.rq import LIBRARY_VERSION
from ftstore.documents.envelope import ArtifactEssentials
from ftstore.codec.sidecar import (
    SidecarHeader,
    SidecarMeta,
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


class SymbolHasher:
    """A copy sink that hashes the stream symbol by symbol (the last one zero-padded), so a
    copy can be checked against the sidecar's source-symbol table without reading it again."""

    def __init__(self, symbol_size: int):
        self.t = symbol_size
        self.parts: list[bytes] = []
        self.rest = b""

    def __call__(self, chunk: memoryview) -> None:
        t = self.t
        if self.rest:
            take = t - len(self.rest)
            self.rest += bytes(chunk[:take])
            chunk = chunk[take:]
            if len(self.rest) < t:
                return
            self.parts.append(symbol_hash(self.rest))
            self.rest = b""
        whole = len(chunk) - len(chunk) % t
        self.parts.extend(symbol_hash(chunk[i : i + t]) for i in range(0, whole, t))
        self.rest = bytes(chunk[whole:])

    def table(self) -> bytes:
        tail = [symbol_hash(self.rest + bytes(self.t - len(self.rest)))] if self.rest else []
        return b"".join(self.parts + tail)


class SidecarBuild:
    """A sidecar written in two steps: ``encode`` the repair region from a file, then
    ``finish`` with the final essentials (whose ``source_hash`` may be learned meanwhile:
    it has a fixed length, so the metadata block's size is known from the start)."""

    def __init__(self, dest: Path, template: ArtifactEssentials, overhead: float, symbol_size: int | None = None):
        self.dest = dest
        self.overhead = overhead
        self.layout = Layout.plan(template.size, overhead, symbol_size)
        self.block_len = block_length(header_bytes(self._header(template)), self.layout)
        self.source_table = b""
        self.repair_table = b""

    def _header(self, essentials: ArtifactEssentials) -> SidecarHeader:
        lay = self.layout
        return SidecarHeader(
            library_version=LIBRARY_VERSION,
            payload_size=lay.size,
            symbol_size=lay.symbol_size,
            stripes=lay.stripes,
            source_symbols=lay.source_symbols,
            overhead=self.overhead,
            repair_symbols_per_stripe=list(lay.repair_counts),
            artifact=essentials,
        )

    def encode(self, source: Path, jobs: int | None) -> bytes:
        """Write every repair symbol; returns the source-symbol hash table."""
        with open(self.dest, "xb") as f:
            f.truncate(sidecar_size(self.block_len, self.layout))
        self.source_table, self.repair_table = encode_sidecar_body(source, self.dest, self.layout, self.block_len, jobs)
        return self.source_table

    def finish(self, essentials: ArtifactEssentials) -> SidecarInfo:
        hj = header_bytes(self._header(essentials))
        if block_length(hj, self.layout) != self.block_len:
            raise ValueError("sidecar header changed length between encode and finish")
        with open(self.dest, "r+b") as f:
            write_meta(f, build_block(hj, self.source_table, self.repair_table), self.layout)
            f.flush()
            with ThreadPoolExecutor(1) as ex:  # the disk flushes while the CPU hashes
                synced = ex.submit(os.fsync, f.fileno())
                digest, size = hash_file(self.dest)
                synced.result()
        return SidecarInfo(self.layout, self.overhead, size, digest, LIBRARY_VERSION)


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
    build = SidecarBuild(dest, essentials, overhead, symbol_size)
    build.encode(payload, jobs)
    return build.finish(essentials)


def patch_in_place(payload: Path, meta: SidecarMeta, outcomes: list[StripeOutcome]) -> None:
    """Write recovered symbols over the damaged ones and cut the file to its recorded size.

    Only bytes that were wrong are overwritten, and only with symbols that match their hash
    in the sidecar, so a crash at any point leaves a payload no more damaged than before,
    which the next repair finishes. The caller checks the whole BLAKE3 afterwards.
    The file is opened without following links: a payload replaced by a symlink is never
    written through."""
    lay, h = meta.layout, SYMBOL_HASH_BYTES
    patches = []
    for oc in outcomes:
        for i, sym in (oc.recovered or {}).items():
            j = lay.global_index(oc.stripe, i)
            if symbol_hash(sym) != meta.source_hashes[j * h : (j + 1) * h]:
                raise ValueError(f"decoded symbol {j} does not match its hash")
            off, length = lay.symbol_extent(j)
            patches.append((off, sym[:length]))
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(payload, flags, 0o644)
    try:
        if os.fstat(fd).st_size != lay.size:
            os.ftruncate(fd, lay.size)
        for off, data in patches:
            os.pwrite(fd, data, off)
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["SidecarBuild", "SidecarInfo", "SymbolHasher", "patch_in_place", "write_sidecar"]
