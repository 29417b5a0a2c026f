"""Private temporary folders that do not outlive a killed process.

A bundle is zipped in a local folder before it is saved; a save to object storage builds
its sidecar in one; a check of an S3 store downloads the version into one; a drill copies
a whole store into one. A process killed with SIGKILL (the OOM killer, a scheduler taking a
preemptible node back, ``kill -9``) never runs its cleanup, so each of those folders would
stay in the temporary directory for good, a checkpoint's size at a time, once per kill.

Here every folder holds an ``flock`` on itself for as long as its process lives (the
kernel drops the lock when the process dies, however it dies), and making a folder first
removes the ones no process holds any more.

- Names: ``ftstore-held-<kind>-<boot>-<32 hex>`` in :func:`tempfile.gettempdir`, where
  ``<boot>`` is the running kernel's boot id. Only folders of the sweeper's own kernel are
  swept: some filesystems a cluster shares ``TMPDIR`` on keep ``flock`` per machine (NFS with
  ``local_lock``, Lustre ``localflock``, BeeGFS by default), so another machine's live
  folder would look dead. Without a boot id nothing is swept. Another tool's ``ftstore-*``
  folder, a test's, is never looked at.
- A folder is made as ``.ftstore-held-new-*``, locked, and only then renamed to its final
  name: a final name is locked from the moment it exists, so a sweeper can never take a
  live folder for a dead one. A process killed between the two steps leaves an empty
  ``new`` folder, removed once it is an hour old. Where the lock cannot be taken the folder
  is named ``ftstore-unheld-*`` instead and never swept (a kill leaves it, as before).
- A sweeper removes only real folders (never a link, never what a link points to) owned by
  its own user, through directory descriptors (:func:`ftstore.durable.remove_tree`), while
  it holds their lock.
- A user may still remove a live folder by hand; :meth:`HeldTempDir.intact` tells its owner,
  so that nothing is written back from a folder that is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ftstore.durable import remove_tree

PREFIX = "ftstore-held-"
UNHELD_PREFIX = "ftstore-unheld-"
_NEW_PREFIX = ".ftstore-held-new-"
_KIND = re.compile(r"[a-z0-9]+")
NEW_STALE_S = 3600  # a new folder is renamed microseconds after it is made
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str | None:
    """The running kernel's boot id (16 hex digits of it), the scope of its locks; None
    where the system does not say."""
    try:
        with open(_BOOT_ID_FILE, encoding="ascii") as f:
            text = f.read().strip().replace("-", "")
    except OSError:
        return None
    return text[:16] if re.fullmatch(r"[0-9a-f]{32}", text) else None


class HeldTempDir:
    """A private folder (mode 0700) this process holds until :meth:`remove`. ``kind``
    (lower-case letters and digits) says in its name what it is for."""

    def __init__(self, kind: str) -> None:
        if not _KIND.fullmatch(kind):
            raise ValueError(f"kind {kind!r}: lower-case letters and digits only")
        root = tempfile.gettempdir()
        boot = boot_id()
        if boot is not None:
            remove_dead(root, boot)
        new = tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=root)
        try:
            fd = os.open(new, _DIR_FLAGS)
        except BaseException:
            os.rmdir(new)  # empty; needs no descriptor (this may be EMFILE)
            raise
        try:
            held = boot is not None and _lock(fd)
            name = f"{PREFIX}{kind}-{boot}-" if held else f"{UNHELD_PREFIX}{kind}-"
            final = os.path.join(root, name + uuid.uuid4().hex)
            os.rename(new, final)
        except BaseException:
            os.close(fd)
            os.rmdir(new)
            raise
        self.path = Path(final)
        self._fd: int | None = fd
        self._ino = os.fstat(fd).st_ino
        self._closing = threading.Lock()

    def intact(self) -> bool:
        """Whether :attr:`path` is still this folder (not removed, nor replaced)."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return st.st_ino == self._ino and self._fd is not None and os.fstat(self._fd).st_nlink > 0

    def remove(self) -> None:
        """Remove the folder and everything in it, then let go of it; idempotent."""
        with self._closing:
            fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            remove_tree(self.path)  # still locked: no sweeper touches it meanwhile
        finally:
            os.close(fd)


def _lock(fd: int) -> bool:
    """Hold the folder; False where the lock cannot be taken (a filesystem that keeps none,
    a full lock table). Nobody else knows the folder's name yet, so it never waits."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def held_temp_dir(kind: str) -> Iterator[Path]:
    """A :class:`HeldTempDir` for the ``with`` block, removed at its end."""
    held = HeldTempDir(kind)
    try:
        yield held.path
    finally:
        held.remove()


def remove_dead(root: str | os.PathLike, boot: str) -> list[str]:
    """Remove the held folders of kernel ``boot`` in ``root`` whose process is gone;
    returns the names removed. One another process holds, one owned by another user, one of
    another machine or boot, a link or anything not a folder is left alone."""
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    ours = re.compile(rf"{re.escape(PREFIX)}[a-z0-9]+-{boot}-[0-9a-f]{{32}}")
    uid = os.getuid()
    for name in names:
        new = name.startswith(_NEW_PREFIX)
        if not (new or ours.fullmatch(name)):
            continue
        path = Path(root, name)
        try:
            fd = os.open(path, _DIR_FLAGS)
        except OSError:  # gone meanwhile, a link, not a folder
            continue
        try:
            st = os.fstat(fd)
            if st.st_uid != uid or (new and time.time() - st.st_mtime < NEW_STALE_S):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its process lives (or locks are not kept here: then it cannot tell)
                continue
            if _same_entry(path, st):
                remove_tree(path)
                if not os.path.lexists(path):
                    removed.append(name)
        finally:
            os.close(fd)
    return removed


def _same_entry(path: Path, st: os.stat_result) -> bool:
    """Whether ``path`` is still the folder that was opened and locked (its owner may have
    renamed another into its place meanwhile: then that one is left for the next sweep)."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


__all__ = ["PREFIX", "UNHELD_PREFIX", "HeldTempDir", "boot_id", "held_temp_dir", "remove_dead"]
