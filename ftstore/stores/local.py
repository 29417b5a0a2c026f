"""A store in a local directory.

    <root>/ftstore-store.json               the store marker
    <root>/artifacts/<name>/<version>/      one committed artifact version
        payload                             the bytes the user gave, unchanged
        sidecar.ftrq                        repair sidecar
        envelope.json                       the envelope
    <root>/staging/<id>/                    a save in progress (an orphan once its owner died)
    <root>/staging/<id>.lock                held (flock) by the save's process while it runs
    <root>/trash/<id>/                      a version being deleted (an orphan if the delete died)
    <root>/reports/                         scrub reports

Commit: the leaves are written and fsynced in a staging folder, which is renamed to
``artifacts/<name>/<version>``. That rename is the commit point: it is atomic, it fails if
another writer took the version (the save then takes the next), and nothing outside
``artifacts/`` is ever shown as an artifact. A save holds an exclusive lock on its
staging folder's lock file until it has committed or cleaned up, so maintenance can tell a
save in progress (lock held) from a crashed one (lock free) and never removes the former.

Every leaf is opened without following symbolic links and must be a regular file, so a
link or a FIFO planted in a store is refused, never read through or written through.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ftstore.documents.names import ArtifactKey, is_name, version_of
from ftstore.durable import (
    TMP_MARK,
    copy_hashing,
    fsync_dir,
    fsync_file,
    remove_tree,
    replace_durably,
    tmp_path,
    try_link,
    write_atomic,
)
from ftstore.errors import BadInputError, NotFoundError
from ftstore.stores.backend import (
    ENVELOPE,
    LEAVES,
    MARKER,
    MARKER_BYTES,
    Capabilities,
    ChunkSink,
    Orphan,
    Progress,
    Staging,
    StoreBackend,
    VersionTakenError,
    check_marker,
)

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)


def open_regular(path: Path) -> BinaryIO | None:
    """Open ``path`` for reading if it is a regular file (not a link, FIFO, device or
    folder); None if it does not exist; :class:`BadInputError` for anything else. Opened
    non-blocking, so a FIFO cannot hang the open; the fstat then refuses it."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):
            raise BadInputError(f"{path}: is a symbolic link; store files are never followed") from None
        if e.errno == errno.EISDIR:
            raise BadInputError(f"{path}: is a directory, not a file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadInputError(f"{path}: is not a regular file")
    os.set_blocking(fd, True)
    return open(fd, "rb", buffering=0)


class _Lease:
    """An exclusive ``flock`` on ``<folder>.lock``, held while a save or scratch folder is
    in use. Its process dying releases it, which is how maintenance tells a crashed save
    from a running one."""

    def __init__(self, folder: Path):
        self.path = folder.with_name(folder.name + ".lock")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = -1


def _lease_is_free(folder: Path) -> bool:
    """True if no live process holds ``folder``'s lease (or it never had one)."""
    lock = folder.with_name(folder.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


class LocalStaging(Staging):
    def __init__(self, store: LocalStore, name: str, version: int | None):
        self.store, self.name, self.version = store, name, version
        self.workdir = store.staging_dir / uuid.uuid4().hex
        self.workdir.parent.mkdir(parents=True, exist_ok=True)
        self._lease = _Lease(self.workdir)
        try:
            self.workdir.mkdir()
        except BaseException:
            self._lease.release()
            raise

    def copy_in(self, leaf: str, src: Path, progress: Progress | None, sink: ChunkSink | None,
                durable: bool) -> tuple[str, int]:
        return copy_hashing(src, self.workdir / leaf, None, progress, sink, durable=durable)

    def link_in(self, leaf: str, src: Path) -> Path | None:
        return self.workdir / leaf if try_link(src, self.workdir / leaf) else None

    def sync(self, leaf: str) -> None:
        fsync_file(self.workdir / leaf)

    def add(self, leaf: str, path: Path) -> None:
        if path != self.workdir / leaf:
            os.replace(path, self.workdir / leaf)

    def commit(self, envelope_for: Callable[[int], bytes], version: int | None = None) -> int:
        name_dir = self.store.artifacts_dir / self.name
        name_dir.mkdir(parents=True, exist_ok=True)
        version = self.version or (self.store.versions(self.name) or [0])[-1] + 1
        while True:
            write_atomic(self.workdir / ENVELOPE, envelope_for(version))  # fsyncs the folder too
            try:
                os.rename(self.workdir, name_dir / str(version))
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                if self.version is not None:
                    raise VersionTakenError(f"{self.name}@{version} already exists in {self.store.url}") from None
                version += 1
                continue
            fsync_dir(name_dir)
            self._lease.release()
            return version

    def abort(self) -> None:
        remove_tree(self.workdir)
        self._lease.release()


class LocalStore(StoreBackend):
    capabilities = Capabilities(local_files=True, atomic_rename=True, hard_links=True,
                                conditional_writes=False, range_reads=True)

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    @classmethod
    def open(cls, location: str, create: bool = False) -> LocalStore:
        root = Path(location)
        marker = root / MARKER
        if not marker.exists():
            if not create:
                raise NotFoundError(f"no ftstore store at {root} (save something first, or pass --store)")
            if root.exists() and (not root.is_dir() or any(root.iterdir())):
                raise BadInputError(f"{root} exists, is not empty and is not an ftstore store")
            root.mkdir(parents=True, exist_ok=True)
            write_atomic(marker, MARKER_BYTES)
        else:
            with open_regular(marker) as f:  # type: ignore[union-attr]
                check_marker(f.read(4096), str(marker))
        return cls(root)

    # -- layout ----------------------------------------------------------------------------
    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    @property
    def trash_dir(self) -> Path:
        return self.root / "trash"

    def version_dir(self, key: ArtifactKey) -> Path:
        return self.artifacts_dir / key.name / str(key.version)

    @staticmethod
    def _subdirs(folder: Path) -> list[str]:
        """Names of the real folders (not links) in ``folder``."""
        try:
            with os.scandir(folder) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def names(self) -> list[str]:
        if self.artifacts_dir.is_symlink():
            return []
        return sorted(n for n in self._subdirs(self.artifacts_dir) if is_name(n) and self.versions(n))

    def versions(self, name: str) -> list[int]:
        if not is_name(name) or self.artifacts_dir.is_symlink() or (self.artifacts_dir / name).is_symlink():
            return []
        return sorted(v for d in self._subdirs(self.artifacts_dir / name) if (v := version_of(d)) is not None)

    # -- leaves ------------------------------------------------------------------------------
    def open_leaf(self, key: ArtifactKey, leaf: str) -> BinaryIO | None:
        return open_regular(self.version_dir(key) / leaf)

    def leaf_sizes(self, key: ArtifactKey) -> dict[str, int]:
        out = {}
        for leaf in LEAVES:
            with contextlib.suppress(OSError):
                st = os.stat(self.version_dir(key) / leaf, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    out[leaf] = st.st_size
        return out

    def read_leaf(self, key: ArtifactKey, leaf: str, limit: int) -> bytes | None:
        f = self.open_leaf(key, leaf)
        if f is None:
            return None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size > limit:
                raise BadInputError(f"{key.ref}: {leaf} is {size} bytes, over the {limit} byte limit")
            data = f.read(size + 1)
        if len(data) > limit:
            raise BadInputError(f"{key.ref}: {leaf} grew past the {limit} byte limit while being read")
        return data

    def write_leaf(self, key: ArtifactKey, leaf: str, data: bytes | Path) -> None:
        final = self.version_dir(key) / leaf
        if isinstance(data, bytes):
            write_atomic(final, data)
            return
        tmp = tmp_path(final)
        try:
            copy_hashing(data, tmp)
            replace_durably(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def delete_leaf(self, key: ArtifactKey, leaf: str) -> None:
        (self.version_dir(key) / leaf).unlink(missing_ok=True)

    def describe(self, key: ArtifactKey) -> dict[str, str]:
        d = self.version_dir(key)
        return {"dir": str(d), **{leaf.split(".")[0]: str(d / leaf) for leaf in LEAVES}}

    @contextlib.contextmanager
    def working_copy(self, key: ArtifactKey, writeback: bool = True) -> Iterator[Path]:
        """The version's own folder: checks and repairs work on the stored files in place."""
        yield self.version_dir(key)

    # -- saving ------------------------------------------------------------------------------
    def stage(self, name: str, version: int | None = None) -> LocalStaging:
        return LocalStaging(self, name, version)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private folder beside the store, on its filesystem, under a lease like a save's."""
        folder = self.staging_dir / f"scratch-{uuid.uuid4().hex}"
        folder.parent.mkdir(parents=True, exist_ok=True)
        lease = _Lease(folder)
        try:
            folder.mkdir()
            yield folder
        finally:
            remove_tree(folder)
            lease.release()

    # -- maintenance -------------------------------------------------------------------------
    def delete(self, key: ArtifactKey) -> None:
        """The version's folder is renamed out of ``artifacts/`` (the moment it stops being
        an artifact), then erased."""
        if key.version not in self.versions(key.name):
            raise NotFoundError(f"{key.name} has no version {key.version}")
        self.trash_dir.mkdir(exist_ok=True)
        trash = self.trash_dir / uuid.uuid4().hex
        os.rename(self.version_dir(key), trash)
        fsync_dir(self.artifacts_dir / key.name)
        remove_tree(trash)

    def orphans(self) -> list[Orphan]:
        out: list[tuple[Path, str]] = []
        if self.staging_dir.is_dir() and not self.staging_dir.is_symlink():
            for p in sorted(self.staging_dir.iterdir()):
                if not p.name.endswith(".lock"):
                    if _lease_is_free(p):
                        out.append((p, "interrupted save (staging)"))
                elif not os.path.lexists(p.with_suffix("")) and _lease_is_free(p.with_suffix("")):
                    out.append((p, "lock of an interrupted save"))
        if self.trash_dir.is_dir() and not self.trash_dir.is_symlink():
            out += [(p, "interrupted delete (trash)") for p in sorted(self.trash_dir.iterdir())]
        if self.artifacts_dir.is_dir() and not self.artifacts_dir.is_symlink():
            for name_dir in sorted(self.artifacts_dir.iterdir()):
                if name_dir.is_symlink() or not name_dir.is_dir() or not is_name(name_dir.name):
                    out.append((name_dir, "not an artifact name"))
                    continue
                for vdir in sorted(name_dir.iterdir()):
                    if vdir.is_symlink() or not vdir.is_dir() or version_of(vdir.name) is None:
                        out.append((vdir, "interrupted write" if TMP_MARK in vdir.name else "not a version directory"))
                        continue
                    for f in sorted(vdir.iterdir()):
                        if f.name not in LEAVES:
                            out.append((f, "interrupted write" if TMP_MARK in f.name else "stray file"))
        return [Orphan(str(p.relative_to(self.root)), why) for p, why in out]

    def remove_orphan(self, path: str) -> bool:
        """Remove one orphan without following links out of the store: a link is removed as
        a link; a staging folder only while no save holds its lease."""
        p = self.root / path
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise BadInputError(f"{path}: not a path inside the store")
        in_staging = p.parent == self.staging_dir and not p.name.endswith(".lock")
        if in_staging and not _lease_is_free(p):
            return False
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            remove_tree(p)
        if in_staging:  # its lease, free since its save died
            p.with_name(p.name + ".lock").unlink(missing_ok=True)
        return not os.path.lexists(p)

    def write_report(self, name: str, data: bytes) -> None:
        (self.root / "reports").mkdir(exist_ok=True)
        write_atomic(self.root / "reports" / name, data)


__all__ = ["LocalStaging", "LocalStore", "open_regular"]
