"""The codec worker program, and the frames it speaks with its parent.

A worker is its own program (:func:`ftstore.interpreter.command` runs its ``main``),
started by :mod:`ftstore.codec.parallel` with a pipe on its stdin and one on its stdout. It
never sees the host's ``__main__``: a training script without an ``if __name__ ==
"__main__"`` guard runs once, in its own process, and nowhere else.

Frames are an 8-byte little-endian length and a pickle. The parent sends ``(cwd, fn,
task)`` (its working directory, so that relative paths mean the same here);
the worker answers ``("ok", fn(task))``, ``("err", exception)`` or, when it cannot go on,
``("fatal", message)``. Only the parent ever writes to a worker, and one task at a time,
so a worker never blocks writing a result while its parent blocks writing a task.

A worker dies with its parent: it asks the kernel for SIGKILL when the thread that started
it exits (Linux; the parent starts workers from a thread that lives as long as it does),
it exits when its stdin reaches end of file (the parent's end closes when the parent dies,
on any system), and it checks that its parent is still the one that started it.
"""

from __future__ import annotations

import ctypes
import importlib
import io
import os
import pickle
import signal
import struct
import sys

TYPE_CHECKING = False  # typing's, without importing typing at every codec worker's start (see ftstore.codec.tasks)
if TYPE_CHECKING:
    from typing import Any

_HEADER = struct.Struct("<Q")
# Imported before the first task, so that it does not pay for them.
_PRELOAD = ("ftstore.codec.tasks",)
_PR_SET_PDEATHSIG = 1

RUNNING = False
"""True in a worker process: codec work there runs in-process, never in grand-children."""


class ProtocolError(Exception):
    """A pipe ended in the middle of a frame."""


def write_frame(fd: int, data: bytes) -> None:
    """Write one frame; raises ``BrokenPipeError`` when the reader is gone."""
    for part in (_HEADER.pack(len(data)), data):
        view = memoryview(part)
        while view:
            view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            if got == 0:
                return None
            raise ProtocolError(f"pipe closed {got} bytes into a {n}-byte read")
        got += k
    return buf


def read_frame(fd: int) -> bytearray | None:
    """Read one frame; ``None`` at end of file between frames."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    body = _read_exact(fd, size)
    if body is None and size:
        raise ProtocolError("pipe closed after a frame header")
    return body or bytearray()


class _Unpickler(pickle.Unpickler):
    """Refuses anything from ``__main__``: here that is the two-line stub that started the
    worker, and the host's ``__main__`` must never be imported or run in a worker."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__" or module.startswith("__main__."):
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a worker never runs __main__")
        return super().find_class(module, name)


def loads(data: bytes | bytearray) -> Any:
    return _Unpickler(io.BytesIO(data)).load()


def dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _keep_freed_memory() -> None:
    """Let glibc reuse freed memory instead of returning it to the kernel. Every stripe
    allocates a few MiB; on a VM each fresh page costs a fault, and faults cost a third of
    the encoding speed (measured: 445 vs 600 MB/s per core). The worker's peak use, not
    these thresholds, bounds what it keeps."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only
    if mallopt is not None:
        mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the starting thread exits (Linux), and exit now if the parent already
    died before that was asked for (the worker then belongs to init or a subreaper)."""
    if sys.platform.startswith("linux"):
        prctl = getattr(ctypes.CDLL(None), "prctl", None)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _take_pipes() -> tuple[int, int]:
    """Move the protocol pipes off fds 0 and 1, so that a stray ``print`` (in a library, say)
    goes to stderr instead of corrupting a frame, and nothing else reads the tasks."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return rfd, wfd


def _follow(cwd: str | None) -> None:
    """Work in the parent's current directory (a task's relative paths are relative to it)."""
    try:
        if cwd is not None and cwd != os.getcwd():
            os.chdir(cwd)
    except OSError:
        pass  # then relative paths fail in the task, with their own error


def _answer(fn: Any, task: Any) -> bytes:
    try:
        reply: tuple[str, Any] = ("ok", fn(task))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
        reply = ("err", e)
    try:
        return dumps(reply)
    except Exception as e:  # noqa: BLE001 - an unpicklable result or exception
        what = reply[1] if reply[0] == "err" else e
        return dumps(("err", RuntimeError(f"{type(what).__name__}: {what}")))


def main(argv: list[str]) -> None:
    """Serve tasks until the parent closes the pipe or dies; ``argv`` is the parent's pid."""
    global RUNNING
    RUNNING = True
    parent = int(argv[0]) if argv else os.getppid()
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    rfd, wfd = _take_pipes()
    _keep_freed_memory()
    try:
        for name in _PRELOAD:
            importlib.import_module(name)
        hashing = importlib.import_module("ftstore.hashing")
        hashing.hash_on_one_thread()  # a worker per core: no core to spare
        hashing.keep_read_buffers()  # it reads file after file (a store-wide scrub's checks)
        while (frame := read_frame(rfd)) is not None and os.getppid() == parent:
            cwd, fn, task = loads(frame)
            del frame
            _follow(cwd)
            write_frame(wfd, _answer(fn, task))
    except BrokenPipeError:
        pass  # the parent is gone
    except Exception as e:  # noqa: BLE001 - told to the parent, which raises WorkerError
        try:
            write_frame(wfd, dumps(("fatal", f"{type(e).__name__}: {e}")))
        except OSError:
            pass
        os._exit(3)
    os._exit(0)
