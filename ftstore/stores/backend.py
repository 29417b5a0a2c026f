"""What a store backend must give the engine, and nothing more.

A backend keeps committed artifact versions, each a few named files ("leaves"), and knows
how to commit a new one atomically in its medium. It knows no envelope, sidecar or codec:
the engine (``ftstore.engine``) does saving, checking, repairing and loading over this
interface, once, for every backend. Callers ask what a backend can do through
:class:`Capabilities`, never which class it is.

    StoreBackend  names / versions / leaf reads and writes / stage -> commit / delete /
                  orphans / reports
    Staging       one save in progress: a local work folder, leaves copied, linked or
                  added into it, then commit (all or nothing) or abort
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from ftstore.documents.envelope_json import MAX_ENVELOPE_BYTES
from ftstore.documents.names import ArtifactKey
from ftstore.documents.strict_json import DECODE_ERRORS, reject_duplicate_keys
from ftstore.errors import BadInputError, FtstoreError, StorageError
from ftstore.hashing import CHUNK, hash_bytes, hash_file
from ftstore.tempdirs import HeldTempDir

PAYLOAD, SIDECAR, ENVELOPE = "payload", "sidecar.ftrq", "envelope.json"
LEAVES = (PAYLOAD, SIDECAR, ENVELOPE)
# A deleted version that was the highest of its name keeps its number as a tombstone (an
# empty ``deleted`` leaf and nothing else), so no later save is given that number: ``NAME@V``
# as a save reported it names that artifact, or none, for as long as the store lives.
DELETED = "deleted"
MARKER = "ftstore-store.json"
TOP_FOLDERS = ("artifacts", "staging", "trash", "reports")  # a store's own folders, under its marker
DEFAULT_STORE = "./ftstore-store"

Progress = Callable[[int], None]
ChunkSink = Callable[[memoryview], object]


class StoreMarker(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The document at the root of every store, so a store is never mistaken for another
    folder or bucket (and an older ftstore refuses a newer layout)."""

    format: Literal["ftstore-store"] = "ftstore-store"
    version: Literal[1] = 1


MARKER_BYTES = msgspec.json.encode(StoreMarker()) + b"\n"


def check_marker(data: bytes, where: str) -> None:
    """Raise unless ``data`` is a store marker this ftstore understands."""
    reject_duplicate_keys(data, where)
    try:
        msgspec.json.decode(data, type=StoreMarker)
    except DECODE_ERRORS:
        raise BadInputError(f"{where}: not a store marker this ftstore understands") from None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, for the engine to choose its strategies by.

    ``local_files``: leaves are plain files on this machine, so checking and repairing work
    on them in place (no download) and a save can encode its own stored copy.
    ``atomic_rename``: a staged version becomes committed by one rename.
    ``hard_links``: a file on the store's filesystem can be taken over by a link, not a copy.
    ``conditional_writes``: create-if-absent, which commits without rename.
    ``range_reads``: part of a leaf can be read without the rest."""

    local_files: bool
    atomic_rename: bool
    hard_links: bool
    conditional_writes: bool
    range_reads: bool


@dataclass(frozen=True)
class Orphan:
    """Something in the store that belongs to no committed artifact version."""

    path: str  # relative to the store, as the backend names it to remove_orphan
    reason: str
    version: ArtifactKey | None = None
    """The version whose folder (or prefix) holds it, where it lies in one: a maintenance
    task asks that version's envelope whether this release may touch it."""


class Staging(ABC):
    """One save in progress. Files the engine builds go into :attr:`workdir`; leaves come
    in by :meth:`copy_in`, :meth:`link_in` or :meth:`add`; :meth:`commit` makes all of
    them one committed version at once, or nothing; :meth:`abort` leaves no trace."""

    name: str
    workdir: Path

    @abstractmethod
    def expected_version(self) -> int:
        """The version this save will commit as: exactly, where the backend takes (claims)
        it before anything is written; otherwise the one it will try first, which a
        concurrent writer may take (the commit then calls ``envelope_for`` with the next)."""

    @abstractmethod
    def copy_in(self, leaf: str, src: Path, progress: Progress | None, sink: ChunkSink | None,
                durable: bool) -> tuple[str, int]:
        """Store the bytes of ``src`` as ``leaf``; return (BLAKE3, size) of exactly the bytes
        stored. ``sink`` sees every chunk. Without ``durable`` a local copy is left to the
        page cache for the caller to read back and :meth:`sync`."""

    def link_in(self, leaf: str, src: Path) -> Path | None:
        """Take ``src`` over as ``leaf`` without copying it, where the backend can: returns the
        stored file's path, or None (nothing done) where it cannot."""
        return None

    def sync(self, leaf: str) -> None:
        """Make a leaf that :meth:`copy_in` left non-durable durable."""

    @abstractmethod
    def add(self, leaf: str, path: Path) -> None:
        """Store the finished local file ``path`` (usually in :attr:`workdir`) as ``leaf``."""

    @abstractmethod
    def commit(self, envelope_for: Callable[[int], bytes], version: int | None = None) -> int:
        """Commit everything added, with ``envelope_for(v)`` as its envelope, as the next free
        version (or exactly the one asked at :meth:`StoreBackend.stage`, raising
        :class:`VersionTakenError` if it exists). Returns the version committed. The envelope
        is what makes the version exist. ``envelope_for`` may rewrite files in
        :attr:`workdir` that were added, to bind them to ``v`` (the sidecar names its
        version): a backend that reads added files only at the commit (local) allows it for
        any ``v``; one that uploads them at :meth:`add` commits exactly
        :meth:`expected_version`, for which they were made."""

    @abstractmethod
    def abort(self) -> None:
        """Remove everything this save wrote; safe to call after a failed commit."""


class VersionTakenError(FtstoreError):
    """The exact version asked for is already committed, or being saved by another writer
    (see ``Staging.commit``)."""


class StoreBackend(ABC):
    """One store: a local directory, an S3 prefix, ... (see the module docstring)."""

    url: str
    capabilities: Capabilities

    # -- listing --------------------------------------------------------------------------
    @abstractmethod
    def names(self) -> list[str]:
        """Artifact names with at least one committed version, sorted."""

    @abstractmethod
    def versions(self, name: str) -> list[int]:
        """Committed versions of ``name``, ascending (never a tombstone)."""

    def keys(self) -> list[ArtifactKey]:
        return [ArtifactKey(n, v) for n in self.names() for v in self.versions(n)]

    def holds(self, path: Path) -> bool:
        """Whether a local ``path`` names one of this store's own files or folders: a save
        must not move such a file away, nor a load write over one. None here; a store kept
        in a local folder says otherwise."""
        return False

    # -- leaves of committed versions -------------------------------------------------------
    @abstractmethod
    def open_leaf(self, key: ArtifactKey, leaf: str) -> BinaryIO | None:
        """A binary stream of a leaf (to read once, front to back), or None if it is absent."""

    @abstractmethod
    def leaf_sizes(self, key: ArtifactKey) -> dict[str, int]:
        """The size of every leaf the version has."""

    @abstractmethod
    def read_leaf(self, key: ArtifactKey, leaf: str, limit: int) -> bytes | None:
        """A small leaf's bytes, or None if absent; :class:`BadInputError` if over ``limit``
        bytes (checked before reading)."""

    @abstractmethod
    def write_leaf(self, key: ArtifactKey, leaf: str, data: bytes | Path) -> None:
        """Replace (or create) one leaf of a committed version atomically and durably."""

    def leaf_tags(self, key: ArtifactKey) -> dict[str, str]:
        """An opaque tag for each leaf the version has, which changes whenever the leaf is
        replaced (an S3 ETag); empty where the backend keeps none."""
        return {}

    def write_leaf_if(self, key: ArtifactKey, leaf: str, data: Path, tag: str | None) -> bool:
        """:meth:`write_leaf`, only if the leaf is still the one ``tag`` names (None: only if
        it is absent); False, writing nothing, if it is not. Without conditional writes, the
        leaf is written."""
        self.write_leaf(key, leaf, data)
        return True

    @abstractmethod
    def delete_leaf(self, key: ArtifactKey, leaf: str) -> None:
        """Remove one leaf of a committed version (absent is fine)."""

    @abstractmethod
    def describe(self, key: ArtifactKey) -> dict[str, str]:
        """Where the version and each of its leaves are, as the user would address them."""

    def remove_interrupted_saves(self) -> int:
        """Remove what saves killed on the way left behind, where that is cheap to find and
        certain (their lease is free); returns how many. A resumed training run calls it,
        so a job killed mid-save again and again does not fill the disk with partial
        checkpoints between scrubs. This default removes nothing: ``scrub
        --remove-orphans`` finds them."""
        return 0

    def shares_payload(self, key: ArtifactKey, file_id: tuple[int, int]) -> bool:
        """Whether a version other than ``key`` has the local payload file ``file_id``
        (device, inode); a repair gives ``key`` a file of its own before writing through
        it. Only a store of local files can: this default says no."""
        return False

    @contextlib.contextmanager
    def working_copy(self, key: ArtifactKey, writeback: bool = True) -> Iterator[Path]:
        """A local folder holding the version's leaves, to check and repair as plain files.
        This default downloads them into a temporary folder and, on a clean exit with
        ``writeback``, writes back the leaves that changed, the envelope last. Backends with
        ``local_files`` yield the version's own folder instead."""
        held = HeldTempDir("work")
        tmp = held.path
        try:
            before = {leaf: self._download(key, leaf, tmp / leaf, MAX_ENVELOPE_BYTES if leaf == ENVELOPE else None)
                      for leaf in LEAVES}
            yield tmp
            if writeback:
                now_all = {leaf: _fingerprint(tmp / leaf) for leaf in LEAVES}
                # No repair removes a payload or an envelope: gone, they were removed from
                # outside (the folder, or its files, by hand or a tmp cleaner), and writing
                # that back would delete the committed version from the store.
                gone = [leaf for leaf in (PAYLOAD, ENVELOPE) if now_all[leaf] is None and before[leaf] is not None]
                if not held.intact() or gone:
                    raise StorageError(f"the working copy {tmp} was removed while in use; nothing was written back")
                changed = [leaf for leaf in LEAVES if now_all[leaf] != before[leaf]]  # envelope last
                tags = self.leaf_tags(key) if changed else {}
                if changed:  # after the tags: a change between the two is caught by either
                    self._check_unchanged(key, before)
                for leaf in changed:
                    now = now_all[leaf]
                    if now is None:
                        if before[leaf] != ("oversized", -1):  # one never downloaded is not deleted
                            self.delete_leaf(key, leaf)
                    elif not self.write_leaf_if(key, leaf, tmp / leaf, tags.get(leaf)):
                        raise StorageError(f"{key.ref} changed in {self.url} while its repair was written back "
                                           f"(at {leaf}); the rest was not written")
        finally:
            held.remove()

    def _check_unchanged(self, key: ArtifactKey, before: dict[str, tuple[str, int] | None]) -> None:
        """Refuse to write back over a version that changed since it was downloaded: deleted
        (a write-back would bring back an envelope without data), or deleted and its number
        taken by a new save (whose envelope it would overwrite), or repaired by another
        process meanwhile. Compared: the envelope's bytes, and which leaves exist at what
        size."""
        sizes = self.leaf_sizes(key)
        now_envelope = None
        if ENVELOPE in sizes and sizes[ENVELOPE] <= MAX_ENVELOPE_BYTES:
            data = self.read_leaf(key, ENVELOPE, MAX_ENVELOPE_BYTES)
            now_envelope = None if data is None else (hash_bytes(data), len(data))
        elif ENVELOPE in sizes:
            now_envelope = ("oversized", -1)
        same = now_envelope == before[ENVELOPE] and all(
            (sizes.get(leaf) is None) == (before[leaf] is None)
            and (before[leaf] is None or before[leaf] == ("oversized", -1) or sizes[leaf] == before[leaf][1])
            for leaf in (PAYLOAD, SIDECAR)
        )
        # an envelope there before and now is the commit; without one, the commit marker says
        if not same or (before[ENVELOPE] is None and key.version not in self.versions(key.name)):
            raise StorageError(f"{key.ref} changed in {self.url} while it was being repaired (deleted, replaced by a "
                               "new save, or repaired by another process); nothing was written back")

    def _download(self, key: ArtifactKey, leaf: str, dest: Path, limit: int | None) -> tuple[str, int] | None:
        """Copy one leaf into the working copy; one over ``limit`` bytes (an envelope of
        gigabytes) is left out, as damaged, and replaced if a repair writes it anew."""
        stream = self.open_leaf(key, leaf)
        if stream is None:
            return None
        if not copy_capped(stream, dest, limit):
            return ("oversized", -1)
        return _fingerprint(dest)

    # -- saving -----------------------------------------------------------------------------
    @abstractmethod
    def stage(self, name: str, version: int | None = None, owner: str | None = None) -> Staging:
        """Begin saving a new version of ``name`` (exactly ``version``, if given). ``owner``:
        the id of the artifact an exact-version save brings (a copy), so a backend that
        claims versions can let a re-run take over the claim of an interrupted one."""

    @abstractmethod
    def scratch(self) -> contextlib.AbstractContextManager[Path]:
        """A private folder to build a file in that a save then takes over (linked where the
        backend has ``hard_links``); removed afterwards."""

    # -- maintenance --------------------------------------------------------------------------
    @abstractmethod
    def delete(self, key: ArtifactKey) -> None:
        """Remove one committed version; it stops being an artifact at one atomic step. Its
        number is never given to a later save: the highest version deleted stays behind as a
        tombstone (:data:`DELETED`), which a backend may drop once a higher one exists. An
        exact-version save (a copy, which brings its version from another store) into a
        tombstone is refused; one into a number no folder holds (a lower version deleted
        whole, a dropped tombstone) is not."""

    @abstractmethod
    def orphans(self) -> list[Orphan]:
        """Everything that belongs to no committed version (interrupted saves and deletes,
        stray files). Saves in progress are never listed."""

    @abstractmethod
    def remove_orphan(self, path: str) -> bool:
        """Remove one orphan (as :meth:`orphans` named it); True if it is gone."""

    @abstractmethod
    def write_report(self, name: str, data: bytes) -> None:
        """Keep a report (a scrub's) in the store."""


def copy_capped(stream: BinaryIO, dest: Path, limit: int | None) -> bool:
    """Copy ``stream`` (closed after) into a new file ``dest``; False, and no file, where it
    holds more than ``limit`` bytes: no more than one byte past the limit is read."""
    with stream, open(dest, "xb") as out:
        copied = 0
        while chunk := stream.read(CHUNK if limit is None else min(CHUNK, limit + 1 - copied)):
            out.write(chunk)
            copied += len(chunk)
            if limit is not None and copied > limit:
                break
    if limit is not None and copied > limit:
        dest.unlink()
        return False
    return True


def _fingerprint(path: Path) -> tuple[str, int] | None:
    """(BLAKE3, size) of a working-copy file, None if absent: a hash, not a stat, because a
    repair may rewrite bytes within one timestamp tick and keep the size."""
    try:
        return hash_file(path)
    except FileNotFoundError:
        return None


__all__ = [
    "DEFAULT_STORE",
    "DELETED",
    "ENVELOPE",
    "LEAVES",
    "MARKER",
    "MARKER_BYTES",
    "PAYLOAD",
    "SIDECAR",
    "TOP_FOLDERS",
    "Capabilities",
    "Orphan",
    "Staging",
    "StoreBackend",
    "StoreMarker",
    "VersionTakenError",
    "check_marker",
    "copy_capped",
]
