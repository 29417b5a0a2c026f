"""Building a sidecar: source-symbol hashes and repair symbols, stripe group by stripe group.

Workers read their stripes straight from the payload file (one contiguous read per row of
a stripe group) and write repair symbols straight into the sidecar file at their final
offsets, starting their writeback at once; only hashes travel back to the parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ftstore.hashing import SYMBOL_HASH_BYTES, aligned_buffer, read_at, symbol_hash
from ftstore.durable import must_open_regular, pwrite_all, start_writeback
from ftstore.codec.layout import Layout, stripe_groups
from ftstore.codec.parallel import pmap
from ftstore.codec.rq import encode_repair

PARALLEL_MIN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class EncodeTask:
    payload: str
    sidecar: str
    layout: Layout
    repair_base: int  # offset of the repair region in the sidecar
    stripes: tuple[int, ...]  # contiguous
    hash_source: bool = True  # False: the caller has the source-symbol hashes already


def read_stripes(f, layout: Layout, stripes: tuple[int, ...]) -> dict[int, bytes]:
    """Objects for a contiguous run of stripes, each ``K_s * T`` bytes, zero-padded.

    One read per row of the run, into one page-aligned buffer (see ``aligned_buffer``: a
    ``pread`` into a new ``bytes`` reads four times slower on some machines), and each
    object joined once from views of the rows: the binding takes only ``bytes``, so every
    copy saved here is saved per byte stored. A file shorter than the layout (truncated)
    reads as zeros from where it ends."""
    t, S, fd = layout.symbol_size, layout.stripes, f.fileno()
    a, b = stripes[0], stripes[-1] + 1
    width = (b - a) * t
    rows = aligned_buffer(layout.stripe_k(a) * width)
    pieces: dict[int, list[memoryview]] = {s: [] for s in stripes}
    for r in range(layout.stripe_k(a)):
        start = (r * S + a) * t
        want = min(width, layout.size - start)
        if want <= 0:
            break
        row = read_at(fd, rows[r * width : r * width + want], start)
        for s in stripes:
            piece = row[(s - a) * t : (s - a + 1) * t]
            if piece:
                pieces[s].append(piece)
        if len(row) < want:
            break  # end of a short file: everything after it is missing too
    out = {}
    for s in stripes:
        obj = b"".join(pieces.pop(s))
        pad = layout.stripe_k(s) * t - len(obj)
        out[s] = obj + bytes(pad) if pad else obj
    return out


def _encode_group(task: EncodeTask) -> dict[int, tuple[bytes, bytes]]:
    lay, t = task.layout, task.layout.symbol_size
    out = {}
    with must_open_regular(task.payload) as pf:
        objs = read_stripes(pf, lay, task.stripes)
    fd = os.open(task.sidecar, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        for s in task.stripes:
            obj = objs.pop(s)
            k = lay.stripe_k(s)
            src = b"".join(symbol_hash(memoryview(obj)[i * t : (i + 1) * t]) for i in range(k)) if task.hash_source else b""
            repair = encode_repair(obj, t, k, lay.repair_counts[s])
            del obj
            block = b"".join(repair)
            offset = task.repair_base + lay.repair_starts[s] * t
            pwrite_all(fd, block, offset)
            start_writeback(fd, offset, len(block))
            out[s] = (src, b"".join(symbol_hash(r) for r in repair))
    finally:
        os.close(fd)
    return out


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
    for result in pmap(_encode_group, tasks, jobs, parallel=layout.size >= PARALLEL_MIN_BYTES):
        for s, (src, rep) in result.items():
            if source_table is None:
                layout.put_stripe_entries(src_table, s, h, src)
            rep_parts[s] = rep
    repair_table = b"".join(rep_parts[s] for s in range(layout.stripes))
    return (bytes(src_table) if source_table is None else source_table), repair_table
