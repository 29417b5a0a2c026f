"""A store in a local directory.

    <root>/ftstore-store.json               the store marker
    <root>/artifacts/<name>/<version>/      one committed artifact version
        payload                             the bytes the user gave, unchanged
        sidecar.ftrq                        repair sidecar
        envelope.json                       the envelope
    <root>/artifacts/<name>/<version>/deleted   alone: a tombstone (the highest version
                                            deleted), whose number no save takes again
    <root>/staging/<id>/                    a save in progress (an orphan once its owner died)
    <root>/staging/<id>.lock                held (flock) by the save's process while it runs
    <root>/trash/<id>/                      a version being deleted (an orphan if the delete died)
    <root>/reports/                         scrub reports

Commit: the leaves are written and fsynced in a staging folder, which is renamed to
``artifacts/<name>/<version>``, under the name's lock (which deletes take too), the next
number listed again there. That rename is the commit point: it is atomic, it fails if
another writer took the version or a tombstone holds it (the save then takes the next), and
nothing outside ``artifacts/`` is ever shown as an artifact.

Delete: a version below another numbered folder of its name is renamed into ``trash`` and
erased there. The highest one instead becomes a tombstone where it is: ``deleted`` is
created in it (the moment it stops being an artifact), then its leaves are removed. So the
highest number of a name never goes down, and no save is ever given a number that named
another artifact: a repair of version ``v`` still writing by path can only meet ``v``
itself. Tombstones below the one just made are dropped: nothing turns a tombstone back
into an artifact, so each can only ever be removed. A save holds an exclusive lock on its
staging folder's lock file until it has committed or cleaned up, so maintenance can tell a
save in progress (lock held) from a crashed one (lock free) and never removes the former;
maintenance removes a dead save's folder only while holding that lock itself.

Nothing in a store is ever followed: every folder inside it (``artifacts``, a name, a
version, ``staging``, ``trash``, ``reports``) is walked one component at a time with
``O_NOFOLLOW`` descriptors, and every leaf is opened without following a link and only if
it is a regular file. A link planted anywhere is reported as an orphan and removed as a
link; a FIFO, device or folder where a leaf should be is a damaged leaf. No operation,
``scrub --remove-orphans`` and ``scrub --repair`` included, reads, writes or removes
anything outside the store's root.
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
    is_real_dir,
    open_dir,
    remove_entry,
    remove_tree,
    try_link,
    write_atomic,
)
from ftstore.errors import BadInputError, NotFoundError
from ftstore.fileio import open_regular
from ftstore.hashing import CHUNK
from ftstore.stores.backend import (
    DELETED,
    ENVELOPE,
    LEAVES,
    MARKER,
    MARKER_BYTES,
    PAYLOAD,
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

LOCK_SUFFIX = ".lock"
_LINK_REASON = "symbolic link or file where a folder of the store should be (never followed)"


class StoreLinkError(BadInputError):
    """A folder of the store's layout is a symbolic link (or not a folder): never followed;
    ``scrub`` reports it and ``scrub --remove-orphans`` removes the link itself."""


class _Lease:
    """An exclusive ``flock`` on ``<folder>.lock``, held while a save or scratch folder is
    in use. Its process dying releases it, which is how maintenance tells a crashed save
    from a running one.

    Taking it is create, lock, then check that the locked file is still the one at the
    name: maintenance may have removed a free lock file between our create and our lock.
    Only a lease that passed that check counts, so the lock file a save relies on is never
    one maintenance removed, and its folder is made only after."""

    def __init__(self, folder: Path):
        self.path = folder.with_name(folder.name + LOCK_SUFFIX)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def _dead_lease(staging_fd: int, folder: str) -> Iterator[bool]:
    """True, while holding its lock, if no live process holds the lease of ``staging/folder``
    (its save died, or it never had one); False if one does. While this holds the lock no
    save can be using the folder, so what is removed meanwhile is truly dead."""
    try:
        fd = os.open(folder + LOCK_SUFFIX, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=staging_fd)
    except FileNotFoundError:
        yield True  # a save takes its lease before it makes its folder and drops it after
        return
    except OSError as e:
        # A link at the lock's name was never a save's lease (a save opens it with
        # O_NOFOLLOW and would have failed); anything else we cannot judge.
        yield e.errno in (errno.ELOOP, errno.EMLINK)
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _regular(name: str | Path, dir_fd: int | None = None) -> bool:
    """Whether ``name`` is a regular file itself (not through a link)."""
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _is_tombstone(version_dir: Path) -> bool:
    """Whether a version folder holds ``deleted`` as a regular file (a link or folder of
    that name is a stray entry, and hides nothing)."""
    return _regular(version_dir / DELETED)


def _made_by_a_new_store(entry: str) -> bool:
    """What another process creating the same store at the same moment (ranks of one job
    starting together) may have made there since we looked for the marker: the marker's
    temporary file, or the marker itself. Nothing else is made before the marker, so a
    folder holding anything else (even folders named like a store's) is not taken over."""
    return entry == MARKER or entry.startswith(MARKER + TMP_MARK)


@contextlib.contextmanager
def _unused(version_fd: int) -> Iterator[bool]:
    """True, holding the version folder's ``flock`` exclusively, if no working copy holds
    it (see :meth:`LocalStore.working_copy`); False, at once, if one does."""
    try:
        fcntl.flock(version_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held; or not to be had on this file system (NFS): never taken for unused
        yield False
        return
    try:
        yield True
    finally:
        fcntl.flock(version_fd, fcntl.LOCK_UN)


def _kind(dir_fd: int, name: str) -> str | None:
    """"dir", "link", "file" (anything else) or None (absent) for ``name`` in ``dir_fd``."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"


def _names_a_version_or_name(parent: list[str], entry: str) -> bool:
    """Whether ``artifacts/<parent>/<entry>`` is where a real name or version folder goes:
    listed as an orphan, it was a file or link there, and may be a folder by now."""
    return (not parent and is_name(entry)) or (len(parent) == 1 and version_of(entry) is not None)


def _unlink_not_a_folder(dir_fd: int, entry: str) -> bool:
    """Remove a stray file or link where a name or version folder goes, never the folder a
    save may have made there since the orphan was listed (``unlink`` refuses folders, so
    no check can go stale before it)."""
    try:
        os.unlink(entry, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    except (IsADirectoryError, PermissionError):  # a folder now: a committed name or version
        return False
    return True


class LocalStaging(Staging):
    def __init__(self, store: LocalStore, name: str, version: int | None):
        self.store, self.name, self.version = store, name, version
        self.workdir = store._top("staging", create=True) / uuid.uuid4().hex
        self._lease = _Lease(self.workdir)
        try:
            self.workdir.mkdir()
        except BaseException:
            self._lease.release()
            raise

    def expected_version(self) -> int:
        return self.version or max(self.store._numbered(self.name), default=0) + 1

    def copy_in(self, leaf: str, src: Path, progress: Progress | None, sink: ChunkSink | None,
                durable: bool) -> tuple[str, int]:
        return copy_hashing(src, self.workdir / leaf, progress, sink, durable=durable)

    def link_in(self, leaf: str, src: Path) -> Path | None:
        return self.workdir / leaf if try_link(src, self.workdir / leaf) else None

    def sync(self, leaf: str) -> None:
        fsync_file(self.workdir / leaf)

    def add(self, leaf: str, path: Path) -> None:
        if path != self.workdir / leaf:
            os.replace(path, self.workdir / leaf)

    def commit(self, envelope_for: Callable[[int], bytes], version: int | None = None) -> int:
        """Rename the staging folder to the next version (or to the exact one asked for at
        staging), under the name's lock, as deletes take it. The next version is listed
        again under the lock, just before the rename: a number listed earlier may have
        become a gap below the highest since (a version below it deleted, or a tombstone
        dropped), and a rename into a gap would give this save a number that named another
        artifact. The number is in the envelope, so a number that moved on is written
        there again, outside the lock, and the lock taken again."""
        name_dir = self.store._name_dir(self.name)
        version = self.expected_version()
        while True:
            write_atomic(self.workdir / ENVELOPE, envelope_for(version))  # fsyncs the folder too
            with self.store._name_locked(self.name):
                if self.version is None and (latest := self.expected_version()) > version:
                    version = latest
                    continue
                try:
                    os.rename(self.workdir, name_dir / str(version))
                except OSError as e:
                    # taken: a version, a tombstone, or a stray file or link at the name (ENOTDIR)
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                        raise
                    if self.version is not None:
                        raise VersionTakenError(self._taken(name_dir, version, e.errno)) from None
                    version = max(version + 1, self.expected_version())
                    continue
            fsync_dir(name_dir)
            self._lease.release()
            return version

    def _taken(self, name_dir: Path, version: int, err: int) -> str:
        ref = f"{self.name}@{version}"
        if err == errno.ENOTDIR:
            return (f"{name_dir / str(version)} is not a version folder; `ftstore scrub --remove-orphans` "
                    "removes it")
        if _is_tombstone(name_dir / str(version)):
            return f"{ref} was deleted from {self.store.url}; a deleted version's number is not given to another artifact"
        return f"{ref} already exists in {self.store.url}"

    def abort(self) -> None:
        remove_tree(self.workdir)
        self._lease.release()


def local_store_holding(path: str | os.PathLike) -> Path | None:
    """The root of the local store, any store, whose own files or folders ``path`` names,
    or None: a folder above it that holds a store marker. A save to one store must not move
    another store's payload away, nor a load write over one, whichever store it works on
    (an S3 store's command included). A scratch folder's files are excepted, as in
    :meth:`LocalStore.holds`. The folders are resolved (links followed); the path's own name
    is not."""
    node = _resolved(path)
    below: list[str] = []  # the names from the folder being looked at down to the path
    while node.parent != node:
        below.append(node.name)
        node = node.parent
        try:
            marker = os.lstat(node / MARKER)
        except OSError:
            continue
        if stat.S_ISREG(marker.st_mode):
            return node if _store_owned(below[::-1]) else None
    return None


def _resolved(path: str | os.PathLike) -> Path:
    """``path`` made absolute with its folders resolved (links followed before any ``..``,
    as the kernel does), its own name kept: a link named inside a store is a store entry."""
    path = Path(path) if Path(path).is_absolute() else Path.cwd() / path
    return Path(os.path.realpath(path.parent)) / path.name if path.name not in ("", ".", "..") \
        else Path(os.path.realpath(path))


def _store_owned(down: list[str]) -> bool:
    """Whether the entry at ``down`` (names from a store's root) is the store's own: all
    but a scratch folder's files (:meth:`LocalStore.scratch`), which are their writer's."""
    return not (len(down) > 2 and down[0] == "staging" and down[1].startswith("scratch-"))


class LocalStore(StoreBackend):
    capabilities = Capabilities(local_files=True, atomic_rename=True, hard_links=True,
                                conditional_writes=False, range_reads=True)

    def __init__(self, root: Path):
        self.root = root
        self.url = str(root)

    def holds(self, path: Path) -> bool:
        """By what the path's folders are, not how they are spelled: its folder is resolved
        (links followed before any ``..``, as the kernel does; its own name is not, since a
        link named inside the store is a store entry too), then each folder up from it is
        compared with the store's root by device and inode, which also sees the store
        through a bind mount or a second mount of its file system. A scratch folder's files
        (:meth:`scratch`) are the caller's, not the store's: a checkpoint written there is
        saved with ``move``."""
        node = _resolved(path)
        try:
            root = os.stat(self.root)
        except OSError:
            return False
        below: list[str] = []  # the names from the root down to the path, innermost first
        while True:
            try:
                st = os.stat(node)
            except OSError:
                st = None  # the path's own name need not exist yet
            if st is not None and (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino):
                return _store_owned(below[::-1])
            if node.parent == node:
                return False
            below.append(node.name)
            node = node.parent

    @classmethod
    def open(cls, location: str, create: bool = False) -> LocalStore:
        root = Path(location)
        marker = root / MARKER
        if not os.path.lexists(marker):
            if not create:
                raise NotFoundError(f"no ftstore store at {root} (save something first, or pass --store)")
            cls._create(root)
        f = open_regular(marker)  # what was there, or what this or another process just made
        if f is None:
            raise NotFoundError(f"no ftstore store at {root}")
        with f:
            check_marker(f.read(4096), str(marker))
        return cls(root)

    @classmethod
    def _create(cls, root: Path) -> None:
        """Make a new store at ``root``: an absent or empty folder. A folder holding only a
        marker being written is another process making this very store (ranks starting
        together); one holding anything else is refused, unless its marker has appeared
        meanwhile (that process got further: then it is opened as it is)."""
        cls._refuse_inside_a_store(root)
        marker = root / MARKER
        if root.exists() and (not root.is_dir() or any(not _made_by_a_new_store(e.name) for e in root.iterdir())):
            if not os.path.lexists(marker):
                raise BadInputError(f"{root} exists, is not empty and is not an ftstore store")
            return
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, MARKER_BYTES)

    @staticmethod
    def _refuse_inside_a_store(root: Path) -> None:
        """A new store inside another store's own folders (``artifacts``, ``staging``, ...)
        would be that store's orphan, removed by its next ``scrub --remove-orphans``: say so
        instead of creating it (a ``copy`` into ``STORE/artifacts/backup``, say)."""
        path = Path(os.path.realpath(root))
        for below, above in zip(path.parents, [path, *path.parents]):
            if above.name in TOP_FOLDERS and os.path.lexists(below / MARKER):
                raise BadInputError(f"{root} is inside the store {below} ({above.name}/), whose maintenance would "
                                    "remove it; choose a folder outside it")

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

    def _top(self, folder: str, create: bool = False) -> Path:
        """``<root>/<folder>`` once checked to be a real folder (made if asked and absent);
        :class:`StoreLinkError` for a link or a file there."""
        path = self.root / folder
        if create:
            with contextlib.suppress(FileExistsError):
                path.mkdir()  # never through a link at the name: that is FileExistsError
        if not is_real_dir(path):
            raise StoreLinkError(f"{path}: {_LINK_REASON}; `ftstore scrub --remove-orphans` removes it")
        return path

    def _name_dir(self, name: str) -> Path:
        """``artifacts/<name>``, made if absent, checked to be real folders all the way."""
        path = self._top("artifacts", create=True) / name
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        if not is_real_dir(path):
            raise StoreLinkError(f"{path}: {_LINK_REASON}; `ftstore scrub --remove-orphans` removes it")
        return path

    @contextlib.contextmanager
    def _version_fd(self, key: ArtifactKey) -> Iterator[int | None]:
        """A descriptor of the version's folder, walked without following links; None if
        the version does not exist; :class:`StoreLinkError` if a folder on the way is a link."""
        try:
            cm = open_dir(self.root, ("artifacts", key.name, str(key.version)))
            fd = cm.__enter__()
        except FileNotFoundError:
            yield None
            return
        except NotADirectoryError:
            raise StoreLinkError(f"{self.version_dir(key)}: a folder on the way is a symbolic link or a file "
                                 "(never followed)") from None
        try:
            yield fd
        finally:
            cm.__exit__(None, None, None)

    @staticmethod
    def _subdirs(folder: Path) -> list[str]:
        """Names of the real folders (not links) in ``folder`` (itself not a link)."""
        if not is_real_dir(folder):
            return []
        try:
            with os.scandir(folder) as it:
                return [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def names(self) -> list[str]:
        return sorted(n for n in self._subdirs(self.artifacts_dir) if is_name(n) and self.versions(n))

    def versions(self, name: str) -> list[int]:
        return sorted(v for v, dead in self._numbered(name).items() if not dead)

    def _numbered(self, name: str) -> dict[int, bool]:
        """Every numbered folder of ``name``, versions and tombstones: number -> tombstone?"""
        if not is_name(name) or not is_real_dir(self.artifacts_dir):
            return {}
        folder = self.artifacts_dir / name
        return {v: _is_tombstone(folder / d) for d in self._subdirs(folder) if (v := version_of(d)) is not None}

    # -- leaves ------------------------------------------------------------------------------
    def open_leaf(self, key: ArtifactKey, leaf: str) -> BinaryIO | None:
        with self._version_fd(key) as fd:
            if fd is None:
                return None
            return open_regular(leaf, dir_fd=fd, shown=self.version_dir(key) / leaf)

    def leaf_sizes(self, key: ArtifactKey) -> dict[str, int]:
        out = {}
        with contextlib.suppress(OSError, BadInputError), self._version_fd(key) as fd:
            for leaf in LEAVES if fd is not None else ():
                with contextlib.suppress(OSError):
                    st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
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
        """A new file made exclusively beside the leaf, fsynced, renamed over it (a link at
        the leaf's name is replaced as a link, never written through)."""
        with self._version_fd(key) as dfd:
            if dfd is None:
                raise NotFoundError(f"{key.ref} does not exist in {self.url}")
            with contextlib.suppress(OSError):  # its temporary file is not an orphan (see working_copy)
                fcntl.flock(dfd, fcntl.LOCK_SH)
            tmp = f"{leaf}{TMP_MARK}{uuid.uuid4().hex[:12]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            try:
                with open(fd, "wb") as out:
                    if isinstance(data, bytes):
                        out.write(data)
                    else:
                        with open(data, "rb") as src:
                            while chunk := src.read(CHUNK):
                                out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if _kind(dfd, leaf) == "dir":  # damage a rename cannot replace
                    remove_entry(dfd, leaf)
                os.replace(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.fsync(dfd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dfd)

    def delete_leaf(self, key: ArtifactKey, leaf: str) -> None:
        with self._version_fd(key) as fd:
            if fd is not None:
                remove_entry(fd, leaf)

    def describe(self, key: ArtifactKey) -> dict[str, str]:
        d = self.version_dir(key)
        return {"dir": str(d), **{leaf.split(".")[0]: str(d / leaf) for leaf in LEAVES}}

    @contextlib.contextmanager
    def working_copy(self, key: ArtifactKey, writeback: bool = True) -> Iterator[Path]:
        """The version's own folder, once checked to be real folders all the way down:
        checks and repairs work on the stored files in place. The folder is held under a
        shared ``flock`` meanwhile: maintenance takes it exclusively, without waiting,
        before it lists or removes anything in a version's folder, so the temporary and
        spill files a repair or a protector is writing there are never taken for orphans."""
        with self._version_fd(key) as fd:
            if fd is None:
                raise NotFoundError(f"{key.ref} does not exist in {self.url}")
            with contextlib.suppress(OSError):  # no such locks (NFS): maintenance then never takes it for unused
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield self.version_dir(key)

    def remove_interrupted_saves(self) -> int:
        """The staging folders (and their locks) of saves whose process is gone: one
        listing of ``staging``, each removed only while holding its free lease."""
        saves = ("interrupted save (staging)", "lock of an interrupted save")  # not a stray file or link there
        return sum(self.remove_orphan(o.path) for o in self._staging_orphans() if o.reason in saves)

    def shares_payload(self, key: ArtifactKey, file_id: tuple[int, int]) -> bool:
        """Whether a version other than ``key`` has the payload file ``file_id`` (device,
        inode): a hard link planted in the store, or made by a deduplicating backup tool."""
        for name in self.names():
            for v in self.versions(name):
                if (name, v) == (key.name, key.version):
                    continue
                try:
                    st = os.lstat(self.version_dir(ArtifactKey(name, v)) / PAYLOAD)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == file_id:
                    return True
        return False

    # -- saving ------------------------------------------------------------------------------
    def stage(self, name: str, version: int | None = None, owner: str | None = None) -> LocalStaging:
        return LocalStaging(self, name, version)  # no claims: a killed save leaves only an orphan

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private folder beside the store, on its filesystem, under a lease like a save's."""
        folder = self._top("staging", create=True) / f"scratch-{uuid.uuid4().hex}"
        lease = _Lease(folder)
        try:
            folder.mkdir()
            yield folder
        finally:
            remove_tree(folder)
            lease.release()

    # -- maintenance -------------------------------------------------------------------------
    def delete(self, key: ArtifactKey) -> None:
        """Below a higher numbered folder, the version's folder is discarded whole; the
        highest becomes a tombstone, and the tombstones below it are discarded (see the
        module docstring). All through descriptors of real folders of the store, under
        the name's lock, so what it decides on is what is there."""
        with self._name_locked(key.name):
            numbered = self._numbered(key.name)
            if numbered.get(key.version, True):  # absent, or a tombstone already
                raise NotFoundError(f"{key.name} has no version {key.version}")
            if any(v > key.version for v in numbered):
                self._discard(key)
                return
            self._bury(key)
            for v, dead in numbered.items():
                if dead and v < key.version:
                    with contextlib.suppress(NotFoundError):
                        self._discard(ArtifactKey(key.name, v))

    @contextlib.contextmanager
    def _name_locked(self, name: str) -> Iterator[None]:
        """An exclusive ``flock`` of ``artifacts/<name>``, held by deletes and by every
        commit: a delete never discards a tombstone that a copy's version has meanwhile
        replaced, and no commit renames into a number a delete has just made a gap below
        the highest (see :meth:`LocalStaging.commit`). Where the file system has no such
        locks (NFS), it goes on without."""
        try:
            cm = open_dir(self.root, ("artifacts", name))
            fd = cm.__enter__()
        except FileNotFoundError:
            yield
            return
        except NotADirectoryError:
            raise StoreLinkError(f"{self.artifacts_dir / name}: {_LINK_REASON}") from None
        try:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            cm.__exit__(None, None, None)  # closing it releases the lock

    def _discard(self, key: ArtifactKey) -> None:
        """Rename the numbered folder out of ``artifacts/`` (the moment it stops being an
        artifact), then erase it in ``trash/``."""
        self._top("trash", create=True)
        trash = uuid.uuid4().hex
        try:
            with open_dir(self.root, ("artifacts", key.name)) as name_fd, open_dir(self.root, ("trash",)) as trash_fd:
                os.rename(str(key.version), trash, src_dir_fd=name_fd, dst_dir_fd=trash_fd)
                os.fsync(name_fd)
                remove_entry(trash_fd, trash)
        except NotADirectoryError:
            raise StoreLinkError(f"{self.version_dir(key)}: a folder on the way is a symbolic link or a file "
                                 "(never followed)") from None
        except FileNotFoundError:  # deleted meanwhile by another process
            raise NotFoundError(f"{key.name} has no version {key.version}") from None

    def _bury(self, key: ArtifactKey) -> None:
        """Turn the version into a tombstone in place: ``deleted`` is made (exclusively: of
        two deletes, one does it), the folder fsynced, then everything else removed."""
        with self._version_fd(key) as fd:
            if fd is None:
                raise NotFoundError(f"{key.name} has no version {key.version}")
            if not _regular(DELETED, fd):
                remove_entry(fd, DELETED)  # a link or folder planted at the name
            try:
                os.close(os.open(DELETED, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=fd))
            except FileExistsError:
                raise NotFoundError(f"{key.name} has no version {key.version}") from None
            os.fsync(fd)
            for entry in os.listdir(fd):
                if entry != DELETED:
                    remove_entry(fd, entry)
            os.fsync(fd)

    def orphans(self) -> list[Orphan]:
        out: list[Orphan] = []
        with open_dir(self.root, ()) as root_fd:
            kinds = {top: _kind(root_fd, top) for top in TOP_FOLDERS}
        out += [Orphan(top, _LINK_REASON) for top, k in kinds.items() if k not in (None, "dir")]
        if kinds["staging"] == "dir":
            out += self._staging_orphans()
        if kinds["trash"] == "dir":
            with contextlib.suppress(OSError), open_dir(self.root, ("trash",)) as fd:
                out += [Orphan(f"trash/{n}", "interrupted delete (trash)" if _kind(fd, n) != "link" else _LINK_REASON)
                        for n in sorted(os.listdir(fd))]
        if kinds["artifacts"] == "dir":
            out += self._artifact_orphans()
        return out

    def _staging_orphans(self) -> list[Orphan]:
        out = []
        with contextlib.suppress(OSError), open_dir(self.root, ("staging",)) as fd:
            for entry in sorted(os.listdir(fd)):
                if entry.endswith(LOCK_SUFFIX):
                    folder = entry[: -len(LOCK_SUFFIX)]
                    if _kind(fd, folder) is None:
                        with _dead_lease(fd, folder) as dead:
                            if dead:
                                out.append(Orphan(f"staging/{entry}", "lock of an interrupted save"))
                    continue
                with _dead_lease(fd, entry) as dead:
                    if dead:
                        out.append(Orphan(f"staging/{entry}", "interrupted save (staging)" if _kind(fd, entry) == "dir"
                                          else "not a save folder" if _kind(fd, entry) == "file" else _LINK_REASON))
        return out

    def _artifact_orphans(self) -> list[Orphan]:
        out = []
        with contextlib.suppress(OSError), open_dir(self.root, ("artifacts",)) as afd:
            for name in sorted(os.listdir(afd)):
                kind = _kind(afd, name)
                if kind != "dir" or not is_name(name):
                    out.append(Orphan(f"artifacts/{name}", _LINK_REASON if kind == "link" else "not an artifact name"))
                    continue
                with open_dir(self.root, ("artifacts", name)) as nfd:
                    for v in sorted(os.listdir(nfd)):
                        kind = _kind(nfd, v)
                        if kind != "dir" or version_of(v) is None:
                            why = ("interrupted write" if TMP_MARK in v else
                                   _LINK_REASON if kind == "link" else "not a version directory")
                            out.append(Orphan(f"artifacts/{name}/{v}", why))
                            continue
                        key = ArtifactKey(name, version_of(v))
                        with open_dir(self.root, ("artifacts", name, v)) as vfd, _unused(vfd) as unused:
                            if not unused:
                                continue  # a repair or protector is at work there
                            if _regular(DELETED, vfd):  # a tombstone: anything beside it
                                out += [Orphan(f"artifacts/{name}/{v}/{f}", "interrupted delete", key)
                                        for f in sorted(os.listdir(vfd)) if f != DELETED]
                                continue
                            for f in sorted(os.listdir(vfd)):
                                if f not in LEAVES:
                                    out.append(Orphan(f"artifacts/{name}/{v}/{f}",
                                                      "interrupted write" if TMP_MARK in f else "stray file", key))
        return out

    def remove_orphan(self, path: str) -> bool:
        """Remove one orphan through descriptors of real folders of the store: a link is
        removed as a link, a folder with everything in it and nothing outside it; a
        staging folder only while holding its free lease, so never a live save's."""
        parts = Path(path).parts
        if not parts or Path(path).is_absolute() or any(p in ("..", ".") for p in parts):
            raise BadInputError(f"{path}: not a path inside the store")
        *parent, entry = parts
        try:
            with open_dir(self.root, parent) as fd:
                if not parent:  # a link or file where a top folder should be
                    if entry in TOP_FOLDERS and _kind(fd, entry) in ("link", "file"):
                        os.unlink(entry, dir_fd=fd)
                    return _kind(fd, entry) in (None, "dir")
                if parent == ["staging"]:
                    return self._remove_from_staging(fd, entry)
                if parent[0] == "artifacts" and _names_a_version_or_name(parent[1:], entry):
                    return _unlink_not_a_folder(fd, entry)
                in_version = len(parent) == 3 and parent[0] == "artifacts"
                with _unused(fd) if in_version else contextlib.nullcontext(True) as unused:
                    if not unused:  # inside a version's folder while a repair works there
                        return False
                    if in_version and entry in LEAVES and not _regular(DELETED, fd):
                        return False  # no tombstone here (any more): a committed version's own leaf
                    if in_version and entry == DELETED and _regular(DELETED, fd):
                        return False  # listed as a stray entry, it is the tombstone's marker now
                    remove_entry(fd, entry)
                    return _kind(fd, entry) is None
        except (FileNotFoundError, NotADirectoryError):
            return False

    @staticmethod
    def _remove_from_staging(fd: int, entry: str) -> bool:
        folder = entry[: -len(LOCK_SUFFIX)] if entry.endswith(LOCK_SUFFIX) else entry
        with _dead_lease(fd, folder) as dead:
            if not dead:
                return False
            if folder != entry:  # the lock alone: only once its folder is gone
                if _kind(fd, folder) is not None:
                    return False
            else:
                remove_entry(fd, folder)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder + LOCK_SUFFIX, dir_fd=fd)
        return _kind(fd, entry) is None

    def write_report(self, name: str, data: bytes) -> None:
        write_atomic(self._top("reports", create=True) / name, data)


__all__ = ["LocalStaging", "LocalStore", "StoreLinkError", "local_store_holding", "open_regular"]
