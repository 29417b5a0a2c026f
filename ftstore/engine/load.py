"""Loading an artifact version's payload into a file, or into memory: never wrong bytes.

One pass first: the payload is streamed into a temporary file beside the destination (or
into a buffer) while it is hashed, and renamed into place (handed over) only if size and
BLAKE3 match the envelope. If they do not (damage), the version is checked, repaired in a
working copy (in place on a local store), and read out again, with the same check.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from ftstore.documents import ArtifactKey, Envelope
from ftstore.durable import disk_full, is_disk_full, replace_durably, tmp_path
from ftstore.fileio import open_regular
from ftstore.engine.integrity import Health, RepairResult, check, repair
from ftstore.engine.leaves import FolderLeaves, StoredLeaves, download_leaves, read_envelope
from ftstore.errors import BadInputError, DamageError, EnvelopeError, NotFoundError, StorageError, UnrecoverableError
from ftstore.hashing import hash_stream
from ftstore.stores.backend import PAYLOAD, StoreBackend
from ftstore.stores.local import local_store_holding
from ftstore.tempdirs import held_temp_dir

T = TypeVar("T")
Opener = Callable[[], "BinaryIO | None"]


@dataclass
class LoadResult:
    envelope: Envelope
    key: ArtifactKey
    out: Path | None  # None for a load into memory
    repair: RepairResult | None
    repaired_in_store: bool = False
    """Whether the repair (if any) was written back to the store. False when the store
    could not be written (read-only, full): a private copy was repaired and read, and the
    stored version is still damaged."""

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


def repaired_envelope(store: StoreBackend, key: ArtifactKey, health: Health, reason: str,
                      jobs: int | None) -> Envelope:
    """The envelope of a version whose files are damaged (its envelope lost or altered, say),
    rebuilt from its sidecar as :func:`load` would (see :func:`_repaired`). Raises
    :class:`UnrecoverableError` when the payload cannot be brought back."""
    with _repaired(store, key, health, reason, jobs) as (result, _, _):
        assert result.envelope is not None
        return result.envelope


@contextlib.contextmanager
def _repaired(store: StoreBackend, key: ArtifactKey, health: Health, reason: str,
              jobs: int | None) -> Iterator[tuple[RepairResult, Opener, bool]]:
    """The version repaired (raises unless its payload verifies again), with an opener of
    the repaired payload and whether it is a private copy: in place where the store can be
    written; else (read-only, full, a folder where a leaf should be) in a private folder,
    held for the caller to read, and the store is left as it is."""
    try:
        result = heal(store, key, health, reason, jobs)
    except (OSError, StorageError, UnrecoverableError) as e:
        # files vanishing under a repair look like a store it cannot write to, or like damage
        if key.version not in store.versions(key.name):  # a delete won
            raise NotFoundError(f"{key.ref} was deleted from {store.url} while it was being repaired") from None
        if isinstance(e, UnrecoverableError):
            raise
    else:
        yield result, (lambda: store.open_leaf(key, PAYLOAD)), False
        return
    with held_temp_dir(reason) as tmp:
        files = download_leaves(store, key, Path(tmp))
        yield repair(files, check(files), reason=reason, jobs=jobs), (lambda: open_regular(files.payload)), True


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
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise BadInputError(f"{out} exists and is not a regular file (a link, device or FIFO); "
                            "it is replaced by a rename, never written through: give another path")
    if store.holds(out):
        raise BadInputError(f"{out} is inside the store {store.url}; give a path outside it")
    if (owner := local_store_holding(out)) is not None:
        raise BadInputError(f"{out} is inside the ftstore store at {owner}; give a path outside it")

    def attempt(env: Envelope, open_payload: Opener) -> bool | None:
        return True if _write_verified(open_payload, env, out, progress) else None

    _, env, repaired, in_store = _verified(store, key, self_heal, jobs, f"{out} was not written", attempt)
    return LoadResult(env, key, out, repaired, in_store)


def load_bytes(store: StoreBackend, key: ArtifactKey, *, self_heal: bool = True,
               jobs: int | None = None) -> tuple[io.BytesIO, LoadResult]:
    """The payload of ``key`` in memory (a stream at its start), read once while hashed and
    handed over only if it is exactly what the envelope records; repaired first if damaged,
    as :func:`load` does. For checkpoints that are deserialized right away."""

    def attempt(env: Envelope, open_payload: Opener) -> io.BytesIO | None:
        buf = io.BytesIO()
        if not _stream_verified(open_payload, env, buf.write, None):
            return None
        buf.seek(0)
        return buf

    buf, env, repaired, in_store = _verified(store, key, self_heal, jobs, "nothing was returned", attempt)
    return buf, LoadResult(env, key, None, repaired, in_store)


def _verified(store: StoreBackend, key: ArtifactKey, self_heal: bool, jobs: int | None, unwritten: str,
              attempt: Callable[[Envelope, Opener], T | None]) -> tuple[T, Envelope, RepairResult | None, bool]:
    """``attempt(envelope, opener)`` reads the payload and returns None unless it hashed
    right; if it did not, the version is checked, repaired (unless ``self_heal`` is off) and
    read again. A store that cannot be repaired in place (read-only, full, a folder where a
    leaf should be) is left as it is: a private copy is repaired and read instead. The last
    item says whether a repair was written to the store."""
    leaves = StoredLeaves(store, key)

    def stored() -> BinaryIO | None:
        return store.open_leaf(key, PAYLOAD)

    try:
        env = read_envelope(leaves)
    except EnvelopeError:
        env = None
    if env is not None and (got := attempt(env, stored)) is not None:
        return got, env, None, False
    health = check(leaves)
    if not health.files_damaged:
        raise DamageError(f"{key.ref}: payload changed while it was being read; {unwritten}")
    if not self_heal:
        raise DamageError("; ".join(health.problems))
    with _repaired(store, key, health, "load", jobs) as (result, repaired_payload, private):
        assert result.envelope is not None
        if (got := attempt(result.envelope, repaired_payload)) is None:
            raise DamageError(f"{key.ref}: the repaired private copy did not verify; {unwritten}" if private
                              else f"{key.ref}: payload changed while it was being read; {unwritten}")
        return got, result.envelope, result, not private


def _stream_verified(open_payload: Opener, env: Envelope, sink: Callable[[memoryview], object],
                     progress: Callable[[int], None] | None) -> bool:
    """Stream the payload into ``sink`` while hashing it: True if it was exactly what ``env``
    records; False if not, or if it is absent or not a readable regular file."""
    try:
        stream = open_payload()
    except BadInputError:
        return False  # checked, and repaired, next
    if stream is None:
        return False
    with stream:  # a byte past the recorded size is enough to refuse it: no more is read
        got = hash_stream(stream, env.size + 1, progress=progress, sink=sink)
    return got == (env.source_hash, env.size)


def _write_verified(open_payload: Opener, env: Envelope, out: Path, progress) -> bool:
    """Stream the payload into a temporary file beside ``out``, hashing it; rename it into
    place only if it is exactly what ``env`` records. False (nothing written) otherwise."""
    tmp = tmp_path(out)
    try:
        with open(tmp, "xb") as f:
            if not _stream_verified(open_payload, env, f.write, progress):
                return False
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, out)
        return True
    except OSError as e:
        if is_disk_full(e):
            raise disk_full(e, f"writing {out}") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["LoadResult", "heal", "load", "load_bytes", "repaired_envelope"]
