"""A PyTorch Lightning ``CheckpointIO`` under which Lightning works as with its own, while
every checkpoint is an ftstore artifact.

    store = Store.open("ckpts/.ftstore", create=True)   # on the checkpoint folder's filesystem
    trainer = L.Trainer(plugins=[FtstoreCheckpointIO(store)],
                        callbacks=[ModelCheckpoint(dirpath="ckpts", save_last=True)])
    trainer.fit(model, ckpt_path="last")                  # after a crash: resumes

Saving: ``torch.save`` writes the checkpoint straight into the store (hashed on the way, its
sidecar built then, or in the background with ``background=True``), then the file appears
at the path Lightning chose, atomically: a hard link to the stored payload, the same inode,
where the store is on that filesystem; a verified copy elsewhere (another filesystem, or a
remote ``dirpath`` fsspec knows). So Lightning's own file checks hold: ``ckpt_path="last"``
and ``"best"``, ``save_top_k`` pruning (removing a checkpoint removes its artifact too),
``save_last=True`` or ``"link"`` (a symbolic link Lightning makes is followed on load and
only unlinked on removal), ``LightningModule.load_from_checkpoint(path)`` and
``AsyncCheckpointIO(FtstoreCheckpointIO(store))``. Saving to a path again (``last.ckpt``)
supersedes the artifact's older versions (with ``background=True``, deleted in a worker
thread, but for those kept until the new one has its sidecar; ``teardown`` at the end of
``fit`` waits for it and for the sidecars, and drops them; ``AsyncCheckpointIO`` does not
tear down the plugin it wraps, so there :meth:`wait_until_finished` is the caller's).

Each path is one artifact, ``<prefix>-<file name>-<hash of the full path>``; its envelope
records the path, its folder, and the checkpoint's global step and epoch.

Loading (``trainer.fit(ckpt_path=...)``, or :meth:`open_checkpoint` for
``load_from_checkpoint``) reads the stored bytes once while verifying them, repairs them
first if damaged (in place: a linked file at the path is repaired with them), and only then
hands them to ``torch.load``, with Lightning's own ``weights_only`` and ``map_location``. A
checkpoint beyond repair falls back, with a warning, to the newest checkpoint of the same
folder at no later step that verifies. A file found at a path it was not saved under (the
folder moved or renamed) is recognised by its inode and verified the same way. Lightning
loads what is at the path, and so does this plugin, with a warning that ftstore does not
vouch for it, for a file it did not save, and for a checkpoint put there since the save
(a rollback, an edit in place: a whole ``torch.save`` archive written after the save, which
rot is not); such a checkpoint is then saved as that path's. An edit in place writes into
the stored payload itself (the same inode), so the checkpoint that was saved is gone (edit
a copy to keep it). Loading restarts the background protection that died with an earlier
run, for the newest checkpoints of the folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import re
import struct
import threading
import uuid
import warnings
import weakref
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import _load as lightning_load
from lightning.pytorch.plugins.io import CheckpointIO

from ftstore.api import Store
from ftstore.documents import ArtifactKey, is_name
from ftstore.durable import fitting_name, fsync_dir, try_link
from ftstore.hashing import hash_bytes
from ftstore.errors import BadInputError, DamageError, EnvelopeError, FtstoreError, NewerFormatError, NotFoundError
from ftstore.engine.integrity import PENDING_OVERHEAD_KEY
from ftstore.training.protection import BackgroundProtector, has_sidecar, kept_while_protecting

_BAD = re.compile(r"[^A-Za-z0-9._-]")
PATH_KEY, DIR_KEY = "lightning.path", "lightning.dir"
STEP_KEY, EPOCH_KEY = "lightning.global_step", "lightning.epoch"


@dataclass(frozen=True)
class _Target:
    """Where Lightning wants a checkpoint: a local path or an fsspec URL, with the canonical
    spelling the artifact is keyed by (symbolic links in its folder resolved)."""

    fs: Any
    path: str  # as the filesystem addresses it
    key: str  # canonical: an absolute real path, or a URL
    local: bool

    @property
    def folder_key(self) -> str:
        return self.key.rsplit("/", 1)[0] if not self.local else os.path.dirname(self.key)

    @classmethod
    def of(cls, path: str | os.PathLike, follow_link: bool = False) -> _Target:
        fs, stripped = fsspec.core.url_to_fs(str(path))
        if isinstance(fs, LocalFileSystem):
            p = os.path.abspath(stripped)
            key = os.path.realpath(p) if follow_link else os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
            return cls(fs, p, key, True)
        return cls(fs, stripped, fs.unstrip_protocol(stripped), False)

    def exists(self) -> bool:
        return os.path.lexists(self.path) if self.local else self.fs.exists(self.path)


class FtstoreCheckpointIO(CheckpointIO):
    def __init__(self, store: Store, prefix: str = "lightning", overhead: float = 0.10, background: bool = False,
                 fallback: bool = True):
        if not is_name(prefix) or len(prefix) > 32:
            raise BadInputError(f"invalid prefix {prefix!r}: up to 32 letters, digits, '.', '_' and '-'")
        self.store = store
        self.prefix = prefix
        self.overhead = overhead
        self.background = background
        self.fallback = fallback
        self._protector = BackgroundProtector(store.url)
        self._resumed = BackgroundProtector(store.url)  # an earlier run's checkpoints: failures only warn
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
        self._removed_early: set[str] = set()
        # threads that have saved (AsyncCheckpointIO's, or the trainer's); the objects, not
        # their idents, which a new thread often reuses
        self._savers: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._tidier: ThreadPoolExecutor | None = None
        self._tidy_jobs: list[Future] = []
        # per artifact, the newest version whose older, protected one is kept until it has
        # its own sidecar (see _drop_older)
        self._kept_until_protected: dict[str, ArtifactKey] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Picklable, as Lightning's own CheckpointIO is (``torch.save(trainer)``, spawned
        workers): the store travels as its URL; locks and running protectors stay here."""
        return {"store": self.store.url, "prefix": self.prefix, "overhead": self.overhead,
                "background": self.background, "fallback": self.fallback}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Store.open(state.pop("store")), **state)  # type: ignore[misc]

    # -- naming ---------------------------------------------------------------------------
    def artifact_name(self, path: str | os.PathLike) -> str:
        """The artifact that holds the checkpoint saved at ``path``."""
        return self._name(_Target.of(path).key)

    def _name(self, key: str) -> str:
        base = _BAD.sub("_", os.path.basename(key.rstrip("/")))[:64]
        return f"{self.prefix}-{base}-{hash_bytes(key.encode())[7:23]}"

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One operation at a time per artifact (``AsyncCheckpointIO`` saves in a thread)."""
        with self._locks_lock:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield

    # -- save ------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("`Trainer.save_checkpoint(..., storage_options=...)` is not supported by FtstoreCheckpointIO")
        with self._locks_lock:
            self._savers.add(threading.current_thread())
        target = _Target.of(path)
        name = self._name(target.key)
        meta = {PATH_KEY: target.key, DIR_KEY: target.folder_key}
        for key, field in ((STEP_KEY, "global_step"), (EPOCH_KEY, "epoch")):
            if isinstance(checkpoint.get(field), int):
                meta[key] = str(checkpoint[field])
        with self._locked(name):
            if name in self._removed_early:  # removed while this save waited in AsyncCheckpointIO's queue
                self._removed_early.discard(name)
                return
            env = self.store.save_written(lambda f: torch.save(checkpoint, f), name, meta, self.overhead,
                                          protect=not self.background)
            key = ArtifactKey(env.name, env.version)
            if self.background:
                self._protector.start(key, env.artifact_id)
            self._publish(key, target)
            if not self.background:
                self._drop_older(key)
        if self.background:  # off the critical path, as the sidecar is
            with self._locks_lock:
                if self._tidier is None:
                    self._tidier = ThreadPoolExecutor(1, thread_name_prefix="ftstore-lightning")
                self._tidy_jobs = [j for j in self._tidy_jobs if not j.done() or j.exception() is not None]
                self._tidy_jobs.append(self._tidier.submit(self._drop_older_locked, key))

    def _drop_older(self, key: ArtifactKey) -> None:
        """The path now holds ``key``: the versions it replaced go, but while ``key``'s
        sidecar is still to be built (background protection), in which one flipped byte is
        beyond repair: the newest replaced version that has a sidecar stays, for the
        fallback to find, and the oldest after it still being protected, whose protection
        is let finish (see :func:`kept_while_protecting`). They go once ``key`` is
        protected: at the next save to the path, or in :meth:`wait_until_finished`."""
        older = [v for v in self.store.versions(key.name) if v < key.version]
        spared: list[int] = []
        if older and not has_sidecar(self.store, key):
            running = {k.version for k in self._protector.pending() if k.name == key.name}  # before reading envelopes
            spared = kept_while_protecting(older, lambda v: has_sidecar(self.store, ArtifactKey(key.name, v)),
                                           lambda v: v in running)
        with self._locks_lock:
            if spared:
                self._kept_until_protected[key.name] = key
            elif self._kept_until_protected.get(key.name) == key:
                del self._kept_until_protected[key.name]
        for v in older:
            if v not in spared:
                self._delete(ArtifactKey(key.name, v))

    def _drop_older_locked(self, key: ArtifactKey) -> None:
        with self._locked(key.name):
            self._drop_older(key)

    def _publish(self, key: ArtifactKey, target: _Target) -> None:
        """Make the file at the target path the stored checkpoint, atomically."""
        target.fs.makedirs(os.path.dirname(target.path) if target.local else posixpath.dirname(target.path),
                           exist_ok=True)
        if not target.local:
            buf, _ = self.store.load_bytes(key)
            with target.fs.open(target.path, "wb") as f:
                f.write(buf.getbuffer())
            return
        tmp = Path(target.path).with_name(fitting_name(".", Path(target.path).name, f".ftstore-{uuid.uuid4().hex[:12]}"))
        try:
            payload = self.store.describe(key).get("payload") if self.store.capabilities.local_files else None
            if payload is None or not try_link(Path(payload), tmp):
                self.store.load(key, tmp)  # another filesystem: a copy, verified as it is written
            os.replace(tmp, target.path)
            fsync_dir(Path(target.path).parent)
        finally:
            tmp.unlink(missing_ok=True)

    # -- load ------------------------------------------------------------------------------
    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return lightning_load(self.open_checkpoint(path), map_location=map_location, weights_only=weights_only)

    def open_checkpoint(self, path: str | os.PathLike) -> io.BytesIO:
        """The checkpoint at ``path`` as Lightning would load it, verified wherever ftstore
        can vouch for it, as a stream for ``torch.load`` or
        ``LightningModule.load_from_checkpoint``:

        - the checkpoint ftstore saved there: verified, repaired first if damaged (the file
          at the path too, where it is the stored payload); beyond repair, the newest good
          one of its folder, with a warning; missing, the stored one, with a warning;
        - found by the file itself (the stored payload's inode) when the folder was moved or
          renamed since, so that the path no longer names it;
        - a checkpoint someone else put there since the save (:meth:`_put_there`: an edit in
          place, a rollback): loaded as Lightning would load it, with a warning, and saved as
          the path's checkpoint from then on. So is a file this plugin never saved, unsaved.

        Loading also restarts the protection that an earlier run's kill left unfinished, for
        the newest checkpoints of the folder (:meth:`_resume_protection`)."""
        target = _Target.of(path, follow_link=True)
        name = self._name(target.key)
        if not self.store.versions(name):
            name = self._stored_as(target)
            if name is None:
                if not target.fs.exists(target.path):
                    raise FileNotFoundError(f"Checkpoint file not found: {path}")
                warnings.warn(f"{path} was not saved through ftstore ({self.store.url}); it is loaded unverified",
                              stacklevel=3)
                return self._file_bytes(target)
        key = self._version_at(target, name)
        if (theirs := self._put_there(target, key)) is not None:
            return theirs
        self._resume_protection(name)
        try:
            buf, _ = self.store.load_bytes(key)
        except DamageError as e:
            if not self.fallback:
                raise
            return self._fall_back(target, name, e)
        if target.local and not os.path.lexists(target.path):
            warnings.warn(f"{target.path} is missing; loading the checkpoint stored for it", stacklevel=3)
        return buf

    @staticmethod
    def _file_bytes(target: _Target) -> io.BytesIO:
        with target.fs.open(target.path, "rb") as f:
            return io.BytesIO(f.read())

    def _payload_of(self, key: ArtifactKey | str) -> str | None:
        """The stored payload's path, where the store keeps local files."""
        if not self.store.capabilities.local_files:
            return None
        with contextlib.suppress(FtstoreError, OSError):
            return self.store.describe(key).get("payload")
        return None

    def _is_payload_of(self, key: ArtifactKey, found: os.stat_result) -> bool:
        """Whether ``found`` (a file's ``stat``) is ``key``'s stored payload: the same inode,
        as ftstore publishes a checkpoint (a hard link)."""
        payload = self._payload_of(key)
        try:
            return payload is not None and os.path.samestat(os.stat(payload), found)
        except OSError:
            return False

    @staticmethod
    def _stat(target: _Target) -> os.stat_result | None:
        """The local file at the path, or None (remote, or nothing there)."""
        try:
            return os.stat(target.path) if target.local else None
        except OSError:
            return None

    def _stored_as(self, target: _Target) -> str | None:
        """The artifact of this plugin whose stored payload the local file at the path is,
        whatever path it was saved under: the checkpoint folder was moved or renamed, or is
        mounted elsewhere."""
        if (found := self._stat(target)) is None or not self.store.capabilities.local_files:
            return None
        for name in self.store.names():
            if name.startswith(self.prefix + "-") and any(
                    self._is_payload_of(ArtifactKey(name, v), found) for v in self.store.versions(name)):
                return name
        return None

    def _version_at(self, target: _Target, name: str) -> ArtifactKey:
        """The version whose payload the file at the path is: an older one where a save was
        committed but killed before its file was put in place (Lightning never saw that save
        finish); otherwise the newest."""
        versions = self.store.versions(name)
        if len(versions) > 1 and (found := self._stat(target)) is not None:
            for v in versions[:-1]:
                if self._is_payload_of(ArtifactKey(name, v), found):
                    return ArtifactKey(name, v)
        return ArtifactKey(name, versions[-1])

    def _put_there(self, target: _Target, key: ArtifactKey) -> io.BytesIO | None:
        """The file at the path, where someone other than ftstore put a checkpoint there
        since the save: its bytes are not the stored checkpoint's, it was written after the
        save (another inode than the stored payload's, or a later modification time: rot
        leaves the time alone), and it is a whole ``torch.save`` archive (every zip member
        checks against its CRC: rot, zeros or garbage over a checkpoint do not). That is an
        edit in place, a rollback, a tool's rewrite: Lightning loads it, so this plugin does,
        with a warning, and saves it as the path's checkpoint (the stored one is what the
        file replaced; where the file was the stored payload, it is gone already). None
        otherwise: the stored checkpoint is loaded, verified, repaired if damaged."""
        linked = False
        try:
            env = self.store.read_envelope(key)
            if target.local:
                if (found := self._stat(target)) is None:
                    return None
                linked = self._is_payload_of(key, found)
                if linked and found.st_mtime_ns // 1_000_000 <= env.created_unix_ms:
                    return None  # not written since the save: rot, if anything, repaired as such
            data = self._file_bytes(target).getvalue()
        except (FtstoreError, OSError):
            return None
        if (hash_bytes(data), len(data)) == (env.source_hash, env.size):
            return None
        if not _whole_torch_archive(data):
            if target.local and not linked:
                warnings.warn(f"{target.path} is not the checkpoint ftstore saved there and not a whole checkpoint "
                              "(damaged); loading the stored one", stacklevel=4)
            return None
        warnings.warn(f"{target.path} is not the checkpoint ftstore saved there: another one was put there since "
                      f"(edited in place, or replaced); loading it as Lightning would, unverified, and keeping it "
                      f"as the checkpoint of that path", stacklevel=4)
        self._adopt(target, key, env, data)
        return io.BytesIO(data)

    def _adopt(self, target: _Target, key: ArtifactKey, env: Any, data: bytes) -> None:
        """Save ``data``, the checkpoint someone put at the path, as that path's newest
        version, published at the path and protected; the versions it replaced go. Where
        the store cannot take it (read-only, full) this only warns: the load goes on."""
        try:
            with self._locked(key.name):
                meta = {k: v for k, v in env.metadata.items() if k != PENDING_OVERHEAD_KEY}
                new = self.store.save_written(lambda f: f.write(data), key.name, meta, self.overhead,
                                              protect=not self.background)
                new_key = ArtifactKey(new.name, new.version)
                if self.background:
                    self._protector.start(new_key, new.artifact_id)
                self._publish(new_key, target)
                self._drop_older(new_key)
        except (FtstoreError, OSError) as e:
            warnings.warn(f"{target.path}: could not keep it in {self.store.url} ({e}); it stays unprotected",
                          stacklevel=5)

    RESUMED_PROTECTION = 2
    """Checkpoints of the folder (the newest by step) whose unfinished protection a load
    restarts, as a checkpoint manager's restore does; ``scrub --repair`` protects older ones."""

    def _resume_protection(self, name: str) -> None:
        """Start building the sidecars the newest checkpoints of ``name``'s folder still
        miss: their background protection died with an earlier run (killed with the job's
        processes, say), and nothing else would build them before a scrub. At most
        :attr:`RESUMED_PROTECTION` at once; ones already protected, or being protected here,
        are left alone. Their failures only warn (:meth:`wait_until_finished`), as does a
        failure here: the load goes on."""
        try:
            folder = self.store.read_envelope(name).metadata.get(DIR_KEY)
            running = set(self._protector.pending()) | set(self._resumed.pending())
            pending = []
            for other in self.store.names():
                if not other.startswith(self.prefix + "-"):
                    continue
                for v in self.store.versions(other):
                    key = ArtifactKey(other, v)
                    with contextlib.suppress(EnvelopeError, NewerFormatError, NotFoundError):
                        env = self.store.read_envelope(key)
                        if env.raptorq is None and env.metadata.get(DIR_KEY) == folder and key not in running:
                            pending.append((_newest_first(_int(env.metadata.get(STEP_KEY)), env.created_unix_ms),
                                            key, env))
            for _, key, env in sorted(pending, key=lambda p: p[0], reverse=True)[: self.RESUMED_PROTECTION]:
                self._resumed.start(key, env.artifact_id)
        except (FtstoreError, OSError) as e:
            warnings.warn(f"could not start protecting the unprotected checkpoints of {name}'s folder: {e}",
                          stacklevel=4)

    def _fall_back(self, target: _Target, damaged: str, error: DamageError) -> io.BytesIO:
        """The newest other checkpoint of the same folder, at no later step, that verifies."""
        newest = self.store.resolve(damaged)
        limit = self._step_of(newest)
        tried = []
        candidates = self._siblings(target.folder_key, damaged) + self._replaced(newest, target.path)
        candidates.sort(key=lambda t: _newest_first(t[0], t[1]), reverse=True)
        for step, _, ref, path in candidates:
            if limit is not None and step is not None and step > limit:
                continue
            try:
                buf, _ = self.store.load_bytes(ref)
            except DamageError as e:
                tried.append(f"{path}: {e}")
                continue
            what = f"{path}" if "@" not in ref else f"the checkpoint {path} held before ({ref})"
            warnings.warn(f"{target.path}: {error}; loading {what} (global step {step}), the newest checkpoint "
                          f"of its folder that verifies, instead", stacklevel=4)
            return buf
        raise DamageError(f"{error}; no other checkpoint of {target.folder_key} verifies"
                          + (f" ({'; '.join(tried)})" if tried else "")) from None

    def _siblings(self, folder_key: str, exclude: str) -> list[tuple[int | None, int, str, str]]:
        """(global step, created, artifact name, path) of this plugin's checkpoints in
        ``folder_key`` whose file still exists (:meth:`_fall_back` orders them)."""
        out = []
        for name in self.store.names():
            if not name.startswith(self.prefix + "-") or name == exclude:
                continue
            try:
                env = self.store.read_envelope(name)
            except (EnvelopeError, NewerFormatError, NotFoundError):
                continue
            meta = env.metadata
            if meta.get(DIR_KEY) != folder_key or PATH_KEY not in meta:
                continue
            if not _Target.of(meta[PATH_KEY]).exists():
                continue
            out.append((_int(meta.get(STEP_KEY)), env.created_unix_ms, name, meta[PATH_KEY]))
        return out

    def _replaced(self, newest: ArtifactKey, path: str) -> list[tuple[int | None, int, str, str]]:
        """(global step, created, ref, path) of the earlier versions of ``newest``'s path
        still stored: one is kept while the newest one's sidecar is being built (see
        :meth:`_drop_older`)."""
        out = []
        for v in self.store.versions(newest.name):
            if v < newest.version:
                with contextlib.suppress(EnvelopeError, NewerFormatError, NotFoundError):
                    env = self.store.read_envelope(ArtifactKey(newest.name, v))
                    out.append((_int(env.metadata.get(STEP_KEY)), env.created_unix_ms, f"{newest.name}@{v}", path))
        return out

    def _step_of(self, key: ArtifactKey) -> int | None:
        try:
            return _int(self.store.read_envelope(key).metadata.get(STEP_KEY))
        except (EnvelopeError, NewerFormatError):
            return None

    # -- remove ----------------------------------------------------------------------------
    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Remove the file at ``path`` and its artifact. A symbolic link (``save_last="link"``)
        is only unlinked: the checkpoint it points to is another path's. A path with nothing
        saved yet, while another thread that saves is alive, is one whose save
        ``AsyncCheckpointIO`` may still have queued: that save is dropped when it comes, so
        top-k pruning leaves no stray checkpoint behind."""
        target = _Target.of(path)
        if target.local and os.path.islink(target.path):
            os.unlink(target.path)
            return
        name = self._name(target.key)
        with self._locked(name):
            versions = self.store.versions(name)
            if not versions and not target.exists():
                if self._saves_may_be_queued():
                    self._removed_early.add(name)  # its save is still queued: it will not happen
                return
            if target.fs.exists(target.path):
                target.fs.rm(target.path, recursive=True)
            for v in versions:
                self._delete(ArtifactKey(name, v))

    def _saves_may_be_queued(self) -> bool:
        """Whether a save can still be waiting in ``AsyncCheckpointIO``'s queue: only while
        a thread other than this one that has saved is alive (its executor's thread, which
        ``AsyncCheckpointIO`` joins at every stage's end). Not with synchronous saving, nor
        between stages: there, a path with nothing saved was never going to be, and marking
        it would drop a later save to it (``OnExceptionCheckpoint`` removes its path at
        every teardown, and saves to it when a later run fails)."""
        me = threading.current_thread()
        with self._locks_lock:
            return any(t is not me and t.is_alive() for t in self._savers)

    def _delete(self, key: ArtifactKey) -> None:
        self._protector.cancel(key)
        self._resumed.cancel(key)
        try:
            self.store.delete(key)
        except NotFoundError:
            pass

    # -- lifecycle ---------------------------------------------------------------------------
    def wait_until_finished(self) -> None:
        """Block until every background sidecar started by this plugin is committed, and
        the versions that newer saves to the same paths replaced are deleted (all but one
        whose newer version's sidecar could not be built: see :meth:`_drop_older`)."""
        with self._locks_lock:
            jobs, self._tidy_jobs = self._tidy_jobs, []
        for job in jobs:
            job.result()
        try:
            self._resumed.wait()
        except DamageError as e:  # not this run's checkpoints: said, and left to a scrub to report
            warnings.warn(f"{e} (checkpoints an earlier run saved; `ftstore scrub` reports them)", stacklevel=3)
        self._protector.wait()
        with self._locks_lock:
            kept = list(self._kept_until_protected.values())
        for key in kept:  # protected now (or their sidecar failed: then the older one stays)
            with self._locked(key.name):
                if key.version in self.store.versions(key.name):
                    self._drop_older(key)

    def teardown(self) -> None:
        """At the end of ``fit``: background work is finished before it returns."""
        self.wait_until_finished()


_LOCAL_HEADER = struct.Struct("<4sHHHHHLLLHH")
_END_RECORD = struct.Struct("<4sHHHHLLH")
_ZIP64_END = struct.Struct("<4sQHHLLQQQQ")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")


def _whole_torch_archive(data: bytes) -> bool:
    """Whether ``data`` is a whole ``torch.save`` archive, as a writer leaves one: a zip
    whose every member checks against its CRC; whose every local header, and data
    descriptor, agrees with its entry in the central directory; and whose end records sit
    right after that directory and say so. What an edit writes is one. Rot, zeros or
    garbage written over a checkpoint are not: a CRC-32 misses a random change once in four
    billion, and the bytes no CRC covers are checked against their second copy, all but
    header padding and fields of the directory no reader uses, which change nothing
    ``torch.load`` reads."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
            if not infos or z.testzip() is not None:
                return False
            if not all(_local_copy_agrees(data, info) for info in infos):
                return False
            directory = sum(46 + len(i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437"))
                            + len(i.extra) + len(i.comment) for i in infos)
            return _end_records_agree(data, z.start_dir, directory, len(infos))
    except (zipfile.BadZipFile, struct.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError):
        return False


def _local_copy_agrees(data: bytes, info: zipfile.ZipInfo) -> bool:
    """The member's local header (and its data descriptor, if it has one) say what its
    central directory entry says."""
    sig, version, flags, method, time_, date, crc, _, _, name_len, extra_len = \
        _LOCAL_HEADER.unpack_from(data, info.header_offset)
    y, mo, d, h, mi, sec = info.date_time
    if (sig, version, flags, method, date, time_) != (b"PK\x03\x04", info.extract_version, info.flag_bits,
                                                      info.compress_type, (y - 1980) << 9 | mo << 5 | d,
                                                      h << 11 | mi << 5 | sec // 2):
        return False
    if not flags & 0x08:
        return crc == info.CRC
    at = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
    if data[at : at + 4] == b"PK\x07\x08":
        at += 4
    # 4-byte sizes, or 8-byte ones (zip64): either may be written
    return struct.unpack_from("<LLL", data, at) == (info.CRC, info.compress_size & 0xFFFFFFFF,
                                                    info.file_size & 0xFFFFFFFF) or \
        struct.unpack_from("<LQQ", data, at) == (info.CRC, info.compress_size, info.file_size)


def _end_records_agree(data: bytes, start: int, size: int, entries: int) -> bool:
    """The end record (after a zip64 end record and locator, where there is one) follows
    the central directory and gives its offset, size and entry count; nothing follows it."""
    end = start + size
    if data[end : end + 4] == b"PK\x06\x06":
        sig, _, _, _, _, _, here, total, size64, start64 = _ZIP64_END.unpack_from(data, end)
        if (here, total, size64, start64) != (entries, entries, size, start):
            return False
        locator = end + _ZIP64_END.size
        sig, _, where, _ = _ZIP64_LOCATOR.unpack_from(data, locator)
        if sig != b"PK\x06\x07" or where != end:
            return False
        end = locator + _ZIP64_LOCATOR.size
    sig, _, _, here, total, size32, start32, comment = _END_RECORD.unpack_from(data, end)
    return (sig == b"PK\x05\x06" and end + _END_RECORD.size + comment == len(data)
            and here in (entries, 0xFFFF) and total in (entries, 0xFFFF)
            and size32 in (size, 0xFFFFFFFF) and start32 in (start, 0xFFFFFFFF))


def _newest_first(step: int | None, created_ms: int) -> tuple[int, int]:
    """The key that orders checkpoints newest first (with ``reverse``): by global step, one
    without a step below every one with, then by the time it was saved."""
    return (step if step is not None else -1, created_ms)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None

