"""A store on S3-compatible object storage: ``s3://bucket/prefix``.

Same layout as a local store, as object keys under the prefix. Endpoint, credentials and
region come from the usual AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) through boto3.

Commit protocol, safe without rename: (1) claim ``artifacts/<name>/<v>/claim`` with a
conditional PUT (``If-None-Match: *``); a writer that loses takes ``v+1``, so concurrent
writers never share a version; (2) upload payload and sidecar (multipart, bounded memory);
(3) PUT ``envelope.json`` — the commit point; (4) PUT ``committed`` — marks the version as
committed even if its envelope is later lost. A version with neither envelope nor marker
is an interrupted save (an orphan). The store refuses servers that ignore conditional PUTs.

Plain verification streams each object through BLAKE3 without a temporary copy; repair,
deep scrubs and protection work on a local checkout of one artifact and upload what
changed, payload and sidecar first, the envelope last.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..envelopes import Envelope, decode_envelope
from ..envelopes.codec import MAX_ENVELOPE_BYTES
from ..envelopes.strictjson import loads_unique
from ..errors import BadInputError, EnvelopeError, NotFoundError, StorageFullError
from ..hashing import CHUNK, format_hash, new_hasher
from ..store import ENVELOPE, MARKER, NAME_RE, PAYLOAD, SIDECAR, ArtifactPaths, Store, encode_envelope
from .local import remove_tree

CLAIM, COMMITTED = "claim", "committed"
KNOWN = {PAYLOAD, SIDECAR, ENVELOPE, CLAIM, COMMITTED}


def _client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise BadInputError("s3:// stores need boto3: pip install 'ftstore[s3]'") from None
    return boto3.client("s3", config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60))


class S3Store(Store):
    remote = True

    def __init__(self, url: str, bucket: str, prefix: str, client: Any):
        super().__init__(Path(tempfile.gettempdir()))
        self._url, self.bucket, self.prefix, self.s3 = url, bucket, prefix, client

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open_url(cls, url: str, create: bool = False) -> S3Store:
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise BadInputError(f"{url}: expected s3://bucket/prefix")
        prefix = prefix.strip("/")
        store = cls(url.rstrip("/"), bucket, (prefix + "/") if prefix else "", _client())
        store._ensure(create)
        return store

    def _ensure(self, create: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            try:
                self.s3.head_bucket(Bucket=self.bucket)
            except ClientError as e:
                if not create or _code(e) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                self.s3.create_bucket(Bucket=self.bucket)
            marker = self._get(MARKER)
            if marker is None:
                if not create:
                    raise NotFoundError(f"no ftstore store at {self._url} (save something first)")
                self._probe_conditional_writes()
                self._put_if_absent(MARKER, json.dumps({"format": "ftstore-store", "version": 1}).encode() + b"\n")
            elif loads_unique(marker, MARKER) != {"format": "ftstore-store", "version": 1}:
                raise BadInputError(f"{self._url}/{MARKER}: not a store marker this ftstore understands")
        except (ClientError, BotoCoreError) as e:
            raise BadInputError(f"{self._url}: object storage error: {e}") from None
        except ValueError:
            raise BadInputError(f"{self._url}/{MARKER}: not a store marker this ftstore understands") from None

    def _probe_conditional_writes(self) -> None:
        key = f".ftstore-probe-{uuid.uuid4().hex}"
        self._put_if_absent(key, b"1")
        try:
            if self._put_if_absent(key, b"2"):
                raise BadInputError(
                    f"{self._url}: the server ignores conditional PUTs (If-None-Match); ftstore needs them "
                    "so that concurrent writers never lose a version"
                )
        finally:
            self._delete(key)

    # -- object primitives ------------------------------------------------------------
    def _key(self, rel: str) -> str:
        return self.prefix + rel

    def _get(self, rel: str, limit: int = MAX_ENVELOPE_BYTES) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        if obj["ContentLength"] > limit:
            raise BadInputError(f"{self._url}/{rel}: {obj['ContentLength']} bytes, over the {limit} byte limit")
        return obj["Body"].read()

    def _put(self, rel: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data)

    def _put_if_absent(self, rel: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, IfNoneMatch="*")
            return True
        except ClientError as e:
            if _code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise

    def _upload(self, rel: str, src: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        self.s3.upload_file(str(src), self.bucket, self._key(rel),
                            Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4))

    def _body(self, rel: str):
        """The streaming body of an object, or None if it does not exist."""
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(rel))["Body"]
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def _download(self, rel: str, dest: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int] | None:
        """Stream an object into a new file ``dest`` while hashing it; None if absent."""
        body = self._body(rel)
        if body is None:
            return None
        h, total = new_hasher(), 0
        with open(dest, "xb") as f:
            for chunk in body.iter_chunks(CHUNK):
                h.update(chunk)
                f.write(chunk)
                total += len(chunk)
                if progress:
                    progress(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        return format_hash(h.digest()), total

    def _hash_object(self, rel: str) -> tuple[str, int] | None:
        """BLAKE3 and size of an object, streamed: no temporary copy."""
        body = self._body(rel)
        if body is None:
            return None
        h, total = new_hasher(), 0
        for chunk in body.iter_chunks(CHUNK):
            h.update(chunk)
            total += len(chunk)
        return format_hash(h.digest()), total

    def _delete(self, rel: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(rel))

    def _list(self, rel_prefix: str) -> Iterator[tuple[str, int]]:
        """(key relative to the store, size) of every object under ``rel_prefix``."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(rel_prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix) :], obj["Size"]

    # -- layout -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._url

    def _vkey(self, name: str, version: int, leaf: str = "") -> str:
        return f"artifacts/{name}/{version}/{leaf}"

    def _tree(self, name: str | None = None) -> dict[tuple[str, int], dict[str, int]]:
        """{(name, version): {leaf: size}} for well-formed keys under artifacts/."""
        out: dict[tuple[str, int], dict[str, int]] = {}
        for key, size in self._list(f"artifacts/{name}/" if name else "artifacts/"):
            parts = key.split("/")
            if len(parts) == 4 and NAME_RE.match(parts[1]) and parts[2].isdigit() and int(parts[2]) > 0:
                out.setdefault((parts[1], int(parts[2])), {})[parts[3]] = size
        return out

    @staticmethod
    def _committed(leaves: dict[str, int]) -> bool:
        return ENVELOPE in leaves or COMMITTED in leaves

    def names(self) -> list[str]:
        return sorted({n for (n, _), leaves in self._tree().items() if self._committed(leaves)})

    def versions(self, name: str) -> list[int]:
        return sorted(v for (n, v), leaves in self._tree(name).items() if n == name and self._committed(leaves))

    def paths(self, name: str, version: int) -> ArtifactPaths:
        return ArtifactPaths(name, version, Path("/nonexistent-remote-artifact") / name / str(version))

    def location(self, paths: ArtifactPaths) -> dict[str, str]:
        base = f"{self._url}/{self._vkey(paths.name, paths.version)}"
        return {"dir": base, "payload": base + PAYLOAD, "sidecar": base + SIDECAR, "envelope": base + ENVELOPE}

    # -- reading ------------------------------------------------------------------------
    def read_envelope(self, paths: ArtifactPaths) -> Envelope:
        data = self._get(self._vkey(paths.name, paths.version, ENVELOPE))
        if data is None:
            raise EnvelopeError(f"{paths.ref}: envelope is missing")
        env = decode_envelope(data, source=f"{paths.ref}: {ENVELOPE}")
        if env.name != paths.name or env.version != paths.version:
            raise EnvelopeError(f"{paths.ref}: envelope names {env.name}@{env.version}, not its location")
        return env

    def check(self, paths: ArtifactPaths):
        """Streaming check from the envelope; without a readable envelope the sidecar's
        copy of it is needed, which is read from a local checkout."""
        from ..envelopes import chain_problems
        from ..integrity import Health, check
        from ..store import essentials_of

        h = Health(paths)
        try:
            h.envelope = self.read_envelope(paths)
        except EnvelopeError:
            with self.checkout(paths, upload=False) as local:
                return check(local)
        h.essentials = essentials_of(h.envelope)
        h.proof_problems = chain_problems(h.envelope.decode_proofs)
        rq = h.envelope.raptorq
        sidecar = self._hash_object(self._vkey(paths.name, paths.version, SIDECAR))
        if rq is None:
            h.pending_protection = True
            if sidecar is not None:
                h.sidecar_problem = f"{paths.ref}: sidecar present but the envelope records none"
        else:
            h.sidecar_problem = _problem(sidecar, rq.sidecar_size, rq.sidecar_hash, "sidecar", paths.ref)
        payload = self._hash_object(self._vkey(paths.name, paths.version, PAYLOAD))
        h.payload_problem = _problem(payload, h.envelope.size, h.envelope.source_hash, "payload", paths.ref)
        return h

    def stored_bytes(self, paths: ArtifactPaths) -> int:
        leaves = self._tree(paths.name).get((paths.name, paths.version), {})
        return leaves.get(PAYLOAD, 0) + leaves.get(SIDECAR, 0)

    def fetch_payload(self, paths: ArtifactPaths, dest: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        got = self._download(self._vkey(paths.name, paths.version, PAYLOAD), dest, progress)
        if got is None:
            raise NotFoundError(f"{paths.ref}: payload object is missing")
        return got

    @contextlib.contextmanager
    def checkout(self, paths: ArtifactPaths, upload: bool = True) -> Iterator[ArtifactPaths]:
        """Download the artifact's objects into a temporary folder laid out like a local
        artifact; on a clean exit upload the files that changed, the envelope last."""
        tmp = Path(tempfile.mkdtemp(prefix="ftstore-s3-"))
        local = ArtifactPaths(paths.name, paths.version, tmp)
        try:
            before = {
                leaf: self._download(self._vkey(paths.name, paths.version, leaf), tmp / leaf)
                for leaf in (PAYLOAD, SIDECAR, ENVELOPE)
            }
            yield local
            if upload:
                self._upload_changes(paths, local, before)
        finally:
            remove_tree(tmp)

    def _upload_changes(self, paths: ArtifactPaths, local: ArtifactPaths, before: dict) -> None:
        from ..hashing import hash_file

        for leaf in (PAYLOAD, SIDECAR, ENVELOPE):
            f = local.dir / leaf
            now = hash_file(f) if f.exists() else None
            if now == before[leaf]:
                continue
            key = self._vkey(paths.name, paths.version, leaf)
            if now is None:
                self._delete(key)
            elif leaf == ENVELOPE:
                self._put(key, f.read_bytes())
                self._put(self._vkey(paths.name, paths.version, COMMITTED), b"")
            else:
                self._upload(key, f)

    # -- writing ------------------------------------------------------------------------
    def _claim(self, name: str) -> int:
        """The next free version, taken with a conditional PUT: two writers never share one."""
        version = (self.versions(name) or [0])[-1] + 1
        while not self._put_if_absent(self._vkey(name, version, CLAIM), uuid.uuid4().hex.encode()):
            version += 1
        return version

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A local temporary folder: files built here are uploaded, never linked."""
        with tempfile.TemporaryDirectory(prefix="ftstore-s3-scratch-") as folder:
            yield Path(folder)

    def _store_new(self, src, template, overhead, jobs, progress, protect, move) -> Envelope:
        """Claim a version, stream the payload from the source to the bucket (hashing it on
        the way) while the sidecar is encoded locally, upload the sidecar, then commit with
        the envelope. A failure at any point leaves only a claimed, uncommitted version.
        (``move`` changes nothing here: the caller removes ``src`` after the commit.)"""
        from ..store import envelope_from, raptorq_section

        version = self._claim(template.name)
        stage = Path(tempfile.mkdtemp(prefix="ftstore-s3-stage-"))
        key = lambda leaf: self._vkey(template.name, version, leaf)  # noqa: E731
        try:
            copy = lambda also: self._upload_hashing(src, key(PAYLOAD), progress, also)  # noqa: E731
            essentials, info = self._copy_and_protect(src, stage, template, overhead, jobs, copy, protect)
            if info is not None:
                self._upload(key(SIDECAR), stage / SIDECAR)
            env = envelope_from(essentials, version, raptorq_section(info) if info else None)
            self._put(key(ENVELOPE), encode_envelope(env))
            self._put(key(COMMITTED), b"")
        finally:
            remove_tree(stage)
        return self.read_envelope(self.paths(template.name, version))

    def _upload_hashing(self, src: Path, key_rel: str, progress, also) -> tuple[str, int]:
        """Multipart upload read straight from ``src``; returns the BLAKE3 and size of exactly
        the bytes that were sent."""
        from boto3.s3.transfer import TransferConfig

        reader = _HashingReader(open(src, "rb"), progress, also)
        with reader:
            self.s3.upload_fileobj(reader, self.bucket, self._key(key_rel),
                                   Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4))
        return format_hash(reader.hasher.digest()), reader.total

    def import_files(self, local: ArtifactPaths) -> bool:
        """Commit existing artifact files as ``local.name@local.version`` (see ftstore copy)."""
        if not self._put_if_absent(self._vkey(local.name, local.version, CLAIM), uuid.uuid4().hex.encode()):
            return False
        for leaf in (PAYLOAD, SIDECAR):
            if (local.dir / leaf).exists():
                self._upload(self._vkey(local.name, local.version, leaf), local.dir / leaf)
        if local.envelope.exists():
            self._put(self._vkey(local.name, local.version, ENVELOPE), local.envelope.read_bytes())
        self._put(self._vkey(local.name, local.version, COMMITTED), b"")
        return True

    def delete(self, name: str, version: int) -> None:
        """The marker goes first, then the envelope (the moment the version stops being an
        artifact), then the data; a crash part way leaves an orphan, never half an artifact."""
        self.resolve(f"{name}@{version}")
        for leaf in (COMMITTED, ENVELOPE, PAYLOAD, SIDECAR, CLAIM):
            self._delete(self._vkey(name, version, leaf))

    def orphans(self) -> list[tuple[str, str]]:
        out = []
        tree: dict[str, dict[str, int]] = {}
        for key, _ in self._list("artifacts/"):
            parts = key.split("/")
            if len(parts) == 4 and NAME_RE.match(parts[1]) and parts[2].isdigit() and int(parts[2]) > 0:
                tree.setdefault("/".join(parts[:3]) + "/", {})[parts[3]] = 1
            else:
                out.append((key, "stray object"))
        for prefix, leaves in sorted(tree.items()):
            if not self._committed(leaves):
                out.append((prefix, "interrupted save (no envelope, not committed)"))
            out += [(prefix + leaf, "stray object") for leaf in sorted(leaves) if leaf not in KNOWN]
        return out

    def remove_orphan(self, relative: str) -> bool:
        keys = [k for k, _ in self._list(relative)] if relative.endswith("/") else [relative]
        for k in keys:
            self._delete(k)
        return True

    def write_report(self, name: str, data: bytes) -> None:
        self._put(f"reports/{name}", data)

    def save(self, *args, **kwargs) -> Envelope:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return super().save(*args, **kwargs)
        except (ClientError, BotoCoreError) as e:
            raise StorageFullError(f"object storage error while saving; nothing was committed ({e})") from None


class _HashingReader:
    """A read-only file object that hashes what the uploader reads, in order."""

    def __init__(self, f, progress, also):
        self.f, self.progress, self.also = f, progress, also
        self.hasher, self.total = new_hasher(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if data:
            self.hasher.update(data)
            if self.also:
                self.also(memoryview(data))
            self.total += len(data)
            if self.progress:
                self.progress(len(data))
        return data

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def _code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _problem(got: tuple[str, int] | None, size: int, digest: str, what: str, ref: str) -> str | None:
    if got is None:
        return f"{ref}: {what} is missing"
    if got == (digest, size):
        return None
    if got[1] != size:
        return f"{ref}: {what} is {got[1]} bytes, expected {size}"
    return f"{ref}: {what} BLAKE3 mismatch"


__all__ = ["S3Store"]
