"""Locating damage and decoding it away.

RaptorQ repairs erasures, not errors, so every source and repair symbol is first checked
against its 128-bit hash from the sidecar; a symbol that fails (or is missing because the
file was truncated) becomes an erasure. Each damaged stripe is then decoded from its good
source symbols plus its good repair symbols, and every decoded symbol is checked against
its hash before it counts as recovered (a stripe whose decoded symbol does not check out
has failed). The caller checks the whole-payload BLAKE3 before a single recovered byte is
used.

With a spill file, each worker writes the symbols it recovered into that file at their
payload offsets and sends back only their indices, so the caller never holds recovered
bytes: a repair's memory is bounded by a few stripes per worker, whatever the damage.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftstore.durable import NotRegularFileError, open_regular, pwrite_all
from ftstore.hashing import SYMBOL_HASH_BYTES, aligned_buffer, read_at, symbol_hash
from ftstore.codec.encoder import PARALLEL_MIN_BYTES, read_stripes
from ftstore.codec.layout import Layout, stripe_groups
from ftstore.codec.parallel import pmap
from ftstore.codec.results import StripeOutcome
from ftstore.codec.rq import CodecFailure, decode, packet

if TYPE_CHECKING:  # a worker decodes without the sidecar format (msgspec) loaded
    from ftstore.codec.sidecar import SidecarMeta


@dataclass(frozen=True)
class DecodeTask:
    payload: str
    sidecar: str | None
    layout: Layout
    repair_base: int
    stripes: tuple[int, ...]
    source_hashes: dict[int, bytes]
    repair_hashes: dict[int, bytes]
    decode: bool
    spill: str | None = None


_SPILL_FLAGS = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


class SpillError(OSError):
    """The spill file could not be written as a regular file (gone, a link, a FIFO)."""


def _check_group(task: DecodeTask) -> list[StripeOutcome]:
    lay, t = task.layout, task.layout.symbol_size
    try:
        pf = open_regular(task.payload)
    except NotRegularFileError:  # a link, FIFO or folder: never read, every symbol erased
        pf = None
    if pf is None:
        objs = {s: bytes(lay.stripe_k(s) * t) for s in task.stripes}
        missing = True
    else:
        with pf:
            objs = read_stripes(pf, lay, task.stripes)
        missing = False
    out = []
    spill_fd: int | None = None
    try:
        for s in task.stripes:
            oc = _check_stripe(task, s, objs.pop(s), missing)
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


def check_and_decode(
    payload: str | os.PathLike,
    sidecar: str | os.PathLike | None,
    meta: SidecarMeta,
    jobs: int | None,
    decode: bool = True,
    spill: str | os.PathLike | None = None,
) -> list[StripeOutcome]:
    """Check every stripe of ``payload`` against ``meta``; decode damaged ones if asked.
    Returns one outcome per stripe, in stripe order. With ``spill`` (an existing regular
    file, at least as long as the payload), recovered symbols are written there at their
    payload offsets and outcomes carry ``spilled`` indices instead of ``recovered`` bytes."""
    lay, h = meta.layout, SYMBOL_HASH_BYTES
    tasks = []
    for group in stripe_groups(lay):
        src = {
            s: lay.stripe_entries(meta.source_hashes, s, h) for s in group
        }
        rep = {
            s: meta.repair_hashes[lay.repair_starts[s] * h : (lay.repair_starts[s] + lay.repair_counts[s]) * h]
            for s in group
        }
        tasks.append(
            DecodeTask(
                os.fspath(payload),
                os.fspath(sidecar) if sidecar is not None else None,
                lay,
                meta.block_len,
                tuple(group),
                src,
                rep,
                decode,
                os.fspath(spill) if spill is not None else None,
            )
        )
    outcomes = [oc for group in pmap(_check_group, tasks, jobs, parallel=lay.size >= PARALLEL_MIN_BYTES) for oc in group]
    return sorted(outcomes, key=lambda oc: oc.stripe)
