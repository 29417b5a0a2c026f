"""Copying artifact versions between stores (local <-> S3), keeping their version numbers.

Each version is brought into a private local folder (the destination's scratch folder: on
a local store, leased under its ``staging/``, so a copy killed part way leaves an orphan the
next ``scrub --remove-orphans`` removes, not a payload in ``/tmp``), checked, and repaired
there if it is damaged; only an intact version, whose payload and sidecar hash as its
envelope records on the way into the destination, is committed there. A version beyond repair is reported and
never committed, so a copy never plants an unrecoverable artifact. The source is only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ftstore.documents import ArtifactKey, encode_envelope
from ftstore.engine.integrity import Health, check, repair
from ftstore.engine.leaves import FolderLeaves, StoredLeaves, download_leaves, read_envelope
from ftstore.engine.load import heal
from ftstore.errors import FtstoreError, NewerFormatError, UnrecoverableError
from ftstore.stores.backend import ENVELOPE, PAYLOAD, SIDECAR, StoreBackend, VersionTakenError


@dataclass(frozen=True)
class CopyResult:
    ref: str
    status: Literal["copied", "repaired", "skipped", "conflict", "failed"]
    detail: str = ""


def copy_store(src: StoreBackend, dst: StoreBackend, keys: Sequence[ArtifactKey] = (),
               jobs: int | None = None) -> list[CopyResult]:
    """Copy ``keys`` (every version when empty) from ``src`` to ``dst``."""
    out = []
    for key in keys or src.keys():
        existing = False
        try:
            existing = key.version in dst.versions(key.name)
            result = _existing(src, dst, key, jobs) if existing else _copy_one(src, dst, key, jobs)
        except (FtstoreError, OSError) as e:
            result = CopyResult(key.ref, "failed", str(e))
        # a version the destination holds, damaged there, stays a failure whatever the source did
        out.append(result if existing else _unless_deleted(src, key, result))
    return out


def _unless_deleted(src: StoreBackend, key: ArtifactKey, result: CopyResult) -> CopyResult:
    """A version that failed because it was deleted from the source while it was being
    copied (its files vanishing look like damage) is skipped, not a failure: it is no
    longer the source's."""
    if result.status != "failed":
        return result
    try:
        gone = key.version not in src.versions(key.name)
    except (FtstoreError, OSError):
        return result
    return CopyResult(key.ref, "skipped", "deleted from the source while it was being copied") if gone else result


def _private_intact_copy(src: StoreBackend, key: ArtifactKey, folder: Path, jobs: int | None) -> tuple[FolderLeaves, Health]:
    """The source version's leaves in ``folder``, repaired there if damaged (the source is
    only read) and checked intact; returns them and what the first check found.
    :class:`UnrecoverableError` (or another :class:`FtstoreError`) if they cannot be made
    intact: nothing is then committed anywhere."""
    files = download_leaves(src, key, folder)
    found = check(files)  # verify on the way
    if found.newer_format:
        raise NewerFormatError(found.newer_format)
    if found.files_damaged:
        repair(files, found, reason="copy", jobs=jobs)  # raises if beyond repair
    after = check(files)
    if not after.intact:
        raise UnrecoverableError("; ".join(after.problems))
    return files, found


def _copy_one(src: StoreBackend, dst: StoreBackend, key: ArtifactKey, jobs: int | None) -> CopyResult:
    with dst.scratch() as tmp:
        try:
            files, found = _private_intact_copy(src, key, tmp, jobs)
        except UnrecoverableError as e:
            return CopyResult(key.ref, "failed", f"not copied: {e}")
        env = read_envelope(files)
        try:
            staging = dst.stage(key.name, key.version, owner=env.artifact_id)  # S3 claims here
        except VersionTakenError as e:
            return CopyResult(key.ref, "conflict", str(e))
        try:
            stored = staging.copy_in(PAYLOAD, files.payload, None, None, durable=True)
            if stored != (env.source_hash, env.size):
                raise FtstoreError(f"{key.ref}: the payload changed on its way into {dst.url}")
            if files.sidecar.exists():
                staging.copy_in(SIDECAR, files.sidecar, None, None, durable=True)
            staging.commit(lambda v: encode_envelope(env))
        except VersionTakenError as e:
            staging.abort()
            return CopyResult(key.ref, "conflict", str(e))
        except BaseException:
            staging.abort()
            raise
    if found.files_damaged:
        return CopyResult(key.ref, "repaired", "; ".join(found.problems))
    return CopyResult(key.ref, "copied")


def _existing(src: StoreBackend, dst: StoreBackend, key: ArtifactKey, jobs: int | None) -> CopyResult:
    """The destination has this version: the same artifact (same id) is skipped once it is
    intact there; if it is not, it is repaired there, or, beyond repair there, restored from
    the source's (verified) copy; another artifact is a conflict."""
    src_id = _artifact_id(check(StoredLeaves(src, key)))
    health = check(StoredLeaves(dst, key))
    dst_id = _artifact_id(health)
    if src_id is None:
        return CopyResult(key.ref, "failed", "neither the source's envelope nor its sidecar says which artifact it is")
    if health.newer_format:  # this release cannot tell what the newer one wrote there
        return CopyResult(key.ref, "conflict", "the destination has this version, written by a newer ftstore; "
                                               "not overwritten")
    if dst_id is None:
        return CopyResult(key.ref, "conflict", "the destination has this version, but neither its envelope nor its "
                                               "sidecar says which artifact it is; not overwritten")
    if dst_id != src_id:
        return CopyResult(key.ref, "conflict", "the destination holds a different artifact under this version")
    if health.intact:
        return CopyResult(key.ref, "skipped", "already at the destination")
    found = "; ".join(health.problems)
    try:
        heal(dst, key, health, "copy", jobs)
        if check(StoredLeaves(dst, key)).intact:
            return CopyResult(key.ref, "repaired", "at the destination: " + found)
    except (FtstoreError, OSError):
        pass
    return _restore_from_source(src, dst, key, jobs, found)


def _artifact_id(health: Health) -> str | None:
    """Which artifact a version is, by its envelope or (lost envelope) its own sidecar."""
    ess = health.envelope or health.essentials
    return ess.artifact_id if ess is not None else None


def _restore_from_source(src: StoreBackend, dst: StoreBackend, key: ArtifactKey, jobs: int | None,
                         found: str) -> CopyResult:
    """Rewrite a destination version that cannot be repaired there with the source's
    verified leaves (the same artifact: same id, same payload hash), envelope last."""
    with dst.scratch() as tmp:
        try:
            files, _ = _private_intact_copy(src, key, tmp, jobs)
        except UnrecoverableError as e:
            return CopyResult(key.ref, "failed", f"damaged at the destination ({found}) and not repairable "
                                                 f"from the source either: {e}")
        dst.write_leaf(key, PAYLOAD, files.payload)
        if files.sidecar.exists():
            dst.write_leaf(key, SIDECAR, files.sidecar)
        else:
            dst.delete_leaf(key, SIDECAR)
        dst.write_leaf(key, ENVELOPE, files.envelope)
    after = check(StoredLeaves(dst, key))
    if not after.intact:
        return CopyResult(key.ref, "failed", "restored from the source but still damaged: " + "; ".join(after.problems))
    return CopyResult(key.ref, "repaired", f"at the destination, from the source: {found}")


__all__ = ["CopyResult", "copy_store"]
