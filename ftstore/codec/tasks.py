"""The work a codec worker does, a group of stripes at a time: encoding them
(:func:`encode_group`), and checking and decoding them (:func:`check_group`).

A module of its own that imports only what that work needs (the layout, symbol hashes,
regular files and the binding; no dataclasses, no worker pool, no copies or temporary
files): every worker of every large save and repair imports it as it starts, on every
core, before its first stripe. The parent's side, making the tasks and putting the answers
together, is :mod:`~ftstore.codec.encoder` and :mod:`~ftstore.codec.decoder`.

Workers read their stripes straight from the payload file (one contiguous read per row of
a stripe group) and write repair symbols straight into the sidecar file at their final
offsets, starting their writeback at once; only hashes travel back to the parent. A check
hashes every source and repair symbol of its stripes against the sidecar's tables (a
symbol that fails is an erasure), decodes each damaged stripe and checks every decoded
symbol against its hash before it counts as recovered. With a spill file, each worker
writes the symbols it recovered into that file at their payload offsets and sends back
only their indices, so the caller never holds recovered bytes.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
from collections.abc import Iterator

from ftstore.codec.layout import Layout
from ftstore.codec.results import StripeOutcome
from ftstore.codec.rq import CodecFailure, decode, encode_repair, packet
from ftstore.fileio import NO_FOLLOW, NotRegularFileError, must_open_regular, open_regular, pwrite_all, start_writeback
from ftstore.hashing import SYMBOL_HASH_BYTES, aligned_buffer, read_at, symbol_hash

EncodeTask = collections.namedtuple("EncodeTask", "payload sidecar layout repair_base stripes hash_source",
                                    defaults=(True,))
"""Encode ``stripes`` (contiguous) of the file ``payload`` (a path) laid out as ``layout``;
write their repair symbols into the file ``sidecar``, whose repair region starts at
``repair_base``. With ``hash_source`` false, the caller has the source-symbol hashes."""


def read_stripes(f, layout: Layout, stripes: tuple[int, ...]) -> Iterator[tuple[int, bytes]]:
    """(stripe, object) for a contiguous run of stripes, in order, each object ``K_s * T``
    bytes, zero-padded.

    One read per row of the run, into one page-aligned buffer (see ``aligned_buffer``: a
    ``pread`` into a new ``bytes`` reads four times slower on some machines). Each object is
    joined from views of the rows only when it is asked for, just before the binding
    encodes or decodes it, so a worker holds one stripe's copy at a time, not its group's;
    the binding takes only ``bytes``, so every copy saved here is saved per byte stored. A
    file shorter than the layout (truncated) reads as zeros from where it ends. The reads
    are done by the time this returns (the file may be closed then); only the joins wait."""
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
    return ((s, _joined(pieces.pop(s), layout.stripe_k(s) * t)) for s in stripes)


def _joined(pieces: list[memoryview], length: int) -> bytes:
    obj = b"".join(pieces)
    return obj + bytes(length - len(obj)) if len(obj) < length else obj


def encode_group(task: EncodeTask) -> dict[int, tuple[bytes, bytes]]:
    lay, t = task.layout, task.layout.symbol_size
    out = {}
    fd = os.open(task.sidecar, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        with must_open_regular(task.payload) as pf:
            stripes = read_stripes(pf, lay, task.stripes)
        for s, obj in stripes:
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


DecodeTask = collections.namedtuple(
    "DecodeTask", "payload sidecar layout repair_base stripes source_hashes repair_hashes decode spill", defaults=(None,))
"""Check ``stripes`` of the file ``payload`` against their symbol hashes (``source_hashes``
and ``repair_hashes``: stripe -> its entries), with the repair symbols of the file
``sidecar`` (or None), whose repair region starts at ``repair_base``; with ``decode``, decode
the damaged ones, into the file ``spill`` if one is given."""


_SPILL_FLAGS = os.O_WRONLY | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0)


class SpillError(OSError):
    """The spill file could not be written as a regular file (gone, a link, a FIFO)."""


def check_group(task: DecodeTask) -> list[StripeOutcome]:
    lay, t = task.layout, task.layout.symbol_size
    try:
        pf = open_regular(task.payload)
    except NotRegularFileError:  # a link, FIFO or folder: never read, every symbol erased
        pf = None
    if pf is None:
        stripes: Iterator[tuple[int, bytes]] = ((s, bytes(lay.stripe_k(s) * t)) for s in task.stripes)
        missing = True
    else:
        with pf:
            stripes = read_stripes(pf, lay, task.stripes)
        missing = False
    out = []
    spill_fd: int | None = None
    try:
        for s, obj in stripes:
            oc = _check_stripe(task, s, obj, missing)
            out.append(oc)
            if task.spill is not None and oc.recovered:
                if spill_fd is None:
                    spill_fd = _open_spill(task.spill)
                _spill(spill_fd, lay, oc)
    finally:
        if spill_fd is not None:
            os.close(spill_fd)
    return out


def _check_stripe(task: DecodeTask, s: int, obj: bytes, missing: bool) -> StripeOutcome:
    lay, t, h = task.layout, task.layout.symbol_size, SYMBOL_HASH_BYTES
    k = lay.stripe_k(s)
    view = memoryview(obj)
    want = task.source_hashes[s]
    oc = StripeOutcome(stripe=s, k=k, r=lay.repair_counts[s])
    oc.erased = [
        i for i in range(k) if missing or symbol_hash(view[i * t : (i + 1) * t]) != want[i * h : (i + 1) * h]
    ]
    if oc.erased:
        repair = _read_repair(task, s, oc)
        if task.decode:
            _decode_stripe(oc, view, repair, t)
            _check_decoded(oc, want)
    return oc


def _check_decoded(oc: StripeOutcome, want: bytes) -> None:
    """The decoder's output is used only where it checks out: a recovered symbol that does
    not match its hash in the sidecar fails the whole stripe."""
    h = SYMBOL_HASH_BYTES
    if oc.recovered and any(symbol_hash(sym) != want[i * h : (i + 1) * h] for i, sym in oc.recovered.items()):
        oc.recovered = None
        oc.failed = True


def _open_spill(path: str) -> int:
    """The spill file for writing: never through a link, never a FIFO or device."""
    try:
        fd = os.open(path, _SPILL_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
            raise SpillError(e.errno, "spill file is not a regular file", path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpillError(errno.EINVAL, "spill file is not a regular file", path)
    os.set_blocking(fd, True)
    return fd


def _spill(fd: int, lay: Layout, oc: StripeOutcome) -> None:
    """Write ``oc``'s recovered symbols at their payload offsets; keep only their indices."""
    for i, sym in (oc.recovered or {}).items():
        off, length = lay.symbol_extent(lay.global_index(oc.stripe, i))
        pwrite_all(fd, memoryview(sym)[:length], off)
    oc.spilled = sorted(oc.recovered)
    oc.recovered = None


def _read_repair(task: DecodeTask, s: int, oc: StripeOutcome) -> list[tuple[int, bytes]]:
    """Good repair symbols of stripe ``s`` as (index, bytes); bad ones go to ``oc.bad_repair``."""
    lay, t, h = task.layout, task.layout.symbol_size, SYMBOL_HASH_BYTES
    want = task.repair_hashes[s]
    good = []
    data = memoryview(b"")
    if task.sidecar is not None:
        try:
            sf = open_regular(task.sidecar)
        except NotRegularFileError:
            sf = None
        if sf is not None:
            with sf:
                data = read_at(sf.fileno(), aligned_buffer(oc.r * t), task.repair_base + lay.repair_starts[s] * t)
    for i in range(oc.r):
        sym = data[i * t : (i + 1) * t]
        if len(sym) == t and symbol_hash(sym) == want[i * h : (i + 1) * h]:
            good.append((i, sym))
        else:
            oc.bad_repair.append(i)
    return good


def _decode_stripe(oc: StripeOutcome, view: memoryview, repair: list[tuple[int, bytes]], t: int) -> None:
    erased = set(oc.erased)
    if oc.k - len(erased) + len(repair) < oc.k:
        oc.failed = True
        return
    packets = [packet(i, view[i * t : (i + 1) * t]) for i in range(oc.k) if i not in erased]
    n_src = len(packets)
    packets += [packet(oc.k + i, sym) for i, sym in repair]
    try:
        obj, consumed = decode(oc.k * t, t, packets)
    except CodecFailure:
        obj, consumed = None, 0
    if obj is None:
        oc.failed = True
        return
    oc.used_repair = [i for i, _ in repair[: max(0, consumed - n_src)]]
    oc.recovered = {i: obj[i * t : (i + 1) * t] for i in oc.erased}


__all__ = ["DecodeTask", "EncodeTask", "SpillError", "check_group", "encode_group", "read_stripes"]
