"""The leaves of one artifact version, wherever they are: in a store (read through its
backend, streamed) or in a local folder (a working copy, or a store's own folder).

Checking reads through :class:`Leaves`, so one check serves every backend; repairing works
on a local folder (:class:`FolderLeaves`), because decoding needs random access.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from ftstore.documents import MAX_ENVELOPE_BYTES, ArtifactKey, Envelope, decode_envelope, encode_envelope
from ftstore.durable import write_atomic
from ftstore.fileio import open_regular
from ftstore.errors import BadInputError, EnvelopeError, FtstoreError
from ftstore.stores.backend import ENVELOPE, PAYLOAD, SIDECAR, StoreBackend, copy_capped


class Leaves(Protocol):
    key: ArtifactKey

    def open(self, leaf: str) -> BinaryIO | None:
        """A stream of the leaf, or None if it is absent."""

    def read(self, leaf: str, limit: int) -> bytes | None:
        """A small leaf's bytes (None if absent), refused over ``limit`` before reading."""

    def local(self) -> contextlib.AbstractContextManager[FolderLeaves]:
        """The same leaves as local files, read-only use."""

    def owner_of(self, artifact_id: str) -> ArtifactKey | None:
        """Another version of this name whose envelope carries ``artifact_id`` (None if none
        is known): whose a sidecar that names no version really is."""


def owner_in(store: StoreBackend | None, key: ArtifactKey, artifact_id: str) -> ArtifactKey | None:
    """The other version of ``key.name`` in ``store`` whose readable envelope has
    ``artifact_id`` (ids are unique per version), or None."""
    if store is None:
        return None
    for v in store.versions(key.name):
        other = ArtifactKey(key.name, v)
        if v == key.version:
            continue
        try:
            if read_envelope(StoredLeaves(store, other)).artifact_id == artifact_id:
                return other
        except (FtstoreError, OSError):
            continue
    return None


class StoredLeaves:
    """A committed version's leaves, read through its store."""

    def __init__(self, store: StoreBackend, key: ArtifactKey):
        self.store, self.key = store, key

    def open(self, leaf: str) -> BinaryIO | None:
        return self.store.open_leaf(self.key, leaf)

    def read(self, leaf: str, limit: int) -> bytes | None:
        return self.store.read_leaf(self.key, leaf, limit)

    @contextlib.contextmanager
    def local(self) -> Iterator[FolderLeaves]:
        with self.store.working_copy(self.key, writeback=False) as folder:
            yield FolderLeaves(folder, self.key, self.store)

    def owner_of(self, artifact_id: str) -> ArtifactKey | None:
        return owner_in(self.store, self.key, artifact_id)


class FolderLeaves:
    """Leaves as files in a local folder; links and special files are refused. ``store``:
    the store the version belongs to (whose other versions say whose a sidecar is), if any."""

    def __init__(self, folder: Path, key: ArtifactKey, store: StoreBackend | None = None):
        self.folder, self.key, self.store = folder, key, store

    def owner_of(self, artifact_id: str) -> ArtifactKey | None:
        return owner_in(self.store, self.key, artifact_id)

    @property
    def payload(self) -> Path:
        return self.folder / PAYLOAD

    @property
    def sidecar(self) -> Path:
        return self.folder / SIDECAR

    @property
    def envelope(self) -> Path:
        return self.folder / ENVELOPE

    def open(self, leaf: str) -> BinaryIO | None:
        return open_regular(self.folder / leaf)

    def read(self, leaf: str, limit: int) -> bytes | None:
        f = self.open(leaf)
        if f is None:
            return None
        with f:
            data = f.read(min(limit, os.fstat(f.fileno()).st_size) + 1)
        if len(data) > limit:
            raise EnvelopeError(f"{self.key.ref}: {leaf} is over the {limit} byte limit")
        return data

    @contextlib.contextmanager
    def local(self) -> Iterator[FolderLeaves]:
        yield self

    def write_envelope(self, env: Envelope) -> None:
        write_atomic(self.envelope, encode_envelope(env), leaf=True)


def download_leaves(store: StoreBackend, key: ArtifactKey, folder: Path) -> FolderLeaves:
    """A private copy of a version's leaves in ``folder`` (to check and repair without
    writing to the store). A leaf that is not a regular file (a link, FIFO, folder) is
    left out, as if absent: it is damage, never something to read through."""
    files = FolderLeaves(folder, key, store)
    for leaf in (PAYLOAD, SIDECAR, ENVELOPE):
        try:
            stream = store.open_leaf(key, leaf)
        except BadInputError:
            continue
        if stream is not None:  # an envelope of gigabytes is damage: left out, a repair writes it anew
            copy_capped(stream, folder / leaf, MAX_ENVELOPE_BYTES if leaf == ENVELOPE else None)
    return files


def parse_envelope(data: bytes | None, key: ArtifactKey) -> Envelope:
    """The envelope of ``key`` from its bytes; :class:`EnvelopeError` if it is missing,
    invalid, or names another artifact version than the one it is filed as."""
    if data is None:
        raise EnvelopeError(f"{key.ref}: envelope is missing")
    env = decode_envelope(data, source=f"{key.ref}: {ENVELOPE}")
    if env.name != key.name or env.version != key.version:
        raise EnvelopeError(f"{key.ref}: envelope names {env.name}@{env.version}, not its location")
    return env


def read_envelope(leaves: Leaves) -> Envelope:
    """The envelope of a version; anything that keeps it from being read (oversized, not a
    regular file, unreadable) is reported as a damaged envelope, which a repair rebuilds."""
    try:
        data = leaves.read(ENVELOPE, MAX_ENVELOPE_BYTES)
    except EnvelopeError:
        raise
    except (BadInputError, OSError) as e:
        raise EnvelopeError(f"{leaves.key.ref}: envelope unreadable: {e}") from None
    return parse_envelope(data, leaves.key)


__all__ = ["FolderLeaves", "Leaves", "StoredLeaves", "download_leaves", "owner_in", "parse_envelope", "read_envelope"]
