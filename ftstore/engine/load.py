"""Loading an artifact version's payload into a file: never wrong bytes.

One pass first: the payload is streamed into a temporary file beside the destination while
it is hashed, and renamed into place only if size and BLAKE3 match the envelope. If they do
not (damage), the version is checked, repaired in a working copy (in place on a local
store), and copied out again, with the same check before the rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ftstore.documents import ArtifactKey, Envelope
from ftstore.durable import disk_full, is_disk_full, open_regular, replace_durably, tmp_path
from ftstore.engine.integrity import Health, RepairResult, check, repair
from ftstore.engine.leaves import FolderLeaves, StoredLeaves, download_leaves, read_envelope
from ftstore.errors import BadInputError, DamageError, EnvelopeError, StorageError
from ftstore.hashing import hash_stream
from ftstore.stores.backend import PAYLOAD, StoreBackend


@dataclass
class LoadResult:
    envelope: Envelope
    key: ArtifactKey
    out: Path
    repair: RepairResult | None

    @property
    def ref(self) -> str:
        return self.key.ref


def heal(store: StoreBackend, key: ArtifactKey, health: Health, reason: str, jobs: int | None) -> RepairResult:
    """Repair one version in a working copy of it (the stored files, on a local store) and
    write back what changed. Raises :class:`UnrecoverableError`, writing nothing, when the
    payload cannot be brought back."""
    with store.working_copy(key) as folder:
        files = FolderLeaves(folder, key, store)
        local_health = health if store.capabilities.local_files else check(files)
        return repair(files, local_health, reason=reason, jobs=jobs)


def load(
    store: StoreBackend,
    key: ArtifactKey,
    out: str | os.PathLike,
    *,
    self_heal: bool = True,
    jobs: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> LoadResult:
    """Write the payload of ``key`` to ``out``, which appears atomically and only once its
    own bytes hashed right; a damaged payload is repaired first (unless ``self_heal`` is
    off: then :class:`DamageError`)."""
    out = Path(out)
    if out.is_dir():
        raise BadInputError(f"{out} is a directory; give a file path")
    if not out.parent.is_dir():
        raise BadInputError(f"{out.parent}: no such directory")
    leaves = StoredLeaves(store, key)
    try:
        env = read_envelope(leaves)
    except EnvelopeError:
        env = None
    if env is not None and _copy_out(store, key, env, out, progress):
        return LoadResult(env, key, out, None)
    health = check(leaves)
    if not health.files_damaged:
        raise DamageError(f"{key.ref}: payload changed while it was being read; {out} was not written")
    if not self_heal:
        raise DamageError("; ".join(health.problems))
    try:
        result = heal(store, key, health, "load", jobs)  # raises unless the payload verifies again
    except (OSError, StorageError):
        # The store cannot be repaired in place (read-only, full, a folder where a leaf
        # should be): repair a private copy and load from it; the store stays as it was.
        return _load_from_private_repair(store, key, out, jobs, progress)
    assert result.envelope is not None
    if not _copy_out(store, key, result.envelope, out, progress):
        raise DamageError(f"{key.ref}: payload changed while it was being read; {out} was not written")
    return LoadResult(result.envelope, key, out, result)


def _load_from_private_repair(store: StoreBackend, key: ArtifactKey, out: Path, jobs: int | None,
                              progress: Callable[[int], None] | None) -> LoadResult:
    """Copy the version's leaves into a private folder, repair them there, and write the
    payload out under the same check as always. Nothing in the store is written."""
    with tempfile.TemporaryDirectory(prefix="ftstore-load-") as tmp:
        files = download_leaves(store, key, Path(tmp))
        result = repair(files, check(files), reason="load", jobs=jobs)
        assert result.envelope is not None
        if not _copy_out_file(files.payload, result.envelope, out, progress):
            raise DamageError(f"{key.ref}: the repaired private copy did not verify; {out} was not written")
    return LoadResult(result.envelope, key, out, result)


def _copy_out(store: StoreBackend, key: ArtifactKey, env: Envelope, out: Path, progress) -> bool:
    """Stream the payload into a temporary file beside ``out``, hashing it; rename it into
    place only if it is exactly what ``env`` records. False (nothing written) otherwise."""
    return _write_verified(lambda: store.open_leaf(key, PAYLOAD), env, out, progress)


def _copy_out_file(payload: Path, env: Envelope, out: Path, progress) -> bool:
    return _write_verified(lambda: open_regular(payload), env, out, progress)


def _write_verified(open_payload: Callable[[], BinaryIO | None], env: Envelope, out: Path, progress) -> bool:
    tmp = tmp_path(out)
    try:
        stream = open_payload()
        if stream is None:
            return False
        with stream, open(tmp, "xb") as f:
            got = hash_stream(stream, progress=progress, sink=f.write)
            f.flush()
            os.fsync(f.fileno())
        if got != (env.source_hash, env.size):
            return False
        replace_durably(tmp, out)
        return True
    except BadInputError:
        return False  # a payload that is not a readable regular file: checked, and repaired, next
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(e, f"writing {out}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["LoadResult", "heal", "load"]
