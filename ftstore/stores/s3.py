"""A store on S3-compatible object storage: ``s3://bucket/prefix``.

The same layout as a local store, as object keys under the prefix. Endpoint, credentials
and region come from the usual AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) through boto3.

Commit protocol, safe without rename: (1) claim ``artifacts/<name>/<v>/claim`` with a
conditional PUT (``If-None-Match: *``); a writer that loses takes ``v+1``, so concurrent
writers never share a version; (2) upload payload and sidecar (multipart, bounded memory);
(3) PUT ``envelope.json`` — the commit point; (4) PUT ``committed`` — marks the version as
committed even if its envelope is later lost. A claimed version with neither envelope nor
marker is a save in progress while its claim is younger than :data:`CLAIM_LEASE_SECONDS`,
and an interrupted save (an orphan) after that. The store refuses servers that ignore
conditional PUTs.

Delete, as on a local store: a version below a higher committed version or tombstone loses
all its objects, its claim last; the highest keeps its claim and gets ``deleted`` (the
moment it stops being an artifact) before its other objects go, so its number is never
claimed again: a tombstone. Unlike a local store's, tombstones stay (two empty objects
each): without a lock, dropping one could meet a copy that claimed its number meanwhile.

Every error the server or the network gives becomes a :class:`StoreUnreachableError`
(exit 2) with what the server said; only a server that reports it is out of space is a
:class:`StorageFullError`.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ftstore.documents.names import ArtifactKey, is_name, version_of
from ftstore.errors import BadInputError, NotFoundError, StorageError, StorageFullError, StoreUnreachableError
from ftstore.hashing import format_hash, new_hasher
from ftstore.stores.backend import (
    DELETED,
    ENVELOPE,
    LEAVES,
    MARKER,
    MARKER_BYTES,
    PAYLOAD,
    SIDECAR,
    Capabilities,
    ChunkSink,
    Orphan,
    Progress,
    TOP_FOLDERS,
    Staging,
    StoreBackend,
    VersionTakenError,
    check_marker,
)
from ftstore.tempdirs import HeldTempDir, held_temp_dir

CLAIM, COMMITTED = "claim", "committed"
KNOWN = {*LEAVES, CLAIM, COMMITTED}
_TOMBSTONE = {CLAIM, DELETED}
FOLDER_OBJECT = "folder object (a key ending in /, as an S3 console makes; no version's leaf)"
CLAIM_LEASE_SECONDS = 6 * 3600  # a save still uploading after this long is taken for dead
MAX_MARKER_BYTES = 4096
_MISSING = ("NoSuchKey", "404", "NotFound")
_SINGLE_PUT_BYTES = 5 << 30  # S3's limit for one PUT
_CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
_FULL = ("InsufficientStorage", "507", "QuotaExceeded", "XMinioStorageFull")
_PROBE = ".ftstore-probe-"
_DENIED = ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4)


def _client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise BadInputError("s3:// stores need boto3: pip install 'ftstore[s3]'") from None
    return boto3.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                            connect_timeout=5, read_timeout=60))


_UPLOAD_MARK = "?uploadId="
"""Between an object key and an upload id in the path of an orphan that is an interrupted
multipart upload (``artifacts/a/1/payload?uploadId=...``), as a URL names one."""


def _code(e: BaseException) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _storage_errors() -> tuple[type[BaseException], ...]:
    """The exceptions boto3 and the HTTP stack raise for a server or network failure."""
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError

    return (BotoCoreError, ClientError, HTTPError, ConnectionError, TimeoutError)


@contextlib.contextmanager
def _translated(url: str, doing: str) -> Iterator[None]:
    """Turn whatever the object store or the network raised into one documented error."""
    try:
        yield
    except _storage_errors() as e:
        if _code(e) in _FULL:
            raise StorageFullError(f"{url}: the object store is out of space while {doing}: {e}") from None
        hint = " (permission or credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)" if _code(e) in _DENIED else ""
        raise StoreUnreachableError(f"{url}: object storage error while {doing}: {e}{hint}") from None


class _Body(io.RawIOBase):
    """A streaming object body as a raw binary file (``readinto``), its errors translated."""

    def __init__(self, body: Any, url: str, key: str, length: int | None = None):
        self.body, self.url, self.key, self.length = body, url, key, length

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        with _translated(self.url, f"reading {self.key}"):
            data = self.body.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.body.close()
        super().close()


class _HashingReader:
    """A read-only file object that hashes what the uploader reads, in order."""

    def __init__(self, f: BinaryIO, progress: Progress | None, sink: ChunkSink | None):
        self.f, self.progress, self.sink = f, progress, sink
        self.hasher, self.total = new_hasher(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.hasher.update(data)
            if self.sink:
                self.sink(memoryview(data))
            self.total += len(data)
            if self.progress:
                self.progress(len(data))
        return data


class S3Staging(Staging):
    """A claimed version: leaves are uploaded to their final keys as they come; the
    envelope, put last, commits. The work folder is a local temporary folder."""

    def __init__(self, store: S3Store, name: str, version: int | None, owner: str | None = None):
        self.store, self.name = store, name
        self.version = store._claim(name, version, owner)
        self.uploaded: dict[str, int] = {}  # leaf -> size
        self.committed = False
        self._held = HeldTempDir("s3stage")
        self.workdir = self._held.path

    def expected_version(self) -> int:
        return self.version  # claimed: exactly this one

    def _rel(self, leaf: str) -> str:
        return self.store._vkey(ArtifactKey(self.name, self.version), leaf)

    def copy_in(self, leaf: str, src: Path, progress: Progress | None, sink: ChunkSink | None,
                durable: bool) -> tuple[str, int]:
        with open(src, "rb") as f, _translated(self.store.url, f"uploading {leaf}"):
            reader = _HashingReader(f, progress, sink)
            self.store.s3.upload_fileobj(reader, self.store.bucket, self.store._key(self._rel(leaf)),
                                         Config=_transfer_config())
        self.uploaded[leaf] = reader.total
        return format_hash(reader.hasher.digest()), reader.total

    def add(self, leaf: str, path: Path) -> None:
        self.store._upload(self._rel(leaf), path)
        self.uploaded[leaf] = path.stat().st_size

    def commit(self, envelope_for: Callable[[int], bytes], version: int | None = None) -> int:
        """Check that every uploaded leaf is still there, whole (maintenance that took this
        save for a dead one may have removed them), then put the envelope: the commit."""
        for leaf, size in self.uploaded.items():
            if self.store._size(self._rel(leaf)) != size:
                raise StorageError(f"{self.store.url}: {self._rel(leaf)} vanished before the commit (removed as an "
                                   "orphan?); nothing was committed")
        self.store._put(self._rel(ENVELOPE), envelope_for(self.version))  # the commit
        self.committed = True
        with contextlib.suppress(StorageError):  # a marker only: the envelope alone commits
            self.store._mark_committed(ArtifactKey(self.name, self.version))
        self._cleanup()
        return self.version

    def abort(self) -> None:
        """Remove what was uploaded, and the claim, unless the version is committed: by this
        staging (interrupted after its envelope went in, or during that request) or by
        another writer that took the claim over (a copy of the same artifact); a committed
        one gets its commit marker. Where the server cannot say, nothing is removed: what
        stays is an orphan once the claim's lease runs out."""
        try:
            if self.committed or self.store._size(self._rel(ENVELOPE)) is not None:
                self.store._mark_committed(ArtifactKey(self.name, self.version))  # the commit stands: finish it
            else:
                for leaf in (PAYLOAD, SIDECAR, CLAIM):
                    self.store._delete(self._rel(leaf))
        except StorageError:
            pass
        self._cleanup()

    def _cleanup(self) -> None:
        self._held.remove()


class S3Store(StoreBackend):
    capabilities = Capabilities(local_files=False, atomic_rename=False, hard_links=False,
                                conditional_writes=True, range_reads=True)

    def __init__(self, url: str, bucket: str, prefix: str, client: Any):
        self.url, self.bucket, self.prefix, self.s3 = url, bucket, prefix, client

    @classmethod
    def open(cls, location: str, create: bool = False) -> S3Store:
        rest = location[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise BadInputError(f"{location}: expected s3://bucket/prefix")
        prefix = prefix.strip("/")
        store = cls(location.rstrip("/"), bucket, (prefix + "/") if prefix else "", _client())
        with _translated(store.url, "opening the store"):
            store._ensure(create)
        return store

    def _ensure(self, create: bool) -> None:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            if not create or _code(e) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            self.s3.create_bucket(Bucket=self.bucket)
        marker = self._get(MARKER, MAX_MARKER_BYTES)
        if marker is None:
            if not create:
                raise NotFoundError(f"no ftstore store at {self.url} (save something first)")
            self._refuse_inside_a_store()
            if self._holds_anything() and (marker := self._get(MARKER, MAX_MARKER_BYTES)) is None:
                raise BadInputError(f"{self.url} holds objects and is not an ftstore store")
            if marker is None:
                self._probe_conditional_writes()
                self._put_if_absent(MARKER, MARKER_BYTES)
                marker = self._get(MARKER, MAX_MARKER_BYTES)  # ours, or a racing creator's
        if marker is not None:
            check_marker(marker, f"{self.url}/{MARKER}")

    def _refuse_inside_a_store(self) -> None:
        """As on a local store: a new store under another store's own folders (``copy S
        S/artifacts/backup``) would be that store's stray objects, removed by its next
        ``scrub --remove-orphans``. One HEAD for each such folder on the prefix's way."""
        parts = self.prefix.strip("/").split("/") if self.prefix else []
        for i, part in enumerate(parts):
            outer = "/".join(parts[:i])
            key = f"{outer}/{MARKER}" if outer else MARKER
            if part in TOP_FOLDERS and self._head_key(key) is not None:
                raise BadInputError(f"{self.url} is inside the store s3://{self.bucket}/{outer} ({part}/), whose "
                                    "maintenance would remove it; choose a prefix outside it")

    def _holds_anything(self) -> bool:
        """Whether any object but a creator's probe is under the prefix: a new store is made
        only where nothing is, as on a local disk (a store nested in it, say, would become
        its stray objects)."""
        return any(not rel.startswith(_PROBE) for rel, _, _ in self._list(""))

    def _probe_conditional_writes(self) -> None:
        key = f"{_PROBE}{uuid.uuid4().hex}"
        self._put_if_absent(key, b"1")
        try:
            if self._put_if_absent(key, b"2"):
                raise BadInputError(
                    f"{self.url}: the server ignores conditional PUTs (If-None-Match); ftstore needs them "
                    "so that concurrent writers never lose a version"
                )
        finally:
            self._delete(key)

    # -- object primitives (keys relative to the store) ------------------------------------
    def _key(self, rel: str) -> str:
        return self.prefix + rel

    def _vkey(self, key: ArtifactKey, leaf: str = "") -> str:
        return f"artifacts/{key.name}/{key.version}/{leaf}"

    def _object(self, rel: str) -> dict | None:
        from botocore.exceptions import ClientError

        with _translated(self.url, f"reading {rel}"):
            try:
                return self.s3.get_object(Bucket=self.bucket, Key=self._key(rel))
            except ClientError as e:
                if _code(e) in _MISSING:
                    return None
                raise

    def _get(self, rel: str, limit: int) -> bytes | None:
        obj = self._object(rel)
        if obj is None:
            return None
        with _Body(obj["Body"], self.url, rel) as body:
            if obj["ContentLength"] > limit:
                raise BadInputError(f"{self.url}/{rel}: {obj['ContentLength']} bytes, over the {limit} byte limit")
            data = body.read(obj["ContentLength"] + 1)
        if len(data) > limit:
            raise BadInputError(f"{self.url}/{rel}: over the {limit} byte limit")
        return data

    def _put(self, rel: str, data: bytes) -> None:
        with _translated(self.url, f"writing {rel}"):
            self.s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)

    def _put_if_absent(self, rel: str, data: bytes) -> bool:
        return self._put_if(rel, data, None)

    def _put_if(self, rel: str, body: bytes | BinaryIO, tag: str | None) -> bool:
        """PUT only if the object is still the one ``tag`` (an ETag) names, or, with None,
        only if there is none; False, writing nothing, where it is not."""
        from botocore.exceptions import ClientError

        condition = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        refused = (*_CONDITION_FAILED, *_MISSING) if tag is not None else _CONDITION_FAILED  # If-Match on none: 404
        with _translated(self.url, f"writing {rel}"):
            try:
                self.s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=body, **condition)
                return True
            except ClientError as e:
                if _code(e) in refused:
                    return False
                raise

    def _upload(self, rel: str, src: Path) -> None:
        with _translated(self.url, f"uploading {rel}"):
            self.s3.upload_file(str(src), self.bucket, self._key(rel), Config=_transfer_config())

    def _delete(self, rel: str) -> None:
        with _translated(self.url, f"deleting {rel}"):
            self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel))

    def _list(self, rel_prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key relative to the store, size, last-modified unix time) under ``rel_prefix``."""
        with _translated(self.url, "listing objects"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(rel_prefix))
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix):], obj["Size"], obj["LastModified"].timestamp()

    def _tree(self, name: str | None = None) -> dict[ArtifactKey, dict[str, tuple[int, float]]]:
        """{key: {leaf: (size, mtime)}} of well-formed keys under artifacts/."""
        out: dict[ArtifactKey, dict[str, tuple[int, float]]] = {}
        for rel, size, mtime in self._list(f"artifacts/{name}/" if name else "artifacts/"):
            parts = rel.split("/")
            if len(parts) == 4 and is_name(parts[1]) and (v := version_of(parts[2])) is not None:
                out.setdefault(ArtifactKey(parts[1], v), {})[parts[3]] = (size, mtime)
        return out

    @staticmethod
    def _committed(leaves: dict) -> bool:
        return (ENVELOPE in leaves or COMMITTED in leaves) and DELETED not in leaves

    # -- listing ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted({k.name for k, leaves in self._tree().items() if self._committed(leaves)})

    def versions(self, name: str) -> list[int]:
        if not is_name(name):
            return []
        return sorted(k.version for k, leaves in self._tree(name).items()
                      if k.name == name and self._committed(leaves))

    # -- leaves ----------------------------------------------------------------------------
    def open_leaf(self, key: ArtifactKey, leaf: str) -> BinaryIO | None:
        obj = self._object(self._vkey(key, leaf))
        if obj is None:
            return None
        body = _Body(obj["Body"], self.url, self._vkey(key, leaf), obj.get("ContentLength"))
        return io.BufferedReader(body, 1 << 20)  # type: ignore[return-value]

    def leaf_sizes(self, key: ArtifactKey) -> dict[str, int]:
        leaves = self._tree(key.name).get(key, {})
        return {leaf: size for leaf, (size, _) in leaves.items() if leaf in LEAVES}

    def read_leaf(self, key: ArtifactKey, leaf: str, limit: int) -> bytes | None:
        return self._get(self._vkey(key, leaf), limit)

    def write_leaf(self, key: ArtifactKey, leaf: str, data: bytes | Path) -> None:
        if isinstance(data, bytes):
            self._put(self._vkey(key, leaf), data)
        else:
            self._upload(self._vkey(key, leaf), data)
        if leaf == ENVELOPE:
            self._mark_committed(key)

    def _mark_committed(self, key: ArtifactKey) -> None:
        """Put the commit marker of a version whose envelope was just put: it keeps the
        version an artifact should the envelope be lost. A delete may have run meanwhile;
        one still running takes the marker back at its own last step, but one already done
        has left no envelope, payload or sidecar, and the marker alone would bring the
        version back as one without data: it is then taken back here. (An envelope lost on
        its own is what the marker is for: it stays.)"""
        self._put(self._vkey(key, COMMITTED), b"")
        there = self._own_leaves(self._vkey(key))
        if DELETED not in there and not there.keys() & {ENVELOPE, PAYLOAD, SIDECAR}:
            self._delete(self._vkey(key, COMMITTED))

    def _own_leaves(self, prefix: str) -> dict[str, float]:
        """{leaf: last-modified time} of the objects directly under a version's ``prefix``
        (``artifacts/<name>/<v>/``): not the prefix's own object (a folder object), nor
        anything deeper, whose last name a stray could make look like a leaf."""
        return {rel[len(prefix):]: mtime for rel, _, mtime in self._list(prefix)
                if rel != prefix and "/" not in rel[len(prefix):]}

    def leaf_tags(self, key: ArtifactKey) -> dict[str, str]:
        heads = {leaf: self._head(self._vkey(key, leaf)) for leaf in LEAVES}
        return {leaf: head["ETag"] for leaf, head in heads.items() if head is not None}

    def write_leaf_if(self, key: ArtifactKey, leaf: str, data: Path, tag: str | None) -> bool:
        """One conditional PUT (``If-Match`` the tag, or ``If-None-Match: *``): a version
        deleted meanwhile, or whose number a new save took, is never written over. After an
        envelope, the commit marker is put too, as :meth:`write_leaf` does: it keeps the
        version an artifact should its envelope be lost later."""
        if data.stat().st_size > _SINGLE_PUT_BYTES:  # past one PUT: multipart, checked just before only
            self._upload(self._vkey(key, leaf), data)
            return True
        with open(data, "rb") as body:
            if not self._put_if(self._vkey(key, leaf), body, tag):
                return False
        if leaf != ENVELOPE:
            return True
        leaves = self._own_leaves(self._vkey(key))
        if DELETED in leaves or (tag is None and COMMITTED not in leaves):
            # deleted while this envelope went in (an envelope rebuilt where none was is no
            # commit: the marker was what made the version one): take it back, never leave
            # an envelope without data behind
            self._withdraw_envelope(key, data.read_bytes())
            return False
        if COMMITTED not in leaves:
            self._mark_committed(key)
        return True

    def _withdraw_envelope(self, key: ArtifactKey, written: bytes) -> None:
        """Remove the envelope this process just put, if it is still the one there."""
        try:
            there = self._get(self._vkey(key, ENVELOPE), len(written))
        except BadInputError:  # longer than ours: another writer's
            return
        if there == written:
            self._delete(self._vkey(key, ENVELOPE))

    def delete_leaf(self, key: ArtifactKey, leaf: str) -> None:
        self._delete(self._vkey(key, leaf))

    def describe(self, key: ArtifactKey) -> dict[str, str]:
        base = f"{self.url}/{self._vkey(key)}"
        return {"dir": base, **{leaf.split(".")[0]: base + leaf for leaf in LEAVES}}

    # -- saving ----------------------------------------------------------------------------
    def _claim(self, name: str, version: int | None, owner: str | None = None) -> int:
        """Take a version with a conditional PUT: two writers never share one. With
        ``version``, exactly that one or :class:`VersionTakenError` -- unless the version is
        only claimed (not committed) by the same ``owner`` (the artifact id a copy brings):
        that is an interrupted copy of this very artifact, whose claim a re-run takes over."""
        if version is not None:
            key = ArtifactKey(name, version)
            body = (owner or uuid.uuid4().hex).encode()
            if not self._put_if_absent(self._vkey(key, CLAIM), body):
                leaves = self._tree(name).get(key, {})
                if DELETED in leaves:
                    raise VersionTakenError(f"{name}@{version} was deleted from {self.url}; a deleted version's "
                                            "number is not given to another artifact")
                if owner is None or self._committed(leaves) or self._get(self._vkey(key, CLAIM), 256) != body:
                    raise VersionTakenError(f"{name}@{version} already exists in {self.url}")
                self._put(self._vkey(key, CLAIM), body)  # taken over: a fresh lease
            return version
        v = max((k.version for k in self._tree(name) if k.name == name), default=0) + 1
        while not self._put_if_absent(self._vkey(ArtifactKey(name, v), CLAIM), uuid.uuid4().hex.encode()):
            v += 1
        return v

    def stage(self, name: str, version: int | None = None, owner: str | None = None) -> S3Staging:
        return S3Staging(self, name, version, owner)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A local temporary folder: files built here are uploaded, never linked."""
        with held_temp_dir("s3scratch") as folder:
            yield folder

    # -- maintenance -------------------------------------------------------------------------
    def delete(self, key: ArtifactKey) -> None:
        """Below a higher committed version or tombstone: the marker goes first, then the
        envelope (the moment the version stops being an artifact), then the data and the
        claim. The highest: its claim is made sure of, ``deleted`` put (the moment), then
        the rest goes but the claim. A crash part way leaves an orphan, never half an
        artifact."""
        tree = self._tree(key.name)
        if not self._committed(tree.get(key, {})):
            raise NotFoundError(f"{key.name} has no version {key.version}")
        if any(k.version > key.version and (self._committed(leaves) or DELETED in leaves)
               for k, leaves in tree.items()):
            # the marker again after the envelope: one a repair's write-back put meanwhile
            for leaf in (COMMITTED, ENVELOPE, PAYLOAD, SIDECAR, COMMITTED, CLAIM):
                self._delete(self._vkey(key, leaf))
            return
        self._put_if_absent(self._vkey(key, CLAIM), uuid.uuid4().hex.encode())  # a version copied in may lack one
        self._put(self._vkey(key, DELETED), b"")
        for leaf in (COMMITTED, ENVELOPE, PAYLOAD, SIDECAR):
            self._delete(self._vkey(key, leaf))

    def orphans(self) -> list[Orphan]:
        out = []
        tree: dict[str, dict[str, float]] = {}
        folder_objects = set()
        for rel, _, mtime in self._list("artifacts/"):
            parts = rel.split("/")
            if len(parts) == 4 and is_name(parts[1]) and version_of(parts[2]) is not None:
                if parts[3]:
                    tree.setdefault("/".join(parts[:3]) + "/", {})[parts[3]] = mtime
                else:  # the version's own prefix as an object (an S3 console's folder): no leaf
                    folder_objects.add(rel)
            else:  # deeper under a version's prefix, it still lies in that version
                out.append(Orphan(rel, FOLDER_OBJECT if rel.endswith("/") else "stray object", _version_of_path(parts)))
        now = time.time()
        for prefix, leaves in sorted(tree.items()):
            key = _version_of_path(prefix.split("/"))
            if DELETED in leaves:  # a tombstone: anything beside its claim
                out += [Orphan(prefix + leaf, "interrupted delete", key) for leaf in sorted(leaves) if leaf not in _TOMBSTONE]
                continue
            if not self._committed(leaves):
                if CLAIM in leaves and now - leaves[CLAIM] < CLAIM_LEASE_SECONDS:
                    continue  # a save in progress
                out.append(Orphan(prefix, "interrupted save (no envelope, not committed)", key))
                folder_objects.discard(prefix)  # removed with it
            out += [Orphan(prefix + leaf, "stray object", key) for leaf in sorted(leaves) if leaf not in KNOWN]
        out += [Orphan(rel, FOLDER_OBJECT, _version_of_path(rel.split("/"))) for rel in sorted(folder_objects)]
        out += [Orphan(f"{rel}{_UPLOAD_MARK}{upload}", "interrupted upload (its parts are kept, and billed, until "
                       "aborted)", _version_of_path(rel.split("/")))
                for rel, upload, started in self._uploads() if now - started >= CLAIM_LEASE_SECONDS]
        return out

    def _uploads(self, rel_prefix: str = "artifacts/") -> Iterator[tuple[str, str, float]]:
        """(key relative to the store, upload id, start time) of every multipart upload under
        ``rel_prefix`` never completed nor aborted: a save killed mid-upload leaves one, whose
        parts the server keeps (and bills) until it is aborted. (A stray object whose key
        holds ``?uploadId=`` is no upload: it is found in no such listing.)"""
        with _translated(self.url, "listing unfinished uploads"):
            pages = self.s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                             Prefix=self._key(rel_prefix))
            for page in pages:
                for up in page.get("Uploads", []):
                    yield up["Key"][len(self.prefix):], up["UploadId"], up["Initiated"].timestamp()

    def remove_orphan(self, path: str) -> bool:
        """Remove a stray object, or an interrupted save's objects (its claim last) -- after
        checking again that the save is not committed and its claim has not been renewed
        since :meth:`orphans` listed it -- or abort an interrupted multipart upload (one
        older than a save's lease: no live save still sends its parts)."""
        rel, _, upload = path.partition(_UPLOAD_MARK)
        if upload and any(u == upload for r, u, _ in self._uploads(rel) if r == rel):
            with _translated(self.url, f"aborting the upload of {rel}"):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self._key(rel), UploadId=upload)
            return True
        if not path.endswith("/"):
            self._delete(path)
            return True
        # a key ending in "/" is never a leaf: an object there is a folder object, removed as
        # it is; only a version's own prefix also names an interrupted save's objects
        removed = self._listed_exactly(path)
        if removed:
            self._delete(path)
        if _version_of_path(path.split("/")) is None or len(path.split("/")) != 4:
            return removed
        found = self._own_leaves(path)
        if self._committed(found) or DELETED in found or \
                (CLAIM in found and time.time() - found[CLAIM] < CLAIM_LEASE_SECONDS):
            return removed
        for leaf in sorted(found, key=lambda leaf: leaf == CLAIM):
            self._delete(path + leaf)
        return True

    def _listed_exactly(self, rel: str) -> bool:
        """Whether an object of exactly this key is listed: a HEAD cannot tell, since some
        servers (SeaweedFS) answer one for a key ending in ``/`` that only prefixes others.
        Such a key sorts first among those it prefixes, so one listed key is enough."""
        with _translated(self.url, "listing objects"):
            found = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self._key(rel), MaxKeys=1).get("Contents", [])
        return bool(found) and found[0]["Key"] == self._key(rel)

    def _size(self, rel: str) -> int | None:
        head = self._head(rel)
        return None if head is None else head["ContentLength"]

    def _head(self, rel: str) -> dict | None:
        return self._head_key(self._key(rel))

    def _head_key(self, key: str) -> dict | None:
        """HEAD of an object by its whole key (None if absent)."""
        from botocore.exceptions import ClientError

        with _translated(self.url, f"checking {key}"):
            try:
                return self.s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as e:
                if _code(e) in _MISSING:
                    return None
                raise

    def write_report(self, name: str, data: bytes) -> None:
        self._put(f"reports/{name}", data)


def _version_of_path(parts: list[str]) -> ArtifactKey | None:
    """The version an object key (split at ``/``) lies under: ``artifacts/<name>/<v>/...``."""
    if len(parts) >= 4 and parts[0] == "artifacts" and is_name(parts[1]):
        version = version_of(parts[2])
        if version is not None:
            return ArtifactKey(parts[1], version)
    return None


__all__ = ["CLAIM_LEASE_SECONDS", "S3Staging", "S3Store"]
