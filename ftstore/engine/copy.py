"""Copying artifact versions between stores (local <-> S3), keeping their version numbers.

Each version is brought into a private local folder, checked, and repaired there if it is
damaged; only an intact version, whose payload and sidecar hash as its envelope records on
the way into the destination, is committed there. A version beyond repair is reported and
never committed, so a copy never plants an unrecoverable artifact. The source is only read.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ftstore.documents import ArtifactKey, encode_envelope
from ftstore.engine.integrity import check, repair
from ftstore.engine.leaves import FolderLeaves, StoredLeaves, read_envelope
from ftstore.engine.load import heal
from ftstore.errors import FtstoreError
from ftstore.hashing import CHUNK
from ftstore.stores.backend import LEAVES, PAYLOAD, SIDECAR, StoreBackend, VersionTakenError


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
        try:
            if key.version in dst.versions(key.name):
                out.append(_existing(src, dst, key, jobs))
            else:
                out.append(_copy_one(src, dst, key, jobs))
        except (FtstoreError, OSError) as e:
            out.append(CopyResult(key.ref, "failed", str(e)))
    return out


def _copy_one(src: StoreBackend, dst: StoreBackend, key: ArtifactKey, jobs: int | None) -> CopyResult:
    with tempfile.TemporaryDirectory(prefix="ftstore-copy-") as tmp:
        files = FolderLeaves(Path(tmp), key, src)
        for leaf in LEAVES:
            stream = src.open_leaf(key, leaf)
            if stream is not None:
                with stream, open(files.folder / leaf, "xb") as f:
                    shutil.copyfileobj(stream, f, CHUNK)
        found = check(files)  # verify on the way
        if found.files_damaged:
            repair(files, found, reason="copy", jobs=jobs)  # raises if beyond repair: nothing committed
        after = check(files)
        if not after.intact:
            return CopyResult(key.ref, "failed", "; ".join(after.problems))
        env = after.envelope
        assert env is not None  # intact means the envelope was read
        staging = dst.stage(key.name, key.version)
        try:
            stored = staging.copy_in(PAYLOAD, files.payload, None, None, durable=True)
            if stored != (env.source_hash, env.size):
                raise FtstoreError(f"{key.ref}: the payload changed on its way into {dst.url}")
            if files.sidecar.exists():
                staging.copy_in(SIDECAR, files.sidecar, None, None, durable=True)
            staging.commit(lambda v: encode_envelope(env))
        except VersionTakenError:
            staging.abort()
            return CopyResult(key.ref, "conflict", "the destination took this version meanwhile")
        except BaseException:
            staging.abort()
            raise
    if found.files_damaged:
        return CopyResult(key.ref, "repaired", "; ".join(found.problems))
    return CopyResult(key.ref, "copied")


def _existing(src: StoreBackend, dst: StoreBackend, key: ArtifactKey, jobs: int | None) -> CopyResult:
    """The destination has this version: the same artifact (same id) is skipped once it is
    intact there, repaired there if it is not; another artifact is a conflict."""
    try:
        same = read_envelope(StoredLeaves(src, key)).artifact_id == read_envelope(StoredLeaves(dst, key)).artifact_id
    except FtstoreError as e:
        return CopyResult(key.ref, "conflict", f"destination has this version; cannot compare: {e}")
    if not same:
        return CopyResult(key.ref, "conflict", "the destination holds a different artifact under this version")
    health = check(StoredLeaves(dst, key))
    if health.intact:
        return CopyResult(key.ref, "skipped", "already at the destination")
    heal(dst, key, health, "copy", jobs)
    return CopyResult(key.ref, "repaired", "at the destination: " + "; ".join(health.problems))


__all__ = ["CopyResult", "copy_store"]
