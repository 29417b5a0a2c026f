"""An opened store: the object training code, the API and the CLI hold.

Each method is one engine operation over the store's backend, so what is validated, checked
or repaired does not depend on the door a request comes in by: ``Store.save`` is the only
save there is, and it parses typed payloads (bundles, snapshots, baselines) strictly before
anything is written.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ftstore import engine, lazy, payloads
from ftstore.codec.layout import DEFAULT_OVERHEAD
from ftstore.documents import ArtifactKey, Envelope, Ref, parse_ref
from ftstore.durable import Writer
from ftstore.engine.integrity import Health, check
from ftstore.engine.leaves import StoredLeaves, read_envelope
from ftstore.engine.load import LoadResult, load, load_bytes
from ftstore.errors import FtstoreError, NotFoundError
from ftstore.stores import Capabilities, StoreBackend, open_store


class Store:
    def __init__(self, backend: StoreBackend):
        self.backend = backend
        lazy.preload()  # here, not in the thread of a first save that a fork could catch half done

    @classmethod
    def open(cls, location: str | os.PathLike | None = None, create: bool = False) -> Store:
        """The store at ``location`` (a directory or ``s3://bucket/prefix``; default
        ``$FTSTORE_STORE`` or ``./ftstore-store``), created if asked and absent."""
        return cls(open_store(location, create=create))

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def url(self) -> str:
        return self.backend.url

    @property
    def capabilities(self) -> Capabilities:
        return self.backend.capabilities

    # -- what is in it ------------------------------------------------------------------------
    def names(self) -> list[str]:
        return self.backend.names()

    def versions(self, name: str) -> list[int]:
        return self.backend.versions(name)

    def keys(self) -> list[ArtifactKey]:
        return self.backend.keys()

    def resolve(self, ref: str | Ref | ArtifactKey) -> ArtifactKey:
        """The committed version ``ref`` names: ``NAME`` is the newest, ``NAME@V`` exactly V."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        versions = self.backend.versions(r.name)
        if not versions:
            raise NotFoundError(f"no artifact named {r.name!r} in {self.url}")
        if r.version is None:
            return ArtifactKey(r.name, versions[-1])
        if r.version not in versions:
            raise NotFoundError(f"{r.name} has no version {r.version} (versions: {', '.join(map(str, versions))})")
        return ArtifactKey(r.name, r.version)

    def read_envelope(self, ref: str | Ref | ArtifactKey) -> Envelope:
        return read_envelope(StoredLeaves(self.backend, self.resolve(ref)))

    def describe(self, ref: str | Ref | ArtifactKey) -> dict[str, str]:
        return self.backend.describe(self.resolve(ref))

    # -- operations -----------------------------------------------------------------------------
    def save(
        self,
        src: str | os.PathLike,
        name: str,
        artifact_type: str | None = None,
        metadata: dict[str, str] | None = None,
        overhead: float = DEFAULT_OVERHEAD,
        jobs: int | None = None,
        progress: Callable[[int], None] | None = None,
        protect: bool = True,
        move: bool = False,
    ) -> Envelope:
        """Store ``src`` as the next version of ``name`` (see :func:`ftstore.engine.save.save`).
        ``artifact_type`` None: ``model_bundle`` for an ftstore bundle, else ``file``. A typed
        payload is parsed strictly first; a malformed one is refused, nothing written."""
        artifact_type = self.check_save(src, name, artifact_type, metadata, overhead, move)
        return engine.save.save(self.backend, Path(src), name, artifact_type, metadata, overhead, jobs, progress,
                                protect, move)

    @staticmethod
    def check_save(src: str | os.PathLike, name: str, artifact_type: str | None = None,
                   metadata: dict[str, str] | None = None, overhead: float = DEFAULT_OVERHEAD,
                   move: bool = False) -> str:
        """Refuse a save that :meth:`save` would refuse for its request alone (name, type,
        metadata, overhead, the file and a typed payload's contents, a ``move`` of another
        store's file), touching no store: a command checks this before it creates one.
        Returns the artifact type."""
        path = Path(src)
        engine.save.validated_request(path, name, artifact_type or "file", metadata, overhead)
        if move:
            engine.save.refuse_other_stores_file(path)
        artifact_type = artifact_type or payloads.detect_type(path)
        payloads.validate_typed_payload(path, artifact_type)
        return artifact_type

    def save_written(self, write: Writer, name: str, metadata: dict[str, str] | None = None,
                     overhead: float = DEFAULT_OVERHEAD, jobs: int | None = None, protect: bool = True) -> Envelope:
        """Store what ``write(f)`` writes into ``f`` as the next version of ``name`` (a
        ``file``): written straight into the store and hashed on the way, no copy (see
        :func:`ftstore.engine.save_written.save_written`)."""
        return engine.save_written.save_written(self.backend, write, name, metadata, overhead, jobs, protect)

    def check(self, ref: str | Ref | ArtifactKey) -> Health:
        """Read-only health of one version."""
        return check(StoredLeaves(self.backend, self.resolve(ref)))

    def verify(self, refs: Sequence[str] = ()) -> list[Health]:
        """Check the named versions (the newest for a bare name), or every version of every
        artifact when none is named."""
        keys = [self.resolve(r) for r in refs] if refs else self.keys()
        return [self._check_one(k) for k in keys]

    def _check_one(self, key: ArtifactKey) -> Health:
        """One version's health; a version that cannot even be checked (a folder where a
        file should be, a store error on one object) is reported as such, and the others
        are still checked."""
        try:
            return check(StoredLeaves(self.backend, key))
        except (FtstoreError, OSError) as e:
            health = Health(key)
            health.envelope_problem = f"{key.ref}: could not be checked: {' '.join(str(e).split())}"
            return health

    def load(self, ref: str | Ref | ArtifactKey, out: str | os.PathLike, *, self_heal: bool = True,
             jobs: int | None = None, progress: Callable[[int], None] | None = None) -> LoadResult:
        """Write the payload to ``out``: verified first, repaired in place if damaged; never
        wrong bytes (see :func:`ftstore.engine.load.load`)."""
        return load(self.backend, self.resolve(ref), out, self_heal=self_heal, jobs=jobs, progress=progress)

    def load_bytes(self, ref: str | Ref | ArtifactKey, *, self_heal: bool = True,
                   jobs: int | None = None) -> tuple[io.BytesIO, LoadResult]:
        """The payload in memory, verified as it was read, repaired first if damaged (see
        :func:`ftstore.engine.load.load_bytes`)."""
        return load_bytes(self.backend, self.resolve(ref), self_heal=self_heal, jobs=jobs)

    def delete(self, ref: str | Ref | ArtifactKey) -> None:
        self.backend.delete(self.resolve(ref))

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private folder to build a file in that ``save(..., move=True)`` then takes over
        (without copying, where the backend has hard links); removed afterwards."""
        with self.backend.scratch() as folder:
            yield folder


__all__ = ["Store"]
