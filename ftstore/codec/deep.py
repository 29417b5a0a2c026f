"""Deep scrub: prove an artifact is still recoverable by erasing a sample of source symbols
in memory and decoding them back from the repair symbols, without touching the files."""

from __future__ import annotations

import random
from pathlib import Path

from ftstore.fileio import must_open_regular
from ftstore.hashing import symbol_hash
from ftstore.codec.tasks import read_stripes
from ftstore.codec.rq import CodecFailure, decode, packet
from ftstore.codec.sidecar import SidecarMeta

MAX_PROBED_STRIPES = 8


def prove_recoverable(payload: Path, sidecar: Path, meta: SidecarMeta, seed: int = 0) -> tuple[int, int, bool]:
    """Returns (stripes probed, symbols erased, every probe decoded right)."""
    lay, t = meta.layout, meta.layout.symbol_size
    if lay.stripes == 0:
        return 0, 0, True
    rng = random.Random(f"{seed}:{meta.header.artifact.artifact_id}")
    stripes = sorted(rng.sample(range(lay.stripes), min(MAX_PROBED_STRIPES, lay.stripes)))
    erased_total = 0
    with must_open_regular(payload) as pf, must_open_regular(sidecar) as sf:
        for s in stripes:
            k, r = lay.stripe_k(s), lay.repair_counts[s]
            ((_, obj),) = read_stripes(pf, lay, (s,))
            n_erase = min(k, lay.budget(s))
            erased = set(rng.sample(range(k), n_erase))
            erased_total += n_erase
            sf.seek(meta.repair_offset(s, 0))
            rep = sf.read(r * t)
            packets = [packet(i, obj[i * t : (i + 1) * t]) for i in range(k) if i not in erased]
            for i in range(r):
                sym = rep[i * t : (i + 1) * t]
                if symbol_hash(sym) == meta.repair_hash_of(lay.repair_starts[s] + i):
                    packets.append(packet(k + i, sym))
            try:
                out, _ = decode(k * t, t, packets)
            except CodecFailure:
                out = None
            if out is None or any(out[i * t : (i + 1) * t] != obj[i * t : (i + 1) * t] for i in erased):
                return len(stripes), erased_total, False
    return len(stripes), erased_total, True
