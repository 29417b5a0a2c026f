"""Locating damage and decoding it away.

RaptorQ repairs erasures, not errors, so every source and repair symbol is first checked
against its 128-bit hash from the sidecar; a symbol that fails (or is missing because the
file was truncated) becomes an erasure. Each damaged stripe is then decoded from its good
source symbols plus its good repair symbols. The caller checks the whole-payload BLAKE3
before a single recovered byte is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ftstore.durable import NotRegularFileError, open_regular
from ftstore.hashing import SYMBOL_HASH_BYTES, symbol_hash
from ftstore.codec.encoder import PARALLEL_MIN_BYTES, STRIPES_PER_TASK, read_stripes
from ftstore.codec.layout import Layout
from ftstore.codec.parallel import chunks, pmap
from ftstore.codec.rq import CodecFailure, decode, packet
from ftstore.codec.sidecar import SidecarMeta


@dataclass
class StripeOutcome:
    stripe: int
    k: int
    r: int
    erased: list[int] = field(default_factory=list)  # source indices within the stripe
    bad_repair: list[int] = field(default_factory=list)
    used_repair: list[int] = field(default_factory=list)
    recovered: dict[int, bytes] | None = None  # None: not decoded (intact, or failed)
    failed: bool = False

    @property
    def lost(self) -> int:
        return len(self.erased) + len(self.bad_repair)


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


def _check_group(task: DecodeTask) -> list[StripeOutcome]:
    lay, t, h = task.layout, task.layout.symbol_size, SYMBOL_HASH_BYTES
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
    for s in task.stripes:
        k, obj = lay.stripe_k(s), objs.pop(s)
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
        out.append(oc)
    return out


def _read_repair(task: DecodeTask, s: int, oc: StripeOutcome) -> list[tuple[int, bytes]]:
    """Good repair symbols of stripe ``s`` as (index, bytes); bad ones go to ``oc.bad_repair``."""
    lay, t, h = task.layout, task.layout.symbol_size, SYMBOL_HASH_BYTES
    want = task.repair_hashes[s]
    good = []
    data = b""
    if task.sidecar is not None:
        try:
            sf = open_regular(task.sidecar)
        except NotRegularFileError:
            sf = None
        if sf is not None:
            with sf:
                data = os.pread(sf.fileno(), oc.r * t, task.repair_base + lay.repair_starts[s] * t)
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
) -> list[StripeOutcome]:
    """Check every stripe of ``payload`` against ``meta``; decode damaged ones if asked.
    Returns one outcome per stripe, in stripe order."""
    lay, h = meta.layout, SYMBOL_HASH_BYTES
    tasks = []
    for group in chunks(range(lay.stripes), STRIPES_PER_TASK):
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
            )
        )
    outcomes = [oc for group in pmap(_check_group, tasks, jobs, parallel=lay.size >= PARALLEL_MIN_BYTES) for oc in group]
    return sorted(outcomes, key=lambda oc: oc.stripe)
