"""Drills: inject real faults into a scratch copy of a store, scrub it with repair, and
check the outcome of every fault: repairable damage must come back byte-identical,
damage beyond the repair budget must be reported as failed, never as ok.

Faults are sized from each artifact's own layout so "within budget" really is within the
guarantee of ``codec.layout``. The same seed gives the same faults.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ftstore.codec import read_meta
from ftstore.codec.layout import Layout
from ftstore.engine.copy import copy_store
from ftstore.engine.leaves import FolderLeaves
from ftstore.engine.save import save
from ftstore.hashing import hash_file
from ftstore.scrub.report import DrillReport, Injection
from ftstore.scrub.scrubber import scrub
from ftstore.stores import LocalStore, StoreBackend
from ftstore.tempdirs import HeldTempDir, held_temp_dir

FAULTS = (
    "bit_flips",
    "zeroed_range",
    "truncated_tail",
    "sidecar_deleted",
    "sidecar_damaged",
    "envelope_deleted",
    "envelope_damaged",
    "payload_and_sidecar_damaged",
    "beyond_budget",
)
SAMPLE_SIZES = (1, 100, 4097, 65_536, 300_000, 1_000_003, 2_500_000, 5_000_000, 12 * 1024 * 1024 + 17)


def build_sample_store(root: Path, seed: int) -> LocalStore:
    store = LocalStore.open(str(root), create=True)
    rng = random.Random(seed)
    with held_temp_dir("sample") as tmp:
        for i, size in enumerate(SAMPLE_SIZES):
            src = Path(tmp) / f"sample{i}"
            src.write_bytes(rng.randbytes(size))
            save(store, src, f"sample-{i}", metadata={"drill": "sample"})
    return store


@dataclass
class _Fault:
    detail: str
    expected: Literal["recovered", "failed"]


def _flip(path: Path, offsets: list[int]) -> None:
    with open(path, "r+b") as f:
        for off in offsets:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0xFF]))


def _zero(path: Path, start: int, length: int) -> None:
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * length)


_CLOBBER = bytes([0xFF]) + bytes(255)  # byte -> what replaces it: 0 -> 0xFF, anything else -> 0


def _clobber(path: Path, start: int, length: int) -> None:
    """Zero the range, writing 0xFF where a byte is zero already: every byte changes, so a
    range of zeros (common in checkpoints) is damaged too, not left as it was."""
    with open(path, "r+b") as f:
        for off in range(start, start + length, 1 << 20):
            f.seek(off)
            chunk = f.read(min(1 << 20, start + length - off))
            f.seek(off)
            f.write(chunk.translate(_CLOBBER))


def inject(paths: FolderLeaves, fault: str, rng: random.Random) -> _Fault:
    """Damage the files of one artifact on disk as ``fault`` says."""
    meta = read_meta(paths.sidecar)
    lay: Layout = meta.layout
    t, S = lay.symbol_size, lay.stripes
    if lay.size == 0 and fault not in ("sidecar_deleted", "envelope_deleted", "envelope_damaged"):
        fault = "envelope_deleted"
    min_budget = min((lay.budget(s) for s in range(S)), default=0)
    if fault == "bit_flips":
        offsets = []
        for s in range(S):
            for i in rng.sample(range(lay.stripe_k(s)), min(lay.budget(s), lay.stripe_k(s))):
                off, length = lay.symbol_extent(lay.global_index(s, i))
                offsets.append(off + rng.randrange(length))
        _flip(paths.payload, offsets)
        return _Fault(f"{len(offsets)} bytes flipped, each in its own symbol, at the budget of every stripe", "recovered")
    if fault in ("zeroed_range", "truncated_tail"):
        rows = max(min_budget - 1, 1)
        length = min(lay.size, rows * S * t)
        if fault == "zeroed_range":
            start = rng.randrange(0, lay.size - length + 1)
            _clobber(paths.payload, start, length)
            return _Fault(f"{length} bytes zeroed at offset {start} (0xFF where zero already)", "recovered")
        os.truncate(paths.payload, lay.size - length)
        return _Fault(f"last {length} bytes cut off", "recovered")
    if fault == "sidecar_deleted":
        paths.sidecar.unlink()
        return _Fault("sidecar deleted", "recovered")
    if fault == "sidecar_damaged":
        _zero(paths.sidecar, 0, min(64, meta.block_len))
        if lay.total_repair:
            _flip(paths.sidecar, [meta.repair_offset(0, 0) + rng.randrange(t)])
        return _Fault("sidecar head zeroed and a repair symbol flipped", "recovered")
    if fault == "envelope_deleted":
        paths.envelope.unlink()
        return _Fault("envelope deleted", "recovered")
    if fault == "envelope_damaged":
        data = bytearray(paths.envelope.read_bytes())
        pos = data.index(b'"size"') + 8
        data[pos] = ord("9") if data[pos] != ord("9") else ord("8")
        paths.envelope.write_bytes(bytes(data))
        return _Fault("a digit of the envelope's size changed", "recovered")
    if fault == "payload_and_sidecar_damaged":
        offsets = [lay.symbol_extent(lay.global_index(s, 0))[0] for s in range(S)]
        _flip(paths.payload, offsets)
        bad_repair = [meta.repair_offset(s, 0) for s in range(S) if lay.budget(s) >= 2]
        _flip(paths.sidecar, bad_repair)
        return _Fault(f"{len(offsets)} payload symbols and {len(bad_repair)} repair symbols flipped", "recovered")
    if fault == "beyond_budget":
        _clobber(paths.payload, 0, lay.size)
        _clobber(paths.sidecar, meta.repair_offset(0, 0), lay.total_repair * t)
        return _Fault("whole payload and every repair symbol zeroed (0xFF where zero already)", "failed")
    raise ValueError(f"unknown fault {fault!r}")


def drill(
    source: StoreBackend | None = None,
    *,
    seed: int = 0,
    rounds: int = 1,
    scratch: Path | None = None,
    jobs: int | None = None,
) -> DrillReport:
    """Run ``rounds`` of fault injection on scratch copies of ``source`` (a sample store if
    None). Nothing in ``source`` is modified. A version of ``source`` that could not be
    brought into the scratch copy (beyond repair, or the scratch disk full) is a failed
    entry, ``not_copied``: a drill never passes over part of a store in silence."""
    held: HeldTempDir | None = None
    if scratch is None:
        held = HeldTempDir("drill")
        base = held.path
    else:
        base = Path(scratch)
    rng = random.Random(seed)
    injections = []
    try:
        pristine = base / "pristine"
        if source is None:
            build_sample_store(pristine, seed)
        else:  # a scratch copy of every version that is intact or repairable
            copied = copy_store(source, LocalStore.open(str(pristine), create=True), jobs=jobs)
            injections += [Injection(round=0, ref=c.ref, fault="not_copied", detail=f"not drilled: {c.detail}",
                                     expected="recovered", status=c.status, byte_identical=False, passed=False)
                           for c in copied if c.status in ("failed", "conflict")]
        for rnd in range(rounds):
            work = base / f"round-{rnd}"
            shutil.copytree(pristine, work)
            store = LocalStore.open(str(work))
            targets = [f for k in store.keys()
                       if (f := FolderLeaves(store.version_dir(k), k)).sidecar.exists() and f.envelope.exists()]
            planned = []
            shift = rng.randrange(len(FAULTS))
            for idx, paths in enumerate(targets):
                fault = FAULTS[(idx + rnd * len(targets) + shift) % len(FAULTS)]
                digest = hash_file(paths.payload)[0]
                planned.append((paths, fault, digest, inject(paths, fault, rng)))
            report = scrub(store, repair=True, jobs=jobs, write_report=False)
            status = {a.ref: a.status for a in report.artifacts}
            for paths, fault, digest, f in planned:
                st = status.get(paths.key.ref, "missing")
                same = paths.payload.exists() and hash_file(paths.payload)[0] == digest
                ok = (st == "recovered" and same) if f.expected == "recovered" else st == "failed"
                injections.append(
                    Injection(round=rnd, ref=paths.key.ref, fault=fault, detail=f.detail, expected=f.expected,
                              status=st, byte_identical=same, passed=ok)
                )
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if held is not None:
            held.remove()
    return DrillReport(seed=seed, rounds=rounds, injections=injections, passed=all(i.passed for i in injections))


__all__ = ["FAULTS", "DrillReport", "build_sample_store", "drill", "inject"]
