"""A local directory store: where artifacts live and how a save commits.

    <root>/ftstore-store.json               marker: {"format": "ftstore-store", "version": 1}
    <root>/artifacts/<name>/<version>/      one committed artifact version
        payload                             the bytes the user gave, unchanged
        sidecar.ftrq                        repair sidecar
        envelope.json                       the envelope
    <root>/staging/<uuid>/                  saves in progress (orphans if a save died)
    <root>/trash/<uuid>/                    versions being deleted (orphans if a delete died)
    <root>/reports/                         scrub reports

Commit protocol: payload, sidecar and envelope are written and fsynced in a staging
directory, and the directory is renamed to ``artifacts/<name>/<version>``. That rename is
the commit point: it is atomic, it fails if another writer took the version (we then take
the next), and nothing outside ``artifacts/`` is ever shown as an artifact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .codec import ArtifactEssentials, SidecarBuild, SymbolHasher
from .codec.encoder import PARALLEL_MIN_BYTES
from .codec.layout import DEFAULT_OVERHEAD, MAX_OVERHEAD, MIN_OVERHEAD
from .codec.parallel import warm as warm_workers
from .envelopes.model import MetaKey, MetaValue
from .envelopes.strictjson import loads_unique
from .envelopes import ARTIFACT_TYPES, Envelope, RaptorQSection, decode_envelope, encode_envelope
from .errors import BadInputError, EnvelopeError, FtstoreError, NotFoundError
from .hashing import hash_file
from .storage.local import (
    TMP_MARK,
    FileState,
    copy_hashing,
    disk_full,
    fsync_dir,
    fsync_file,
    hash_durably,
    is_disk_full,
    remove_tree,
    try_link,
    watch,
    write_atomic,
)

MARKER = "ftstore-store.json"
DEFAULT_STORE = "./ftstore-store"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PAYLOAD, SIDECAR, ENVELOPE = "payload", "sidecar.ftrq", "envelope.json"
PLACEHOLDER_HASH = "blake3:" + "0" * 64


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


def parse_ref(text: str) -> Ref:
    name, sep, ver = text.partition("@")
    if not NAME_RE.match(name):
        raise BadInputError(f"invalid artifact name {name!r}: use letters, digits, '.', '_' and '-' (max 128)")
    if not sep:
        return Ref(name)
    if not ver.isdigit() or int(ver) < 1:
        raise BadInputError(f"invalid version {ver!r} in {text!r}: versions are positive integers")
    return Ref(name, int(ver))


@dataclass(frozen=True)
class ArtifactPaths:
    name: str
    version: int
    dir: Path

    @property
    def payload(self) -> Path:
        return self.dir / PAYLOAD

    @property
    def sidecar(self) -> Path:
        return self.dir / SIDECAR

    @property
    def envelope(self) -> Path:
        return self.dir / ENVELOPE

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def read_envelope(paths: ArtifactPaths) -> Envelope:
    try:
        data = paths.envelope.read_bytes()
    except FileNotFoundError:
        raise EnvelopeError(f"{paths.ref}: envelope is missing") from None
    env = decode_envelope(data, source=f"{paths.ref}: {ENVELOPE}")
    if env.name != paths.name or env.version != paths.version:
        raise EnvelopeError(f"{paths.ref}: envelope names {env.name}@{env.version}, not its location")
    return env


def write_envelope(paths: ArtifactPaths, env: Envelope) -> None:
    write_atomic(paths.envelope, encode_envelope(env))


class Store:
    remote = False  # True where every read is a transfer (see api.load)

    def __init__(self, root: Path):
        self.root = root

    @classmethod
    def open(cls, location: str | os.PathLike | None = None, create: bool = False) -> Store:
        text = str(location or os.environ.get("FTSTORE_STORE") or DEFAULT_STORE)
        if text.startswith("s3://"):
            from .storage.s3 import S3Store

            return S3Store.open_url(text, create=create)
        root = Path(text)
        marker = root / MARKER
        if not marker.exists():
            if not create:
                raise NotFoundError(f"no ftstore store at {root} (save something first, or pass --store)")
            if root.exists() and any(root.iterdir()):
                raise BadInputError(f"{root} exists, is not empty and is not an ftstore store")
            root.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, json.dumps({"format": "ftstore-store", "version": 1}).encode() + b"\n")
        else:
            try:
                doc = loads_unique(marker.read_bytes(), str(marker))
                ok = doc == {"format": "ftstore-store", "version": 1}
            except (ValueError, OSError):
                ok = False
            if not ok:
                raise BadInputError(f"{marker}: not a store marker this ftstore understands")
        return cls(root)

    # -- layout ---------------------------------------------------------------
    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def paths(self, name: str, version: int) -> ArtifactPaths:
        return ArtifactPaths(name, version, self.artifacts_dir / name / str(version))

    def names(self) -> list[str]:
        if not self.artifacts_dir.is_dir():
            return []
        return sorted(p.name for p in self.artifacts_dir.iterdir() if p.is_dir() and NAME_RE.match(p.name))

    def versions(self, name: str) -> list[int]:
        d = self.artifacts_dir / name
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0)

    def all_paths(self) -> list[ArtifactPaths]:
        return [self.paths(n, v) for n in self.names() for v in self.versions(n)]

    def resolve(self, ref: str | Ref) -> ArtifactPaths:
        r = parse_ref(ref) if isinstance(ref, str) else ref
        versions = self.versions(r.name)
        if not versions:
            raise NotFoundError(f"no artifact named {r.name!r} in {self.root}")
        if r.version is None:
            return self.paths(r.name, versions[-1])
        if r.version not in versions:
            raise NotFoundError(f"{r.name} has no version {r.version} (versions: {', '.join(map(str, versions))})")
        return self.paths(r.name, r.version)

    # -- save -----------------------------------------------------------------
    def save(
        self,
        src: str | os.PathLike,
        name: str,
        artifact_type: str = "file",
        metadata: dict[str, str] | None = None,
        overhead: float = DEFAULT_OVERHEAD,
        jobs: int | None = None,
        progress: Callable[[int], None] | None = None,
        protect: bool = True,
        move: bool = False,
    ) -> Envelope:
        """Store a copy of ``src`` as the next version of ``name``: copy and hash while encoding
        the sidecar, write the envelope, then commit by renaming the staging directory.
        ``protect=False`` commits without a sidecar (``raptorq: null``, protection pending);
        :func:`ftstore.integrity.protect_pending` or ``scrub --repair`` adds it later.

        ``move=True`` takes ``src`` over: on the store's filesystem it is hard-linked in
        instead of copied (no payload bytes written), and it is removed once the commit is
        durable. Until then it stays where it was, so a failed save loses nothing."""
        src = Path(src)
        parse_ref(name)
        if "@" in name:
            raise BadInputError(f"invalid artifact name {name!r}: '@' separates a version")
        if artifact_type not in ARTIFACT_TYPES:
            raise BadInputError(f"unknown artifact type {artifact_type!r} (one of: {', '.join(ARTIFACT_TYPES)})")
        if not (MIN_OVERHEAD <= overhead <= MAX_OVERHEAD):
            raise BadInputError(f"overhead {overhead} is outside {MIN_OVERHEAD}..{MAX_OVERHEAD}")
        if not src.is_file():
            raise BadInputError(f"{src}: no such file")
        try:
            metadata = msgspec.convert(dict(metadata or {}), dict[MetaKey, MetaValue])
        except msgspec.ValidationError as e:
            raise BadInputError(f"invalid metadata: {e}") from None
        template = ArtifactEssentials(
            artifact_id=uuid.uuid4().hex,
            artifact_type=artifact_type,  # type: ignore[arg-type]
            name=name,
            size=src.stat().st_size,
            source_hash=PLACEHOLDER_HASH,
            created_unix_ms=int(time.time() * 1000),
            metadata=metadata,
        )
        if protect and template.size >= PARALLEL_MIN_BYTES:
            warm_workers(jobs)  # started while the files are opened and the copy begins
        env = self._store_new(src, template, overhead, jobs, progress, protect, move)
        if move:
            src.unlink(missing_ok=True)
        return env

    def _store_new(self, src, template, overhead, jobs, progress, protect, move) -> Envelope:
        """Stage payload, sidecar and envelope, then commit by renaming the staging folder."""
        stage = self._staging_parent() / uuid.uuid4().hex
        try:
            stage.mkdir(parents=True)
            staged = stage / PAYLOAD
            unchanged = None
            if move and try_link(src, staged):
                source = staged
                copy = lambda also: hash_durably(staged, progress, also, single_thread=protect)  # noqa: E731
                if (state := watch(staged)) is not None:
                    unchanged = lambda: FileState.of(staged) == state  # noqa: E731
            elif protect:
                essentials, info = self._copy_then_protect(src, stage, template, overhead, jobs, progress)
                return self._commit(stage, envelope_from(essentials, 1, raptorq_section(info)))
            else:
                source = src
                copy = lambda also: copy_hashing(src, staged, None, progress, also)  # noqa: E731
            essentials, info = self._copy_and_protect(source, stage, template, overhead, jobs, copy, protect, unchanged)
            return self._commit(stage, envelope_from(essentials, 1, raptorq_section(info) if info else None))
        except OSError as e:
            remove_tree(stage)
            if is_disk_full(e):
                raise disk_full(e, f"saving {template.name}") from None
            raise
        except BaseException:
            remove_tree(stage)
            raise

    @staticmethod
    def _copy_and_protect(src, stage, template, overhead, jobs, copy, protect=True, unchanged=None):
        """Run ``copy`` (which hashes the payload whole and passes every chunk to a symbol
        hasher) in a thread while encoder processes read the source (saves by taking a file
        over, and uploads to object storage, where the stored copy cannot be read back
        cheaply); the copy's symbol table must equal the encoder's, which proves the stored
        copy is exactly what was encoded.

        ``unchanged`` replaces that proof for a file taken over rather than copied (there the
        stored file *is* the source): it says whether the file was written to since before
        the first read, and saves hashing every symbol twice (a tenth of a save's CPU).
        Returns (essentials, sidecar info or None when not protecting)."""
        if not protect:
            digest, size = copy(None)
            return msgspec.structs.replace(template, size=size, source_hash=digest), None
        build = SidecarBuild(stage / SIDECAR, template, overhead)
        symbols = None if unchanged else SymbolHasher(build.layout.symbol_size)
        with ThreadPoolExecutor(1) as ex:
            copied = ex.submit(copy, symbols)
            encoded = build.encode(src, jobs)
            digest, size = copied.result()
        same = unchanged() if unchanged else symbols.table() == encoded
        if size != template.size or not same:
            raise BadInputError(f"{src} changed while it was being saved; nothing was stored")
        essentials = msgspec.structs.replace(template, source_hash=digest)
        return essentials, build.finish(essentials)

    @staticmethod
    def _copy_then_protect(src, stage, template, overhead, jobs, progress):
        """Copy into the staging folder first, then encode the copy while the disk flushes
        it. The copy is private, so what is encoded is what is stored, and the source is
        read once: on two cores this beats encoding the source alongside the copy (CPU-bound
        both) by a third. A source written to during the copy is refused: seen through its
        stat, or, where timestamps cannot tell, by hashing it again."""
        staged = stage / PAYLOAD
        before = watch(src)
        digest, size = copy_hashing(src, staged, None, progress, durable=False)
        if size != template.size or (
            FileState.of(src) != before if before is not None else hash_file(src)[0] != digest
        ):
            raise BadInputError(f"{src} changed while it was being saved; nothing was stored")
        build = SidecarBuild(stage / SIDECAR, template, overhead)
        with ThreadPoolExecutor(1) as ex:
            synced = ex.submit(fsync_file, staged)
            build.encode(staged, jobs)
            synced.result()
        essentials = msgspec.structs.replace(template, source_hash=digest)
        return essentials, build.finish(essentials)

    def _staging_parent(self) -> Path:
        return self.staging_dir

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private folder to build a file in that ``save(..., move=True)`` then takes over
        without copying (it is on the store's filesystem); removed afterwards, and reported
        as an orphan if a crash leaves it."""
        folder = self._staging_parent() / f"scratch-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        try:
            yield folder
        finally:
            remove_tree(folder)

    def import_files(self, local: ArtifactPaths) -> bool:
        """Commit existing artifact files as ``local.name@local.version`` (see ftstore copy);
        False if that version exists."""
        stage = self._staging_parent() / uuid.uuid4().hex
        stage.mkdir(parents=True)
        try:
            for f in (local.payload, local.sidecar, local.envelope):
                if f.exists():
                    copy_hashing(f, stage / f.name)
            fsync_dir(stage)
            name_dir = self.artifacts_dir / local.name
            name_dir.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(stage, name_dir / str(local.version))
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            fsync_dir(name_dir)
            return True
        finally:
            remove_tree(stage)

    def _commit(self, stage: Path, env: Envelope) -> Envelope:
        name_dir = self.artifacts_dir / env.name
        name_dir.mkdir(parents=True, exist_ok=True)
        version = (self.versions(env.name) or [0])[-1] + 1
        while True:
            env = msgspec.structs.replace(env, version=version)
            write_atomic(stage / ENVELOPE, encode_envelope(env))
            fsync_dir(stage)
            try:
                os.rename(stage, name_dir / str(version))
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    version += 1
                    continue
                raise
            fsync_dir(name_dir)
            return read_envelope(self.paths(env.name, version))

    # -- what callers use instead of touching files, so that remote stores fit ------------
    @property
    def url(self) -> str:
        return str(self.root)

    def read_envelope(self, paths: ArtifactPaths) -> Envelope:
        return read_envelope(paths)

    def check(self, paths: ArtifactPaths):
        """Read-only health of one artifact (see :func:`ftstore.integrity.check`)."""
        from .integrity import check

        return check(paths)

    @contextlib.contextmanager
    def checkout(self, paths: ArtifactPaths, upload: bool = True) -> Iterator[ArtifactPaths]:
        """Local files of one artifact to check and repair in place; a remote store
        downloads them and (with ``upload``) uploads what changed on exit. Here they are
        the files themselves."""
        yield paths

    @contextlib.contextmanager
    def checkout_checked(self, paths: ArtifactPaths, health) -> Iterator[tuple[ArtifactPaths, object]]:
        """:meth:`checkout` plus the health of the checked-out files: ``health`` (already
        computed by :meth:`check`) when they are the very files it describes, a fresh check of
        a downloaded copy otherwise. Saves re-hashing a local artifact before repairing it."""
        from .integrity import check

        with self.checkout(paths) as local:
            yield local, (health if local == paths else check(local))

    def fetch_payload(self, paths: ArtifactPaths, dest: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        """Copy the payload to a new file ``dest``; returns (BLAKE3, size) of what was written."""
        return copy_hashing(paths.payload, dest, progress=progress)

    def stored_bytes(self, paths: ArtifactPaths) -> int:
        return sum(p.stat().st_size for p in (paths.payload, paths.sidecar) if p.exists())

    def location(self, paths: ArtifactPaths) -> dict[str, str]:
        return {"dir": str(paths.dir), "payload": str(paths.payload), "sidecar": str(paths.sidecar),
                "envelope": str(paths.envelope)}

    def orphans(self) -> list[tuple[str, str]]:
        """(path relative to the store, reason) of everything that belongs to no artifact."""
        out: list[tuple[Path, str]] = []
        for folder, why in ((self.staging_dir, "interrupted save (staging)"), (self.root / "trash", "interrupted delete (trash)")):
            if folder.is_dir():
                out += [(p, why) for p in sorted(folder.iterdir())]
        if self.artifacts_dir.is_dir():
            for name_dir in sorted(self.artifacts_dir.iterdir()):
                if not name_dir.is_dir() or not NAME_RE.match(name_dir.name):
                    out.append((name_dir, "not an artifact name"))
                    continue
                for vdir in sorted(name_dir.iterdir()):
                    if not (vdir.is_dir() and vdir.name.isdigit() and int(vdir.name) > 0):
                        out.append((vdir, "interrupted write" if TMP_MARK in vdir.name else "not a version directory"))
                        continue
                    for f in sorted(vdir.iterdir()):
                        if f.name not in (PAYLOAD, SIDECAR, ENVELOPE):
                            out.append((f, "interrupted write" if TMP_MARK in f.name else "stray file"))
        return [(str(p.relative_to(self.root)), why) for p, why in out]

    def remove_orphan(self, relative: str) -> bool:
        p = self.root / relative
        if p.is_dir():
            remove_tree(p)
        else:
            p.unlink(missing_ok=True)
        return not p.exists()

    def write_report(self, name: str, data: bytes) -> None:
        self.reports_dir.mkdir(exist_ok=True)
        write_atomic(self.reports_dir / name, data)

    def delete(self, name: str, version: int) -> None:
        """Remove one artifact version atomically: its folder is renamed out of
        ``artifacts/`` (the moment it stops existing as an artifact), then erased."""
        paths = self.resolve(Ref(name, version))
        trash = self.root / "trash" / uuid.uuid4().hex
        trash.parent.mkdir(exist_ok=True)
        os.rename(paths.dir, trash)
        fsync_dir(paths.dir.parent)
        remove_tree(trash)


def raptorq_section(info) -> RaptorQSection:
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


def envelope_from(ess: ArtifactEssentials, version: int, rq: RaptorQSection | None, **extra) -> Envelope:
    return Envelope(
        artifact_id=ess.artifact_id,
        artifact_type=ess.artifact_type,
        name=ess.name,
        version=version,
        size=ess.size,
        source_hash=ess.source_hash,
        created_unix_ms=ess.created_unix_ms,
        metadata=dict(ess.metadata),
        raptorq=rq,
        **extra,
    )


def essentials_of(env: Envelope) -> ArtifactEssentials:
    return ArtifactEssentials(
        artifact_id=env.artifact_id,
        artifact_type=env.artifact_type,
        name=env.name,
        size=env.size,
        source_hash=env.source_hash,
        created_unix_ms=env.created_unix_ms,
        metadata=dict(env.metadata),
    )


__all__ = ["ArtifactPaths", "FtstoreError", "Ref", "Store", "parse_ref", "read_envelope", "write_envelope"]
