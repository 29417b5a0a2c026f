"""Crash-safe file primitives for a local directory store.

Everything durable goes through a temporary file in the same directory, fsync, rename, and
an fsync of the directory, so a crash leaves either the old file or the whole new one.

Nothing here follows a symbolic link it did not create: files are read through
:func:`~ftstore.fileio.open_regular` (``O_NOFOLLOW``, non-blocking, regular files only),
temporary files are created exclusively, and trees are removed through directory
descriptors, so a link or a FIFO planted in a store is refused or removed as itself, never
read, written or emptied through.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import queue
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ftstore.errors import StorageFullError
from ftstore.fileio import NO_FOLLOW, start_writeback
from ftstore.hashing import (READ_CHUNK, aligned_buffer, format_hash, give_back_read_buffers, hash_stream,
                             new_hasher, take_read_buffers)

TMP_MARK = ".tmp-"
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NO_FOLLOW


def is_real_dir(path: Path) -> bool:
    """True if ``path`` itself is a directory (a link to one is not)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def open_dir(root: Path, parts: tuple[str, ...] | list[str]) -> Iterator[int]:
    """A descriptor of ``root/part0/part1/...``, walked one component at a time without
    following a link at any of them (``root`` itself may be one: it is the user's path).
    ``NotADirectoryError`` if a component is a link or not a directory; ``FileNotFoundError``
    if one is missing."""
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts:
            if part in ("", ".", "..") or "/" in part:
                raise NotADirectoryError(errno.ENOTDIR, "not a plain path component", part)
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise NotADirectoryError(errno.ENOTDIR, "a symbolic link or not a directory", part) from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def remove_entry(parent_fd: int, name: str) -> None:
    """Remove ``name`` in the directory ``parent_fd`` as what it is: a link or file is
    unlinked (a link's target is untouched), a directory is removed with everything in it,
    through descriptors, never following a link inside it. Absent is fine."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent_fd)


NAME_MAX = 255  # bytes in one file name, on every file system ftstore writes to


def fitting_name(prefix: str, name: str, suffix: str) -> str:
    """``prefix + name + suffix``, with ``name`` cut short (at a character) where the whole
    would pass ``NAME_MAX`` bytes: a temporary file beside a user's long file name (``load
    -o``, a Lightning checkpoint) must not fail where the name itself is fine."""
    room = NAME_MAX - len(os.fsencode(prefix + suffix))
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return prefix + name + suffix


def tmp_path(final: Path) -> Path:
    return final.with_name(fitting_name("", final.name, f"{TMP_MARK}{uuid.uuid4().hex[:12]}"))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def replace_durably(tmp: Path, final: Path, leaf: bool = False) -> None:
    """Rename ``tmp`` over ``final`` and fsync the folder. ``leaf``: ``final`` is a store
    leaf being rebuilt, so a folder at its name is damage, removed first (as itself: a
    link is never followed), which a rename could not replace."""
    if leaf:
        clear_folder_at(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def clear_folder_at(path: Path) -> None:
    """Remove a folder (only a folder) at ``path``, with everything in it, through a
    descriptor of its parent opened without following a link: a version folder swapped
    for a link meanwhile leads nowhere, and nothing outside the store is removed."""
    try:
        parent = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # gone, or now a link: the rename that follows fails, and says so
    try:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(path.name, dir_fd=parent, follow_symlinks=False).st_mode):
                remove_entry(parent, path.name)
    finally:
        os.close(parent)


def write_atomic(final: Path, data: bytes, leaf: bool = False) -> None:
    tmp = tmp_path(final)
    try:
        with open(tmp, "xb") as f:  # exclusive: never through a link planted at the name
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, final, leaf)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


COPY_CHUNK = 16 * 1024 * 1024  # per kernel call; the hash follows one chunk behind the copy
COPY_METHODS = ("copy_file_range", "sendfile", "read_write")
# Errors by which a kernel refuses a copy method itself (another filesystem, a filesystem or
# a sandbox without the call), as opposed to the files: the next method is tried.
_REFUSALS = {
    "copy_file_range": {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM},
    "sendfile": {errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL},
    "read_write": set(),
}


class KernelCopy:
    """Appends the bytes of one open file to another, in the kernel where it can:
    ``copy_file_range`` (a reflink where the filesystem offers one, else an in-kernel copy),
    ``sendfile`` (across filesystems), plain ``read``/``write`` where neither is allowed. No
    byte passes through Python on the first two.

    ``step`` moves up to ``want`` bytes from the source's position and returns how many; 0
    means the source has ended. ``used`` lists the methods that moved bytes."""

    def __init__(self, fd_in: int, fd_out: int, methods: tuple[str, ...] = COPY_METHODS):
        self.fd_in, self.fd_out = fd_in, fd_out
        self.methods = list(methods)
        self.used: list[str] = []
        self._buf: memoryview | None = None

    def step(self, want: int) -> int:
        while True:
            method = self.methods[0]
            try:
                n = self._move(method, want)
            except OSError as e:
                if e.errno in _REFUSALS[method] and len(self.methods) > 1:
                    self.methods.pop(0)
                    continue
                raise
            if n == 0 and method == "copy_file_range" and len(self.methods) > 1:
                # copy_file_range returns 0, not an error, where some filesystems (procfs,
                # sysfs, some FUSE ones) cannot copy: the next method tells the end for sure.
                self.methods.pop(0)
                continue
            if n and method not in self.used:
                self.used.append(method)
            return n

    def _move(self, method: str, want: int) -> int:
        if method == "copy_file_range":
            return os.copy_file_range(self.fd_in, self.fd_out, want)
        if method == "sendfile":
            return os.sendfile(self.fd_out, self.fd_in, None, want)
        if self._buf is None:
            self._buf = aligned_buffer(READ_CHUNK)
        n = os.readv(self.fd_in, [self._buf[: min(want, READ_CHUNK)]])
        done = 0
        while done < n:
            done += os.write(self.fd_out, self._buf[done:n])
        return n


def copy_hashing(
    src: Path,
    dst: Path,
    progress: Callable[[int], None] | None = None,
    also: Callable[[memoryview], object] | None = None,
    durable: bool = True,
    methods: tuple[str, ...] = COPY_METHODS,
) -> tuple[str, int]:
    """Copy ``src`` to a new file ``dst`` and return (BLAKE3, bytes) of the copy; ``also``
    sees every chunk of it too (and must copy what it keeps: the chunk's memory is read into
    again after the call).

    The kernel copies (:class:`KernelCopy`) in a helper thread, chunk by chunk, while this
    thread reads each finished chunk back from ``dst`` (from the page cache, one chunk
    behind) and hashes it, so what is hashed is what was stored, not what was meant to be,
    and on two cores the copy and the hash overlap. Each chunk's writeback is started once
    it is hashed: dirty pages never pile up for one long fsync (measured on a 2-core VM, 512
    MiB: a copy left dirty then fsynced cost 1.1-1.7 s, written back as it goes 0.3 s), and
    the pages stay cached for an encoder that reads the copy next. Memory: three buffers.

    ``durable``: fsync at the end; without, the caller does (:meth:`Staging.sync`), after
    reading the copy back from the page cache, say."""
    fd_out = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o666)
    try:
        with open(src, "rb", buffering=0) as fi:
            result = _copy_and_hash(KernelCopy(fi.fileno(), fd_out, methods), progress, also)
        if durable:
            os.fsync(fd_out)
    finally:
        os.close(fd_out)
    return result


def _copy_and_hash(copier: KernelCopy, progress: Callable[[int], None] | None,
                   also: Callable[[memoryview], object] | None) -> tuple[str, int]:
    copied: queue.Queue[int | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def copy() -> None:
        total = 0
        try:
            while not stop.is_set():
                n = copier.step(COPY_CHUNK)
                if not n:
                    break
                total += n
                copied.put(total)
            copied.put(None)
        except BaseException as e:  # handed to the hashing thread, raised there
            copied.put(e)

    thread = threading.Thread(target=copy, name="ftstore-copy", daemon=True)
    thread.start()
    h = new_hasher(single_thread=True)  # the other core is copying
    buffers = take_read_buffers(1)
    view = buffers[0]
    hashed = 0
    try:
        while (end := copied.get()) is not None:
            if isinstance(end, BaseException):
                raise end
            start = hashed
            while hashed < end:
                n = os.preadv(copier.fd_out, [view[: min(READ_CHUNK, end - hashed)]], hashed)
                if n <= 0:
                    raise OSError(errno.EIO, f"the copy read back short at byte {hashed}")
                chunk = view[:n]
                h.update(chunk)
                if also:
                    also(chunk)
                chunk.release()  # kept by ``also``, it fails loudly instead of showing later bytes
                if progress:
                    progress(n)
                hashed += n
            start_writeback(copier.fd_out, start, end - start)
    finally:
        stop.set()
        thread.join()
    give_back_read_buffers(buffers)
    return format_hash(h.digest()), hashed


WRITEBACK_EVERY = 4 << 20


class HashingWriter:
    """A write-only, front-to-back file object that hashes what it writes into ``f``; with
    ``durable``, it starts the kernel's writeback every few MiB so the final fsync has
    little left to do. Writers that seek (zip files with patched headers) are refused."""

    def __init__(self, f: BinaryIO, durable: bool):
        self.f, self.durable = f, durable
        self.hasher = new_hasher()
        self.written = 0
        self._flushed = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self.hasher.update(view)
        self.f.write(view)  # buffered: never stops short
        self.written += len(view)
        if self.durable and self.written - self._flushed >= WRITEBACK_EVERY:
            self.f.flush()
            start_writeback(self.f.fileno(), self._flushed, self.written - self._flushed)
            self._flushed = self.written
        return len(view)

    def tell(self) -> int:
        return self.written

    def seek(self, *_: object) -> int:
        raise io.UnsupportedOperation("ftstore writes checkpoints front to back; this writer tried to seek")

    def flush(self) -> None:
        self.f.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def result(self) -> tuple[str, int]:
        return format_hash(self.hasher.digest()), self.written


Writer = Callable[[HashingWriter], object]
"""What writes a payload into a :class:`HashingWriter` (a ``torch.save``, say)."""


def write_hashing(dst: Path, write: Writer, durable: bool = True) -> tuple[str, int]:
    """Create ``dst`` and let ``write`` write into it (a ``torch.save``, say); return (BLAKE3,
    bytes) of exactly what was written, hashed on the way, so nothing reads it back. With
    ``durable`` the file is fsynced; without, the caller syncs it (and may read it back
    from the page cache first)."""
    with open(dst, "xb") as fo:
        sink = HashingWriter(fo, durable)
        write(sink)
        fo.flush()
        if durable:
            os.fsync(fo.fileno())
    return sink.result()


def try_link(src: Path, dst: Path) -> bool:
    """Hard-link the regular file ``src`` as ``dst``; False (and nothing left behind) where
    that cannot be done: another filesystem, links not permitted, ``src`` a symlink.

    Taking a file over by a link rather than a rename keeps it at the user's path until the
    caller has committed and unlinks it, so a crash before the commit loses nothing."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        return False
    if dst.is_symlink() or not dst.is_file():
        dst.unlink()
        return False
    return True


def hash_durably(
    path: Path,
    progress: Callable[[int], None] | None = None,
    also: Callable[[memoryview], object] | None = None,
    single_thread: bool = False,
) -> tuple[str, int]:
    """(BLAKE3, bytes) of a file taken over in place, fsynced; ``also`` sees every chunk."""
    with open(path, "rb", buffering=0) as f:
        result = hash_stream(f, None, progress, sink=also, single_thread=single_thread)
        os.fsync(f.fileno())
    return result


RACY_NS = 20_000_000  # two ticks of the coarsest kernel clock that stamps files (HZ=100)


@dataclass(frozen=True)
class FileState:
    """What ``stat`` says about a file's contents; any write changes it (see ``watch``)."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileState:
        st = os.stat(path, follow_symlinks=False)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def watch(path: Path) -> FileState | None:
    """The state to compare ``path`` against later to learn whether it was written to, or
    None where that cannot be told from ``stat``.

    Kernels stamp a write with a coarse clock, so a second write in the same tick as the
    last one leaves mtime as it was ("racy git"): the file is watchable only once its mtime
    is older than two ticks, which this waits for (at most 20 ms, and only for a file written
    just now). An mtime in the future (a skewed clock, a ``touch -d``) tells nothing, nor
    do whole-second stamps: the filesystem (or whoever set them) may not keep finer ones."""
    for _ in range(2):
        state = FileState.of(path)
        if state.mtime_ns % 1_000_000_000 == 0 and state.ctime_ns % 1_000_000_000 == 0:
            return None
        age = time.time_ns() - state.mtime_ns
        if age >= RACY_NS:
            return state
        if age < 0:
            return None
        time.sleep((RACY_NS - age) / 1e9)
    return None


def remove_tree(path: Path) -> None:
    """Remove the folder ``path`` (or whatever is at that name, as itself) through a
    descriptor of its parent: nothing outside it is ever removed, even if it is a link."""
    try:
        parent = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        remove_entry(parent, path.name)
    finally:
        os.close(parent)


def is_disk_full(e: OSError) -> bool:
    """Out of room: no space, a quota, or a file over the filesystem's or the process's
    size limit (``ulimit -f``), which the kernel reports without a file name."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_full(e: OSError, what: str) -> StorageFullError:
    if e.errno == errno.EFBIG:
        return StorageFullError(
            f"a file grew past the filesystem's or this process's file-size limit (ulimit -f) while {what}; "
            "the store was left as it was"
        )
    return StorageFullError(f"no space left while {what}; the store was left as it was")
