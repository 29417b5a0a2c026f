"""Opening store files as regular files only, and writing them: what a codec worker needs
of the file system, apart from :mod:`ftstore.durable` (whose copies, temporary files and
directory fsyncs bring in ``shutil``, ``uuid`` and ``pathlib``: about 8 ms more at the start
of every worker of every save and repair).

Nothing here follows a symbolic link: a file is opened with ``O_NOFOLLOW``, non-blocking,
and refused unless ``fstat`` says it is a regular file, so a link or a FIFO planted in a
store is never read or written through.
"""

from __future__ import annotations

import errno
import os
import stat

from ftstore.errors import BadInputError

TYPE_CHECKING = False  # typing's, without importing typing at every codec worker's start (see ftstore.codec.tasks)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0)


class NotRegularFileError(BadInputError):
    """A store file that is a symbolic link, a directory, a FIFO or a device: refused,
    never followed or read."""


def open_regular(path: Path | str, dir_fd: int | None = None, write: bool = False,
                 shown: object = None) -> BinaryIO | None:
    """Open ``path`` (for reading, or for reading and writing in place) if it is a regular
    file; None if it does not exist; :class:`NotRegularFileError` for a symbolic link (never
    followed), a directory, a FIFO or a device. Opened non-blocking, so a FIFO cannot hang
    the open; the fstat then refuses it. ``shown``: how errors name the file."""
    where = shown if shown is not None else path
    flags = (_READ_FLAGS & ~os.O_RDONLY) | (os.O_RDWR if write else os.O_RDONLY)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):
            raise NotRegularFileError(f"{where}: is a symbolic link; store files are never followed") from None
        if e.errno == errno.EISDIR:
            raise NotRegularFileError(f"{where}: is a directory, not a regular file") from None
        if e.errno == errno.ENXIO:  # a FIFO with no writer, opened for writing
            raise NotRegularFileError(f"{where}: is not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else
                    "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise NotRegularFileError(f"{where}: is {kind}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return open(fd, "r+b" if write else "rb", buffering=0)


def must_open_regular(path: Path | str, write: bool = False) -> BinaryIO:
    """:func:`open_regular` where absence is an error too (``FileNotFoundError``)."""
    f = open_regular(path, write=write)
    if f is None:
        raise FileNotFoundError(errno.ENOENT, "No such file", str(path))
    return f


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``. A short write (a disk filling up) is followed by
    another, which then fails with the real cause (``ENOSPC``) for the caller to report."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now rather than at the fsync, so
    the disk works while the caller computes (Linux: DONTNEED on dirty pages starts their
    writeback; it drops only pages already clean)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


__all__ = ["NO_FOLLOW", "NotRegularFileError", "must_open_regular", "open_regular", "pwrite_all", "start_writeback"]
