"""Scrubbing a whole store: check every artifact, repair what can be repaired, record it.

Artifacts are scrubbed in parallel worker processes (each artifact single-process) when
there are enough of them, so memory stays bounded by a few stripes per worker; a store of
few large artifacts is scrubbed one artifact at a time with process-parallel stripes.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from ftstore.codec import read_meta
from ftstore.codec.deep import prove_recoverable
from ftstore.codec.parallel import default_jobs, pmap
from ftstore.documents import MAX_ENVELOPE_BYTES, ArtifactKey, ScrubSection, canonical
from ftstore.documents.printable import encode_printable
from ftstore.engine.integrity import Health, check, protect_pending, remove_dead_spills, repair
from ftstore.engine.leaves import FolderLeaves, StoredLeaves, read_envelope
from ftstore.errors import BadInputError, FtstoreError, NewerFormatError, StoreUnreachableError
from ftstore.scrub.report import ArtifactScrub, DeepCheck, Orphan, ScrubOptions, ScrubReport, Totals
from ftstore.stores import Orphan as StoreOrphan, StoreBackend, open_store
from ftstore.stores.backend import ENVELOPE, PAYLOAD, SIDECAR


@dataclass(frozen=True)
class ScrubTask:
    store_url: str
    key: ArtifactKey
    repair: bool
    deep: bool
    jobs: int
    seed: int
    rate: float | None = None  # bytes per second this task's check may read (--max-rate's share)


def parse_subset(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    k, sep, n = text.partition("/")
    if not (sep and _small_number(k) and _small_number(n) and 1 <= int(k) <= int(n)):
        raise BadInputError(f"--subset {text[:40]!r}: expected K/N with 1 <= K <= N <= 999999999")
    return int(k), int(n)


def _small_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 9


def in_subset(ref: str, subset: tuple[int, int] | None) -> bool:
    """Deterministic slice: the same artifact always falls in the same K of N."""
    if subset is None:
        return True
    k, n = subset
    return zlib.crc32(ref.encode()) % n == k - 1


def _bytes_read(sizes: dict[str, int], h: Health) -> int:
    """What checking the leaves read (reported): a leaf longer than its envelope records is
    read one byte past that, never to its end (see ``check``); an envelope over its size
    limit is refused before a byte of it is read."""
    caps = {ENVELOPE: 0} if sizes.get(ENVELOPE, 0) > MAX_ENVELOPE_BYTES else {}
    if h.essentials is not None:  # from the envelope, or from the sidecar when it is unusable
        caps[PAYLOAD] = h.essentials.size + 1
    if h.envelope is not None:  # a pending version's sidecar is only looked for: one byte
        caps[SIDECAR] = h.envelope.raptorq.sidecar_size + 1 if h.envelope.raptorq is not None else 1
    return sum(min(n, caps.get(leaf, n)) for leaf, n in sizes.items())


def scrub_artifact(task: ScrubTask) -> ArtifactScrub:
    """Check one artifact (streaming, read-only); only when there is work to do (repair,
    protection, a deep probe) are its files checked out locally and worked on."""
    try:
        store = open_store(task.store_url)
        h = check(StoredLeaves(store, task.key), pace=_Pace(task.rate) if task.rate else None)
    except StoreUnreachableError:  # the store itself went away (a server down): the scrub stops, nothing is judged
        raise
    except (FtstoreError, OSError) as e:  # one unreadable entry is reported; the scrub goes on
        return ArtifactScrub(ref=task.key.ref, status="failed", damage=[_one_line(e)], error=_one_line(e))
    if task.repair and store.capabilities.local_files:
        _clear_dead_spills(store, task.key)
    sizes = store.leaf_sizes(task.key)
    result = ArtifactScrub(ref=task.key.ref, status="ok", damage=h.problems, bytes_read=_bytes_read(sizes, h))
    if h.problems and not (task.repair and h.files_damaged):
        return msgspec.structs.replace(result, status="failed")
    if not (task.repair or task.deep):
        return result
    try:
        with store.working_copy(task.key, writeback=task.repair) as folder:
            files = FolderLeaves(folder, task.key, store)
            return _work_on(files, h if store.capabilities.local_files else check(files), result, task)
    except StoreUnreachableError:
        raise
    except (FtstoreError, OSError) as e:
        return msgspec.structs.replace(result, status="failed", error=_one_line(e))


def _clear_dead_spills(store: StoreBackend, key: ArtifactKey) -> None:
    """A repairing scrub removes the spill files of repairs that were killed in this
    version's folder (see :mod:`ftstore.engine.integrity`); one it cannot remove stays
    listed among the orphans."""
    try:
        with store.working_copy(key, writeback=False) as folder:
            remove_dead_spills(folder)
    except (FtstoreError, OSError):
        pass


def _work_on(files: FolderLeaves, h: Health, result: ArtifactScrub, task: ScrubTask) -> ArtifactScrub:
    now = int(time.time() * 1000)
    if h.files_damaged:
        try:
            res = repair(files, h, reason="scrub", jobs=task.jobs)
        except StoreUnreachableError:  # not the version's fault: it is neither marked nor reported failed
            raise
        except (FtstoreError, OSError) as e:
            _mark(files, "failed", now)
            return msgspec.structs.replace(result, status="failed", error=_one_line(e))
        after = check(files, verified=res.verified)  # what the repair vouched for is not read again
        result = msgspec.structs.replace(
            result,
            status="recovered" if after.intact else "failed",
            repaired=res.repaired,
            erased_source_symbols=res.erased_source,
            proofs=[p.proof_hash for p in res.proofs],
            error=None if after.intact else "; ".join(after.problems),
        )
    elif task.repair and h.pending_protection:
        try:
            protect_pending(files, jobs=task.jobs)
            result = msgspec.structs.replace(result, protected=True)
        except (FtstoreError, OSError) as e:
            result = msgspec.structs.replace(result, error=f"could not build the pending repair sidecar: {_one_line(e)}")
    if task.deep and result.status != "failed" and files.sidecar.exists():
        try:
            probed, erased, ok = prove_recoverable(files.payload, files.sidecar, read_meta(files.sidecar), task.seed)
        except FtstoreError as e:
            probed, erased, ok = 0, 0, False
            result = msgspec.structs.replace(result, error=str(e))
        result = msgspec.structs.replace(result, deep=DeepCheck(stripes_probed=probed, symbols_erased=erased, recovered=ok))
        if not ok:
            result = msgspec.structs.replace(result, status="failed")
    if task.repair:
        problem = _mark(files, result.status, now)
        if problem and not result.error:
            result = msgspec.structs.replace(result, error=problem)
    return result


def _mark(files: FolderLeaves, status: str, now: int) -> str | None:
    """Record the scrub outcome in the envelope, when there is a readable one. A store that
    cannot be written (read-only, full) keeps its envelope as it was: returns why, and the
    artifact's status stays what the check found."""
    try:
        env = read_envelope(files)
    except FtstoreError:
        return None
    last_ok = now if status != "failed" else env.scrub.last_ok_unix_ms
    try:
        files.write_envelope(
            msgspec.structs.replace(env, scrub=ScrubSection(status=status, last_ok_unix_ms=last_ok, last_scrub_unix_ms=now)),
        )
    except (FtstoreError, OSError) as e:
        return f"could not record the scrub outcome in the envelope: {_one_line(e)}"
    return None


def _one_line(e: BaseException) -> str:
    text = str(e) if not isinstance(e, OSError) or not e.strerror else f"{e.strerror}: {e.filename or ''}".rstrip(": ")
    return " ".join(text.split())


def scrub(
    store: StoreBackend,
    *,
    repair: bool = False,
    deep: bool = False,
    subset: str | None = None,
    max_rate_mb_s: float | None = None,
    remove_orphans: bool = False,
    jobs: int | None = None,
    seed: int = 0,
    write_report: bool = True,
    warn: Callable[[str], None] | None = None,
) -> ScrubReport:
    """Check (and with ``repair`` heal) every artifact, list (and remove) orphans, keep the
    report in the store. One entry that cannot be checked is a failed artifact and the scrub
    goes on; a store that cannot be written (read-only, full) still gets every result:
    what could not be recorded is said through ``warn`` (default: a Python warning)."""
    warn = warn or (lambda text: warnings.warn(text, stacklevel=3))
    if max_rate_mb_s is not None and not (math.isfinite(max_rate_mb_s) and max_rate_mb_s > 0):
        raise BadInputError(f"--max-rate {max_rate_mb_s}: expected a positive number of MB/s")
    started = int(time.time() * 1000)
    part = parse_subset(subset)
    jobs = jobs or default_jobs()
    targets = [k for k in store.keys() if in_subset(k.ref, part)]
    by_artifact = len(targets) >= 2 * jobs
    # --max-rate: each of the checks running at once reads at its share, chunk by chunk
    rate = max_rate_mb_s * 1e6 / (jobs if by_artifact else 1) if max_rate_mb_s else None
    tasks = [ScrubTask(store.url, p, repair, deep, 1 if by_artifact else jobs, seed, rate) for p in targets]
    results = list(pmap(scrub_artifact, tasks, jobs if by_artifact else 1))
    results = _without_deleted(store, results, {k.ref: k for k in targets}, warn)
    orphans = _orphans(store, remove_orphans, warn)
    count = {s: sum(1 for r in results if r.status == s) for s in ("ok", "recovered", "failed")}
    report = ScrubReport(
        store=store.url,
        started_unix_ms=started,
        finished_unix_ms=int(time.time() * 1000),
        options=ScrubOptions(repair=repair, deep=deep, subset=subset, max_rate_mb_s=max_rate_mb_s, remove_orphans=remove_orphans),
        artifacts=results,
        orphans=orphans,
        totals=Totals(artifacts=len(results), orphans=len(orphans), bytes_read=sum(r.bytes_read for r in results), **count),
        health="healthy" if count["failed"] == 0 else "damaged",
    )
    if write_report:
        try:
            # a file name in the store that is not UTF-8 is kept as \xNN
            store.write_report(f"scrub-{report.finished_unix_ms}.json", encode_printable(canonical, report) + b"\n")
        except (FtstoreError, OSError) as e:
            warn(f"the scrub report could not be kept in the store: {_one_line(e)}")
    return report


def _without_deleted(store: StoreBackend, results: list[ArtifactScrub], keys: dict[str, ArtifactKey],
                     warn: Callable[[str], None]) -> list[ArtifactScrub]:
    """The results less the versions that failed because they were deleted while the
    scrub ran (retention pruning old checkpoints beside a scheduled scrub): they are no
    longer the store's, and a deleted version is not a damaged one."""
    failed = {keys[r.ref].name for r in results if r.status == "failed"}
    try:
        live = {(name, v) for name in failed for v in store.versions(name)}
    except (FtstoreError, OSError):
        return results
    gone = {r.ref for r in results if r.status == "failed" and (keys[r.ref].name, keys[r.ref].version) not in live}
    for ref in sorted(gone):
        warn(f"{ref} was deleted while the scrub ran; not counted")
    return [r for r in results if r.ref not in gone]


def _orphans(store: StoreBackend, remove: bool, warn: Callable[[str], None]) -> list[Orphan]:
    try:
        found = store.orphans()
    except StoreUnreachableError:  # the store went away: the scrub stops, as for its versions
        raise
    except (FtstoreError, OSError) as e:
        warn(f"orphans could not be listed: {_one_line(e)}")
        return []
    out, newer = [], _NewerVersions(store)
    for o in found:
        removed = False
        if remove and newer.holds(o):
            warn(f"{o.path} left in place: its version was written by a newer ftstore, which may have put it there")
        elif remove:
            try:
                removed = store.remove_orphan(o.path)
            except StoreUnreachableError:
                raise
            except (FtstoreError, OSError) as e:
                warn(f"orphan {o.path} could not be removed: {_one_line(e)}")
        out.append(Orphan(path=o.path, reason=o.reason, removed=removed))
    return out


class _NewerVersions:
    """Which orphans lie in a version whose envelope a newer ftstore wrote: a file there
    that this release does not know may be one the newer release writes."""

    def __init__(self, store: StoreBackend):
        self.store = store
        self.known: dict[ArtifactKey, bool] = {}

    def holds(self, orphan: StoreOrphan) -> bool:
        key = orphan.version
        if key is None:
            return False
        if key not in self.known:
            try:
                read_envelope(StoredLeaves(self.store, key))
                self.known[key] = False
            except NewerFormatError:
                self.known[key] = True
            except (FtstoreError, OSError):
                self.known[key] = False
        return self.known[key]


class _Pace:
    """Told of each chunk a check reads, as it reads it, it sleeps as long as the reading
    is ahead of ``rate`` bytes per second: a large artifact is read at the rate from start
    to end, not in one burst at full speed followed by a pause."""

    def __init__(self, rate: float):
        self.rate, self.start, self.done = rate, time.monotonic(), 0

    def __call__(self, nbytes: int) -> None:
        self.done += nbytes
        ahead = self.done / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


__all__ = ["scrub", "scrub_artifact"]
