"""Saving a file as the next version of an artifact, on any backend.

The steps of the commit protocol, each a helper below: validate the request; open a
:class:`~ftstore.stores.backend.Staging`; bring the payload in (taken over by a link,
copied, or streamed) while its BLAKE3 is computed and its repair sidecar encoded; add the
sidecar; commit with the envelope, which is what makes the version exist. Any failure
aborts the staging: nothing is committed and nothing is left behind.

How the payload comes in depends on what the backend can do (its capabilities):

- taken over (``move`` on a backend with ``hard_links``, of a file with no other hard
  link): linked in, no bytes written; encoded while it is hashed; a write to it meanwhile is
  seen through ``stat`` and refused. A file with other links is copied instead (and its
  name removed): a write through another name would change the stored bytes.
- copied then encoded (``local_files``): copied into the staging folder first, then the
  private copy is encoded while the disk flushes it. What is encoded is what is stored,
  and the source is read once; a source written to during the copy is refused.
- streamed (everything else): uploaded from the source while encoder processes read the
  source too; the symbol hashes of what was sent must equal the encoder's.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from ftstore.codec import DEFAULT_OVERHEAD, MAX_OVERHEAD, MIN_OVERHEAD, SidecarBuild, SymbolHasher, check_header_fits
from ftstore.codec.encoder import PARALLEL_MIN_BYTES
from ftstore.codec.parallel import warm as warm_workers
from ftstore.documents import (
    ARTIFACT_TYPES,
    ZERO_HASH,
    ArtifactEssentials,
    Envelope,
    check_name,
    decode_envelope,
    encode_envelope,
    envelope_from,
)
from ftstore.documents.envelope import MetaKey, MetaValue
from ftstore.durable import FileState, disk_full, hash_durably, is_disk_full, watch
from ftstore.engine.integrity import pending_metadata, raptorq_section
from ftstore.errors import BadInputError
from ftstore.hashing import hash_file
from ftstore.stores.backend import PAYLOAD, SIDECAR, Progress, Staging, StoreBackend
from ftstore.stores.local import local_store_holding


def validated_request(src: str | os.PathLike, name: str, artifact_type: str, metadata: dict[str, str] | None,
                      overhead: float) -> tuple[Path, ArtifactEssentials]:
    """Everything about a save that can be refused before a byte is written; returns the
    source path and the artifact's essentials (its hash still unknown)."""
    src = Path(src)
    check_request(name, artifact_type, overhead)
    if not src.is_file():
        raise BadInputError(f"{src}: no such file" if not src.exists() else f"{src}: not a regular file")
    template = new_essentials(name, artifact_type, metadata, src.stat().st_size)
    check_header_fits(template, overhead)  # also when protection is left pending: no sidecar could be built later
    return src, template


def refuse_other_stores_file(src: Path) -> None:
    """A ``move`` must not take a file that lies inside a store (any store's committed
    payload, its marker): that artifact would be lost."""
    if (owner := local_store_holding(src)) is not None:
        raise BadInputError(f"{src} lies inside the ftstore store at {owner}; --move would take it away from there "
                            "(save it without --move to copy it)")


def check_request(name: str, artifact_type: str, overhead: float) -> None:
    """Refuse a bad name, artifact type or overhead."""
    check_name(name)
    if artifact_type not in ARTIFACT_TYPES:
        raise BadInputError(f"unknown artifact type {artifact_type!r} (one of: {', '.join(ARTIFACT_TYPES)})")
    if not (MIN_OVERHEAD <= overhead <= MAX_OVERHEAD):
        raise BadInputError(f"overhead {overhead} is outside {MIN_OVERHEAD}..{MAX_OVERHEAD}")


def new_essentials(name: str, artifact_type: str, metadata: dict[str, str] | None, size: int) -> ArtifactEssentials:
    """The essentials of a new version of ``size`` bytes, its hash still unknown; refuses
    invalid metadata."""
    try:
        metadata = msgspec.convert(dict(metadata or {}), dict[MetaKey, MetaValue])
    except msgspec.ValidationError as e:
        raise BadInputError(f"invalid metadata: {e}") from None
    for k, v in metadata.items():
        for text in (k, v):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # bytes that were not UTF-8 on a command line come as surrogates
                raise BadInputError(f"invalid metadata {k!r}: not valid UTF-8 text") from None
    return ArtifactEssentials(
        artifact_id=uuid.uuid4().hex,
        artifact_type=artifact_type,  # type: ignore[arg-type]
        name=name,
        size=size,
        source_hash=ZERO_HASH,
        created_unix_ms=int(time.time() * 1000),
        metadata=metadata,
    )


def save(
    store: StoreBackend,
    src: str | os.PathLike,
    name: str,
    artifact_type: str = "file",
    metadata: dict[str, str] | None = None,
    overhead: float = DEFAULT_OVERHEAD,
    jobs: int | None = None,
    progress: Progress | None = None,
    protect: bool = True,
    move: bool = False,
) -> Envelope:
    """Store ``src`` as the next version of ``name``. ``protect=False`` commits without a
    sidecar (``raptorq: null``, protection pending; ``scrub --repair`` or the background
    protector adds it). ``move=True`` takes ``src`` over: it is removed once the commit is
    durable, and stays where it was if the save fails, or if another file was put at its
    name meanwhile (a trainer publishing its next ``last.ckpt``): only the file saved is
    ever removed."""
    if not protect:
        metadata = pending_metadata(metadata, overhead)
    src, template = validated_request(src, name, artifact_type, metadata, overhead)
    if move and store.holds(src):
        raise BadInputError(f"{src} is one of the store's own files; --move would take it away from {store.url}")
    if move:
        refuse_other_stores_file(src)
    taken = _identity(src) if move else None
    if protect and template.size >= PARALLEL_MIN_BYTES:
        warm_workers(jobs)  # started while the files are opened and the copy begins
    env = commit_staged(store, name, lambda staging: _bring_in(store, staging, src, template, overhead, jobs,
                                                               progress, protect, move))
    if taken is not None and _identity(src) == taken:
        src.unlink(missing_ok=True)
    return env


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at ``path`` itself, or None if there is none."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


BringIn = Callable[[Staging], "tuple[ArtifactEssentials, SidecarBuild | None]"]


def commit_staged(store: StoreBackend, name: str, bring_in: BringIn) -> Envelope:
    """Open a staging for the next version of ``name``, let ``bring_in`` put the payload
    (and encode the sidecar) there, and commit with the envelope; any failure aborts the
    staging, so nothing is committed and nothing is left behind."""
    staging = store.stage(name)
    written = b""
    try:
        essentials, build = bring_in(staging)
        info = build.finish(essentials) if build is not None else None
        if info is not None:
            staging.add(SIDECAR, staging.workdir / SIDECAR)

        def envelope_for(v: int) -> bytes:
            """The envelope of version ``v``; the sidecar is bound to ``v`` first, if another
            writer took the version it was made for."""
            nonlocal info, written
            if build is not None and v != build.version:
                info = build.finish(essentials, v)
            section = raptorq_section(info) if info is not None else None
            written = encode_envelope(envelope_from(essentials, v, section))
            return written

        version = staging.commit(envelope_for)
    except OSError as e:
        staging.abort()
        if is_disk_full(e):
            raise disk_full(e, f"saving {name}") from None
        raise
    except BaseException:
        staging.abort()
        raise
    # what this save committed, not what is at its number now (deleted meanwhile, perhaps)
    return decode_envelope(written, f"{name}@{version}")


def _bring_in(store: StoreBackend, staging: Staging, src: Path, template: ArtifactEssentials, overhead: float,
              jobs: int | None, progress: Progress | None, protect: bool,
              move: bool) -> tuple[ArtifactEssentials, SidecarBuild | None]:
    """Put the payload in ``staging`` and encode its sidecar there, by the strategy the
    backend's capabilities allow. Returns the essentials (hash known) and the encoded
    sidecar, to finish once the version is known."""
    if (move and store.capabilities.hard_links and os.stat(src).st_nlink == 1
            and (taken := staging.link_in(PAYLOAD, src)) is not None):
        return _taken_over(staging, taken, template, overhead, jobs, progress, protect)
    if store.capabilities.local_files:
        return _copied_then_encoded(staging, src, template, overhead, jobs, progress, protect)
    return _streamed(staging, src, template, overhead, jobs, progress, protect)


def _refuse_changed(src: Path) -> BadInputError:
    return BadInputError(f"{src} changed while it was being saved; nothing was stored")


def _taken_over(staging: Staging, stored: Path, template: ArtifactEssentials, overhead: float, jobs: int | None,
                progress: Progress | None, protect: bool) -> tuple[ArtifactEssentials, SidecarBuild | None]:
    """The stored file *is* the source: hash it (durably) while the encoder reads it; a
    write to it since before the first read is seen through ``stat``, or, where timestamps
    cannot tell, by comparing the symbol hashes of both reads."""
    state = watch(stored)
    if not protect:
        digest, size = hash_durably(stored, progress)
        if size != template.size or (state is not None and FileState.of(stored) != state):
            raise _refuse_changed(stored)
        return msgspec.structs.replace(template, source_hash=digest), None
    build = SidecarBuild(staging.workdir / SIDECAR, template, overhead, version=staging.expected_version())
    symbols = SymbolHasher(build.layout.symbol_size) if state is None else None
    with ThreadPoolExecutor(1) as ex:
        hashed = ex.submit(hash_durably, stored, progress, symbols, True)
        encoded = build.encode(stored, jobs)
        digest, size = hashed.result()
    same = FileState.of(stored) == state if state is not None else symbols.table() == encoded  # type: ignore[union-attr]
    if size != template.size or not same:
        raise _refuse_changed(stored)
    essentials = msgspec.structs.replace(template, source_hash=digest)
    return essentials, build


def _copied_then_encoded(staging: Staging, src: Path, template: ArtifactEssentials, overhead: float,
                         jobs: int | None, progress: Progress | None,
                         protect: bool) -> tuple[ArtifactEssentials, SidecarBuild | None]:
    """Copy into the staging folder, then encode the private copy while the disk flushes
    it: on two cores this beats encoding the source alongside the copy by a third. The
    copy's source-symbol hashes are taken as it is read back for its BLAKE3, by the thread
    that waits on the kernel's copy most of the time, so the encoders only encode."""
    before = watch(src)
    build = SidecarBuild(staging.workdir / SIDECAR, template, overhead, version=staging.expected_version()) \
        if protect else None
    symbols = SymbolHasher(build.layout.symbol_size) if build is not None else None
    digest, size = staging.copy_in(PAYLOAD, src, progress, symbols, durable=not protect)
    if size != template.size or (FileState.of(src) != before if before is not None else hash_file(src)[0] != digest):
        raise _refuse_changed(src)
    essentials = msgspec.structs.replace(template, source_hash=digest)
    if build is None or symbols is None:
        return essentials, None
    return essentials, _encode_flushing(build, staging, jobs, lambda: staging.sync(PAYLOAD), symbols.table())


def encode_staged(staging: Staging, essentials: ArtifactEssentials, overhead: float, jobs: int | None,
                  flush: Callable[[], object]) -> SidecarBuild:
    """Encode the sidecar of the payload in the staging folder while ``flush`` makes it
    durable (or sends it on), so the encoder reads it back from the page cache. The build
    is finished (bound to its version) at the commit."""
    build = SidecarBuild(staging.workdir / SIDECAR, essentials, overhead, version=staging.expected_version())
    return _encode_flushing(build, staging, jobs, flush, None)


def _encode_flushing(build: SidecarBuild, staging: Staging, jobs: int | None, flush: Callable[[], object],
                     source_table: bytes | None) -> SidecarBuild:
    """``build`` encoded from the staged payload while ``flush`` runs; ``source_table``: the
    payload's source-symbol hashes, where the caller took them while writing it."""
    with ThreadPoolExecutor(1) as ex:
        flushed = ex.submit(flush)
        build.encode(staging.workdir / PAYLOAD, jobs, source_table)
        flushed.result()
    return build


def _streamed(staging: Staging, src: Path, template: ArtifactEssentials, overhead: float, jobs: int | None,
              progress: Progress | None, protect: bool) -> tuple[ArtifactEssentials, SidecarBuild | None]:
    """Send the source to the backend (hashing what is sent) while encoder processes read
    it; the symbol table of the bytes sent must equal the encoder's, which proves the
    stored copy is exactly what was encoded."""
    if not protect:
        digest, size = staging.copy_in(PAYLOAD, src, progress, None, durable=True)
        if size != template.size:
            raise _refuse_changed(src)
        return msgspec.structs.replace(template, source_hash=digest), None
    build = SidecarBuild(staging.workdir / SIDECAR, template, overhead, version=staging.expected_version())
    symbols = SymbolHasher(build.layout.symbol_size)
    with ThreadPoolExecutor(1) as ex:
        sent = ex.submit(staging.copy_in, PAYLOAD, src, progress, symbols, True)
        encoded = build.encode(src, jobs)
        digest, size = sent.result()
    if size != template.size or symbols.table() != encoded:
        raise _refuse_changed(src)
    essentials = msgspec.structs.replace(template, source_hash=digest)
    return essentials, build


__all__ = ["check_request", "commit_staged", "encode_staged", "new_essentials", "save", "validated_request"]
