"""Building a sidecar: source-symbol hashes and repair symbols, stripe group by stripe group.

This is the parent's side: the workers (:func:`~ftstore.codec.tasks.encode_group`) read
their stripes straight from the payload file and write repair symbols straight into the
sidecar file at their final offsets; only hashes travel back, put together here.
"""

from __future__ import annotations

import os

from ftstore.codec.layout import Layout, stripe_groups
from ftstore.codec.parallel import pmap
from ftstore.codec.tasks import EncodeTask, encode_group
from ftstore.hashing import SYMBOL_HASH_BYTES

PARALLEL_MIN_BYTES = 16 * 1024 * 1024


def encode_sidecar_body(
    payload: str | os.PathLike, sidecar: str | os.PathLike, layout: Layout, repair_base: int, jobs: int | None,
    source_table: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Write every repair symbol into ``sidecar`` and return (source hashes, repair hashes)
    in file-symbol order and repair-region order. ``source_table``: the source hashes, taken
    by the caller from the same file (a copy hashes them as it lands, on a core the copy
    leaves idle), so the encoders do not hash the source again."""
    h = SYMBOL_HASH_BYTES
    if source_table is not None and len(source_table) != layout.source_symbols * h:
        raise ValueError(f"a source-symbol table of {len(source_table)} bytes for {layout.source_symbols} symbols")
    tasks = [
        EncodeTask(os.fspath(payload), os.fspath(sidecar), layout, repair_base, tuple(g), source_table is None)
        for g in stripe_groups(layout)
    ]
    src_table = bytearray(layout.source_symbols * h)
    rep_parts: dict[int, bytes] = {}
    for result in pmap(encode_group, tasks, jobs, parallel=layout.size >= PARALLEL_MIN_BYTES):
        for s, (src, rep) in result.items():
            if source_table is None:
                layout.put_stripe_entries(src_table, s, h, src)
            rep_parts[s] = rep
    repair_table = b"".join(rep_parts[s] for s in range(layout.stripes))
    return (bytes(src_table) if source_table is None else source_table), repair_table
