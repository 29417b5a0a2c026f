"""Checking one artifact version and repairing it.

``check`` is read-only and works on any :class:`~ftstore.engine.leaves.Leaves`, so every
backend gets the same check: it finds out which of envelope, sidecar and payload are
intact, streaming each through BLAKE3. ``repair`` works on a local folder
(:class:`FolderLeaves`) and rebuilds what ``check`` found damaged, in this order: the
payload (damaged symbols decoded from good source and repair symbols, each checked against
its symbol hash; the whole result's BLAKE3 checked before a byte is written; then written
over the bad ones only, each read back and checked after the fsync), the sidecar (re-encoded from
the intact payload), the envelope (rebuilt from the sidecar's copy of its essentials).
Sidecar and envelope replace the damaged files atomically. Each repair gets a decode proof.

Decoded symbols never gather in this process: the workers write them into a sparse spill
file beside the payload (``payload.spill.tmp-*``, held under an flock while in use)
and report only which symbols they recovered; the patch reads them back a run of adjacent
ones at a time, each checked against its hash again. A spill file left by a killed repair
is recognised by its free lock and removed by the next repair or repairing scrub of that
version (a scrub's orphan listing calls it an interrupted write meanwhile): it never
vouches for anything and is never read as a leaf.

A sidecar is used only if it is this artifact version's own: its header must name the
artifact id, name and size of the envelope, and the version (and name) the folder is filed
under. A foreign sidecar (another version's, another artifact's: a restore from backup, a
sync tool) is a damaged sidecar: never a source of repair symbols, hashes or essentials.
A version 1 sidecar names no version: with no envelope to compare with, it is refused if
another version's envelope in the store carries its artifact id.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import dataclass, field

import msgspec

from ftstore import codec  # its builder and decoder are imported when a repair first needs them
from ftstore.codec.layout import DEFAULT_OVERHEAD, MAX_OVERHEAD, MIN_OVERHEAD
from ftstore.codec.results import SidecarInfo, StripeOutcome
from ftstore.codec.sidecar import SidecarError, SidecarMeta, damaged_repair_symbols, read_meta
from ftstore.documents import (
    ArtifactEssentials,
    ArtifactKey,
    DecodeProof,
    Envelope,
    RaptorQSection,
    chain_problems,
    envelope_from,
    essentials_of,
    make_proof,
)
from ftstore.durable import TMP_MARK, copy_hashing, replace_durably, tmp_path
from ftstore.engine.leaves import FolderLeaves, Leaves, read_envelope
from ftstore.errors import (EnvelopeError, FtstoreError, NewerFormatError, NotFoundError, StoreUnreachableError,
                            UnrecoverableError)
from ftstore.hashing import hash_stream, stream_length
from ftstore.stores.backend import PAYLOAD, SIDECAR

SPILL_SUFFIX = ".spill"  # spill files are named f"{PAYLOAD}{SPILL_SUFFIX}{TMP_MARK}<random>"


@dataclass
class Health:
    key: ArtifactKey
    envelope: Envelope | None = None
    envelope_problem: str | None = None
    sidecar_problem: str | None = None
    payload_problem: str | None = None
    proof_problems: list[str] = field(default_factory=list)
    newer_format: str | None = None
    """Why the version was not checked: a newer ftstore wrote it. Not damage: never repaired."""
    pending_protection: bool = False
    essentials: ArtifactEssentials | None = None

    @property
    def ref(self) -> str:
        return self.key.ref

    @property
    def problems(self) -> list[str]:
        files = (self.newer_format, self.envelope_problem, self.sidecar_problem, self.payload_problem)
        return [p for p in files if p] + self.proof_problems

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def damaged(self) -> bool:
        """Problems other than a newer format (which this ftstore cannot judge)."""
        return self.files_damaged or bool(self.proof_problems)

    @property
    def files_damaged(self) -> bool:
        """Damage that repair can act on (a broken proof chain is reported, not repaired)."""
        return bool(self.envelope_problem or self.sidecar_problem or self.payload_problem)


@dataclass
class RepairResult:
    repaired: list[str] = field(default_factory=list)  # targets rebuilt: payload / sidecar / envelope
    proofs: list[DecodeProof] = field(default_factory=list)
    erased_source: int = 0
    envelope: Envelope | None = None
    verified: dict[str, tuple[str, int]] = field(default_factory=dict)
    """(BLAKE3, size) of leaves this repair vouches for as it left them: the patched payload
    (its whole BLAKE3 checked before the write, every written symbol read back after), the
    rebuilt sidecar (hashed as written). A check right after the repair takes them as known
    instead of reading those leaves again."""


def raptorq_section(info: SidecarInfo) -> RaptorQSection:
    lay = info.layout
    return RaptorQSection(
        symbol_size=lay.symbol_size,
        stripes=lay.stripes,
        source_symbols=lay.source_symbols,
        repair_symbols=lay.total_repair,
        overhead=info.overhead,
        library_version=info.library_version,
        sidecar_size=info.size,
        sidecar_hash=info.hash,
    )


def _section_from_meta(meta: SidecarMeta, digest: str, size: int) -> RaptorQSection:
    h = meta.header
    return RaptorQSection(
        symbol_size=h.symbol_size,
        stripes=h.stripes,
        source_symbols=h.source_symbols,
        repair_symbols=sum(h.repair_symbols_per_stripe),
        overhead=h.overhead,
        library_version=h.library_version,
        sidecar_size=size,
        sidecar_hash=digest,
    )


# -- check -----------------------------------------------------------------------------------
def check(leaves: Leaves, verified: dict[str, tuple[str, int]] | None = None,
          pace: Callable[[int], None] | None = None) -> Health:
    """Read-only health of one artifact version. ``verified``: (BLAKE3, size) of leaves a
    repair has just vouched for (:attr:`RepairResult.verified`), taken as known instead of
    read again. ``pace`` is told of every chunk of payload and sidecar read, as it is read
    (it may sleep: a scrub's ``--max-rate``)."""
    h = Health(leaves.key)
    known = verified or {}
    try:
        h.envelope = read_envelope(leaves)
    except NewerFormatError as e:  # nothing else is read: what vouches for the rest is unknown here
        h.newer_format = str(e)
        return h
    except EnvelopeError as e:
        h.envelope_problem = str(e)
        with leaves.local() as folder:  # without the envelope, the sidecar vouches: random access
            _check_by_sidecar(folder, h, known, pace)
        return h
    h.essentials = essentials_of(h.envelope)
    h.proof_problems = chain_problems(h.envelope.decode_proofs)
    rq = h.envelope.raptorq
    if rq is None:
        h.pending_protection = True
        if _hash_of(leaves, SIDECAR, known, 0, pace) is not None:  # only whether it is there
            h.sidecar_problem = f"{h.ref}: sidecar present but the envelope records none"
    else:
        h.sidecar_problem = _problem(_hash_of(leaves, SIDECAR, known, rq.sidecar_size, pace), rq.sidecar_size,
                                     rq.sidecar_hash, "sidecar", h.ref)
    h.payload_problem = _problem(_hash_of(leaves, PAYLOAD, known, h.envelope.size, pace), h.envelope.size,
                                 h.envelope.source_hash, "payload", h.ref)
    return h


def _hash_of(leaves: Leaves, leaf: str, known: dict[str, tuple[str, int]],
             size: int | None = None, pace: Callable[[int], None] | None = None) -> tuple[str, int] | str | None:
    """The leaf's (BLAKE3, size): as ``known`` says, else read (see :func:`_leaf_hash`)."""
    return known[leaf] if leaf in known else _leaf_hash(leaves, leaf, size, pace)


def _check_by_sidecar(folder: FolderLeaves, h: Health, verified: dict[str, tuple[str, int]],
                      pace: Callable[[int], None] | None) -> None:
    """With no usable envelope: the sidecar's self-checked header says what the payload must
    be (if it is this version's own sidecar), and every repair symbol is checked against
    its hash, since nothing else vouches."""
    meta, problem = trusted_meta(folder, None)
    if meta is None:
        h.sidecar_problem = f"{h.ref}: {problem}"
        return
    h.essentials = meta.header.artifact
    bad = damaged_repair_symbols(folder.sidecar, meta)
    if meta.copies_ok < 2 or bad:
        h.sidecar_problem = f"{h.ref}: sidecar damaged ({2 - meta.copies_ok} of 2 metadata copies, {bad} repair symbols)"
    h.payload_problem = _problem(_hash_of(folder, PAYLOAD, verified, h.essentials.size, pace), h.essentials.size,
                                 h.essentials.source_hash, "payload", h.ref)


def _leaf_hash(leaves: Leaves, leaf: str, size: int | None = None,
               pace: Callable[[int], None] | None = None) -> tuple[str, int] | str | None:
    """(BLAKE3, size) of a leaf; None if absent; a sentence if it cannot be read as a file.
    With the ``size`` it should have, no more than one byte past it is read: a leaf grown
    to terabytes (a sparse file costs nothing to make) is known to be wrong from that byte,
    and its whole length is then taken from the file system or the object store."""
    try:
        stream = leaves.open(leaf)
        if stream is None:
            return None
        with stream:
            digest, got = hash_stream(stream, None if size is None else size + 1, progress=pace)
            if size is not None and got > size:
                got = stream_length(stream) or got
            return digest, got
    except StoreUnreachableError:  # the store's server went away or refused: nothing is known about the leaf
        raise
    except (FtstoreError, OSError) as e:  # a link, FIFO or folder; a read error: that leaf is damaged
        return str(e)


def _problem(got: tuple[str, int] | str | None, size: int, digest: str, what: str, ref: str) -> str | None:
    if got is None:
        return f"{ref}: {what} is missing"
    if isinstance(got, str):
        return f"{ref}: {what} unreadable: {got}"
    if got == (digest, size):
        return None
    if got[1] != size:
        return f"{ref}: {what} is {got[1]} bytes, expected {size}"
    return f"{ref}: {what} BLAKE3 mismatch"


def sidecar_meta(folder: FolderLeaves) -> tuple[SidecarMeta | None, str | None]:
    """The sidecar's metadata, or (None, why not). Whose sidecar it is is not checked here:
    see :func:`trusted_meta`."""
    try:
        return read_meta(folder.sidecar), None
    except SidecarError as e:
        return None, str(e)
    except OSError as e:
        return None, f"sidecar unreadable: {e}"


def identity_problem(meta: SidecarMeta, key: ArtifactKey, env: Envelope | None, leaves: Leaves) -> str | None:
    """Why the sidecar ``meta`` is not the one of version ``key`` (whose envelope is
    ``env``, or None if lost), or None if it is."""
    h, a = meta.header, meta.header.artifact
    if a.name != key.name:
        return f"sidecar belongs to artifact {a.name!r}, not {key.name!r}"
    if h.artifact_version is not None and h.artifact_version != key.version:
        return f"sidecar belongs to {a.name}@{h.artifact_version}, not {key.ref}"
    if env is not None:
        if a.artifact_id != env.artifact_id:
            return f"sidecar belongs to another artifact (id {a.artifact_id}; the envelope's is {env.artifact_id})"
        if (a.size, a.source_hash) != (env.size, env.source_hash):
            return "sidecar describes another payload than the envelope"
    elif h.artifact_version is None:
        owner = leaves.owner_of(a.artifact_id)
        if owner is not None:
            return f"sidecar (format version 1, which names no version) belongs to {owner.ref}, whose envelope has its artifact id"
    return None


def trusted_meta(folder: FolderLeaves, env: Envelope | None) -> tuple[SidecarMeta | None, str | None]:
    """The sidecar's metadata if it is this version's own (:func:`identity_problem`), or
    (None, why not): only such a sidecar's hash tables, repair symbols and essentials are
    ever used."""
    meta, problem = sidecar_meta(folder)
    if meta is None:
        return None, problem
    problem = identity_problem(meta, folder.key, env, folder)
    return (None, problem) if problem else (meta, None)


# -- repair ----------------------------------------------------------------------------------
def repair(files: FolderLeaves, health: Health, reason: str, jobs: int | None = None,
           now_ms: int | None = None) -> RepairResult:
    """Rebuild whatever ``health`` reports damaged. Raises :class:`UnrecoverableError` (and
    writes nothing) when the payload cannot be brought back to its recorded BLAKE3.

    Proofs are appended in repair order (payload, sidecar, envelope), all stamped ``now_ms``
    (default: the clock), each linked to the one before it. A rebuilt envelope keeps none of
    the old proofs (they were in the envelope that was lost or refused), so its chain starts
    afresh: the first proof of this repair has ``prev_proof_hash`` null."""
    ref = health.ref
    if health.newer_format:  # what it would rebuild is this release's idea of the version
        raise NewerFormatError(health.newer_format)
    res = RepairResult()
    env = health.envelope
    meta, meta_problem = trusted_meta(files, env)
    ess = health.essentials or (meta.header.artifact if meta else None)
    if ess is None:
        raise UnrecoverableError(f"{ref}: envelope and sidecar are both unusable ({meta_problem}); "
                                 "nothing records what the payload should be")
    proofs: list[DecodeProof] = list(env.decode_proofs) if env else []
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    remove_dead_spills(files.folder)

    if health.payload_problem:
        if meta is None:
            raise UnrecoverableError(f"{ref}: payload damaged and the sidecar is unusable ({meta_problem})")
        outcomes, res.verified[PAYLOAD] = _recover_payload(files, meta, ess, jobs)
        erased = [meta.layout.global_index(o.stripe, i) for o in outcomes for i in o.erased]
        res.erased_source = len(erased)
        res.repaired.append("payload")
        proofs.append(make_proof(
            proofs, reason=reason, target="payload", recovered_hash=ess.source_hash, erased_source=erased,
            erased_repair=sum(len(o.bad_repair) for o in outcomes),
            repair_used={o.stripe: o.used_repair for o in outcomes if o.used_repair}, now_ms=now,
        ))

    rq = env.raptorq if env else None
    if health.sidecar_problem or (env is None and meta is None) or (env is not None and rq is None):
        overhead = (rq.overhead if rq else meta.header.overhead if meta
                    else requested_overhead(env) if env else DEFAULT_OVERHEAD)
        symbol = rq.symbol_size if rq else (meta.header.symbol_size if meta else None)
        info = _replace_sidecar(files, ess, overhead, symbol, jobs)
        res.verified[SIDECAR] = (info.hash, info.size)
        rq = raptorq_section(info)
        if health.sidecar_problem:
            res.repaired.append("sidecar")
            proofs.append(make_proof(proofs, reason=reason, target="sidecar", recovered_hash=rq.sidecar_hash, now_ms=now))
    elif env is None and meta is not None:
        got = _leaf_hash(files, SIDECAR)
        if not isinstance(got, tuple):
            raise UnrecoverableError(f"{ref}: the sidecar vanished while the envelope was being rebuilt")
        rq = _section_from_meta(meta, *got)

    if env is None:
        res.repaired.append("envelope")
        proofs.append(make_proof(proofs, reason=reason, target="envelope", recovered_hash=ess.source_hash, now_ms=now))
        env = envelope_from(ess, files.key.version, rq)
    env = msgspec.structs.replace(env, raptorq=rq, decode_proofs=proofs)
    files.write_envelope(env)
    res.proofs = proofs[len(proofs) - len(res.repaired):] if res.repaired else []
    res.envelope = read_envelope(files)
    return res


def _replace_sidecar(files: FolderLeaves, ess: ArtifactEssentials, overhead: float, symbol_size: int | None,
                     jobs: int | None) -> SidecarInfo:
    tmp = tmp_path(files.sidecar)
    try:
        info = codec.write_sidecar(files.payload, tmp, ess, overhead, symbol_size, jobs, version=files.key.version)
        replace_durably(tmp, files.sidecar, leaf=True)
    finally:
        tmp.unlink(missing_ok=True)
    return info


PENDING_OVERHEAD_KEY = "ftstore.overhead"
"""Metadata of a version saved with protection pending: the repair overhead its saver asked
for, so that whoever builds the sidecar later (its protector, a scrub, a resumed run)
builds the one asked for."""


def pending_metadata(metadata: dict[str, str] | None, overhead: float) -> dict[str, str]:
    """``metadata`` of a save with protection pending: the overhead asked for recorded."""
    return {**(metadata or {}), PENDING_OVERHEAD_KEY: repr(float(overhead))}


def requested_overhead(env: Envelope) -> float:
    """The overhead a pending version's saver asked for; the default where none is recorded
    (a version saved before it was) or the record is not a usable one."""
    try:
        value = float(env.metadata.get(PENDING_OVERHEAD_KEY, DEFAULT_OVERHEAD))
    except ValueError:
        return DEFAULT_OVERHEAD
    return value if MIN_OVERHEAD <= value <= MAX_OVERHEAD else DEFAULT_OVERHEAD


def protect_pending(files: FolderLeaves, jobs: int | None = None, overhead: float | None = None,
                    artifact_id: str | None = None) -> Envelope:
    """Build the sidecar of an artifact committed with protection pending, after checking
    its payload; a no-op for one already protected. ``overhead``: by default, what its
    saver asked for. With ``artifact_id``, only that artifact is protected:
    :class:`NotFoundError` if the version is now another one (it was deleted and its number
    reused), checked again before the sidecar goes in."""
    env = read_envelope(files)
    _same_artifact(env, artifact_id, files.key.ref)
    artifact_id = env.artifact_id
    if env.raptorq is not None:
        return env
    overhead = requested_overhead(env) if overhead is None else overhead
    tmp = tmp_path(files.sidecar)  # the payload is checked as it was encoded (see write_sidecar)
    try:
        info = codec.write_sidecar(files.payload, tmp, essentials_of(env), overhead, None, jobs, version=files.key.version)
        env = read_envelope(files)  # re-read: a scrub may have written meanwhile, or a delete
        _same_artifact(env, artifact_id, files.key.ref)
        replace_durably(tmp, files.sidecar, leaf=True)
    finally:
        tmp.unlink(missing_ok=True)
    files.write_envelope(msgspec.structs.replace(env, raptorq=raptorq_section(info)))
    return read_envelope(files)


def _same_artifact(env: Envelope, artifact_id: str | None, ref: str) -> None:
    if artifact_id is not None and env.artifact_id != artifact_id:
        raise NotFoundError(f"{ref} is no longer artifact {artifact_id} (deleted, and the version reused)")


def _recover_payload(files: FolderLeaves, meta: SidecarMeta, ess: ArtifactEssentials,
                     jobs: int | None) -> tuple[list[StripeOutcome], tuple[str, int]]:
    """Decode the damaged symbols (into a spill file, never into this process's memory),
    check that the whole result would be the recorded payload, and only then write the
    decoded symbols over the damaged ones: a repair that cannot give back the recorded
    bytes writes nothing. Returns the outcomes and the patched payload's (BLAKE3, size)."""
    _own_payload(files)
    with _spill_file(files.payload, ess.size) as spill:
        outcomes = codec.check_and_decode(files.payload, files.sidecar, meta, jobs, spill=spill)
        failed = [o for o in outcomes if o.failed]
        if failed:
            raise UnrecoverableError(unrecoverable_message(files.key.ref, meta, outcomes, failed))
        if codec.patched_digest(files.payload, meta, outcomes, spill) != ess.source_hash:
            raise UnrecoverableError(f"{files.key.ref}: decoding would not give back the recorded payload "
                                     "(its BLAKE3 would not match); nothing was written")
        codec.patch_in_place(files.payload, meta, outcomes, spill)  # reads every written symbol back
    return outcomes, (ess.source_hash, ess.size)


def _own_payload(files: FolderLeaves) -> None:
    """Give the payload a file of its own if another version's payload is the same file
    (a hard link planted in the store): the patch writes through it, and would damage that
    version. Only a payload with more than one link is looked into; the Lightning plugin's
    link to its checkpoint path is one, and is kept (that file is this version's)."""
    try:
        st = os.lstat(files.payload)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2 or files.store is None:
        return
    if not files.store.shares_payload(files.key, (st.st_dev, st.st_ino)):
        return
    tmp = tmp_path(files.payload)
    try:
        copy_hashing(files.payload, tmp)
        replace_durably(tmp, files.payload, leaf=True)
    finally:
        tmp.unlink(missing_ok=True)


def spill_path(payload: Path) -> Path:
    return tmp_path(payload.with_name(payload.name + SPILL_SUFFIX))


def _is_spill(name: str) -> bool:
    return name.startswith(f"{PAYLOAD}{SPILL_SUFFIX}{TMP_MARK}")


_SPILL_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def _spill_file(payload: Path, size: int) -> Iterator[Path]:
    """A sparse file of ``size`` bytes beside ``payload``, created exclusively and held
    under an flock (so :func:`remove_dead_spills` knows it is live), removed on the way out."""
    path = spill_path(payload)
    fd = os.open(path, _SPILL_OPEN | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, size)
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def remove_dead_spills(folder: Path) -> list[str]:
    """Remove the spill files in ``folder`` that no repair holds any more (left by a repair
    that was killed); returns their names. A live one (its flock taken) is left alone."""
    removed = []
    try:
        names = [n for n in os.listdir(folder) if _is_spill(n)]
    except OSError:
        return removed
    for name in names:
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # gone meanwhile, or a link (an orphan for the store to list, never followed)
            continue
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue  # not a file a repair makes: an orphan for the store to list
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a repair in progress holds it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
            removed.append(name)
        finally:
            os.close(fd)
    return removed


def unrecoverable_message(ref: str, meta: SidecarMeta, outcomes: list[StripeOutcome], failed: list[StripeOutcome]) -> str:
    lay = meta.layout
    lost = sum(o.lost for o in outcomes)
    worst = max(failed, key=lambda o: o.lost)
    return (
        f"{ref}: unrecoverable: {lost} symbols lost over {sum(1 for o in outcomes if o.lost)} of {lay.stripes} "
        f"stripes; {len(failed)} stripes are beyond repair (worst: stripe {worst.stripe} lost {len(worst.erased)} "
        f"of {worst.k} source and {len(worst.bad_repair)} of {worst.r} repair symbols, "
        f"but can repair at most {lay.budget(worst.stripe)})"
    )


__all__ = ["PENDING_OVERHEAD_KEY", "Health", "RepairResult", "check", "identity_problem", "pending_metadata",
           "protect_pending", "raptorq_section", "requested_overhead",
           "remove_dead_spills", "repair", "sidecar_meta", "spill_path", "trusted_meta", "unrecoverable_message"]
