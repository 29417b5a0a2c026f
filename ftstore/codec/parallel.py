"""Process-parallel map for codec work.

The raptorq binding holds the GIL, so threads would serialise; workers are processes that
open the files themselves, so payloads are never pickled across. Small jobs run in-process
because starting workers costs more than they would save.

Workers are their own program (:mod:`ftstore.codec.worker`), started with
``subprocess`` and spoken to over two pipes each: never a fork of the caller (which may
be a training process with threads and a GPU context), and never a multiprocessing child,
which would import the caller's ``__main__`` and run a guard-less training script again.
They are kept for the life of the process: the first start costs about a tenth of a
second, as much as encoding 64 MiB, so a save warms them in the background while it
stats and opens its files, and later saves find them ready. They exit within moments when
the process dies, however it dies (see :mod:`ftstore.codec.worker`), and at its normal
exit.

Each ``pmap`` call holds the workers it uses, so two threads never interleave frames on
one worker; a call that finds every worker held waits for one. A worker gets its next task
before it has answered the last one, so that it does not idle while the parent's thread
waits for the GIL. A process forked from this one (a data-loader worker, say) forgets the
workers, closes its copies of their pipes, and does its codec work in-process. Functions
sent to workers must be module-level functions of ftstore modules: a worker imports the
module a function comes from, and must never import the host's ``__main__``.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import os
import queue
import select
import selectors
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ftstore import interpreter
from ftstore.codec import worker as worker_program
from ftstore.errors import WorkerError
from ftstore.forks import in_forked_child

T = TypeVar("T")
R = TypeVar("R")

WORKER_MODULES: tuple[str, ...] = ("ftstore.",)
"""Modules whose functions may run in a worker. Never ``__main__``: a worker imports the
module of every function it runs, and importing the host's ``__main__`` runs it."""

_EXIT_WAIT_S = 2.0
_DEPTH = 2  # tasks queued per worker
_PIPE_BYTES = 1 << 20  # asked of the kernel for each task pipe (Linux's unprivileged limit)

_lock = threading.Lock()
_pool: _Pool | None = None


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class _Worker:
    """One worker process and the parent's ends of its pipes.

    ``queued`` holds, oldest first, the index of every task sent and not yet answered, or
    None for one that nobody wants any more (the call that sent it was closed early): the
    next user of the worker reads and drops its reply. Up to ``_DEPTH`` tasks are queued, so
    that a worker finds its next task waiting instead of idling until the parent's thread
    gets the GIL back; but only while the frames it has not answered fit in its pipe, so a
    write never blocks while the worker blocks writing a large reply."""

    def __init__(self, proc: subprocess.Popen, wfd: int, rfd: int) -> None:
        self.proc, self.wfd, self.rfd = proc, wfd, rfd
        self.queued: collections.deque[int | None] = collections.deque()
        self.queued_bytes: collections.deque[int] = collections.deque()
        # A pipe holds its capacity less what the partly read page at its head wastes (up to
        # a page); writes fill the page at its tail before taking a new one.
        self.budget = _pipe_capacity(wfd) - os.sysconf("SC_PAGE_SIZE")
        self.broken = False

    @property
    def busy(self) -> bool:
        return bool(self.queued)

    def can_take(self, size: int) -> bool:
        if not self.queued:
            return True  # it reads the whole frame before it writes anything
        return len(self.queued) < _DEPTH and sum(self.queued_bytes) + size + 8 <= self.budget

    def send(self, frame: bytes, index: int) -> None:
        try:
            worker_program.write_frame(self.wfd, frame)
        except BaseException:
            self.broken = True  # dead, or a frame half written
            raise
        self.queued.append(index)
        self.queued_bytes.append(len(frame) + 8)

    def forget_queued(self) -> None:
        for i in range(len(self.queued)):
            self.queued[i] = None

    def receive(self) -> tuple[int | None, tuple[str, Any] | None]:
        """(index of the task answered, the reply); the reply is None when the worker died."""
        try:
            frame = worker_program.read_frame(self.rfd)
        except worker_program.ProtocolError:
            frame = None
        except BaseException:
            self.broken = True  # a frame half read
            raise
        index = self.queued.popleft() if self.queued else None
        if self.queued_bytes:
            self.queued_bytes.popleft()
        if frame is None:
            self.broken = True
            return index, None
        return index, worker_program.loads(frame)

    def how_it_died(self) -> str:
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "its pipe closed"
        return interpreter.how_it_ended(code) + (", out of memory?" if code == -signal.SIGKILL else "")

    def close_pipes(self) -> None:
        for fd in (self.wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def kill(self) -> None:
        self.close_pipes()
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()


class _Pool:
    """The process's workers. ``count`` includes workers being started; ``size`` is how many
    the latest caller asked for (extra idle ones are stopped when handed back)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.idle: list[_Worker] = []
        self.all: set[_Worker] = set()
        self.count = 0
        self.size = 0
        self.start_error: str | None = None
        self.requests: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.starter: threading.Thread | None = None

    # Workers are started by one thread that lives as long as the process: the kernel's
    # parent-death signal follows the thread that started a worker, so a worker started
    # by a short-lived thread (one save in a thread pool) would be killed when it ended.
    def _start_workers(self) -> None:
        while self.requests.get():
            try:
                w = _spawn()
            except Exception as e:  # noqa: BLE001 - told to whoever waits for a worker
                with self.cond:
                    self.count -= 1
                    self.start_error = f"{type(e).__name__}: {e}"
                    self.cond.notify_all()
                continue
            with self.cond:
                self.all.add(w)
                self.idle.append(w)
                self.cond.notify_all()

    def _grow(self, size: int) -> None:
        """Ask for workers up to ``size`` (called holding ``cond``); never waits."""
        self.size = size
        for w in [w for w in self.idle if w.proc.poll() is not None]:
            self.idle.remove(w)  # died while idle (killed by hand, say): replaced below
            self._forget(w)
            w.kill()
        missing = size - self.count
        if missing <= 0:
            return
        self.count += missing
        for _ in range(missing):
            self.requests.put(1)
        if self.starter is None:
            self.starter = threading.Thread(target=self._start_workers, name="ftstore-codec-workers", daemon=True)
            self.starter.start()

    def _forget(self, w: _Worker) -> None:
        self.all.discard(w)
        self.count -= 1

    def warm(self, size: int) -> None:
        with self.cond:
            self._grow(size)

    def acquire(self, want: int, size: int) -> list[_Worker]:
        """Up to ``want`` workers for the caller alone, at least one; waits for one when all
        are held or still starting."""
        with self.cond:
            self._grow(size)
            while not self.idle:
                if self.count <= 0:
                    raise WorkerError(f"cannot start a codec worker process: {self.start_error}")
                self.cond.wait()
            got, self.idle = self.idle[:want], self.idle[want:]
            return got

    def try_acquire(self, want: int) -> list[_Worker]:
        with self.cond:
            got, self.idle = self.idle[:want], self.idle[want:]
            return got

    def release(self, workers: Iterable[_Worker]) -> None:
        """Hand workers back; a broken one is stopped, a busy one keeps its unwanted reply
        for the next user to drop."""
        stop = []
        with self.cond:
            for w in workers:
                if w.broken or (self.count > self.size and not w.busy):
                    self._forget(w)
                    stop.append(w)
                else:
                    w.forget_queued()
                    self.idle.append(w)
            self.cond.notify_all()
        for w in stop:
            w.kill()

    def close_in_forked_child(self) -> None:
        """Close this process's copies of the parent's pipes (without them, workers see end
        of file when the parent dies) and touch nothing else of the parent's."""
        for w in list(self.all):
            w.close_pipes()

    def shutdown(self) -> None:
        """At exit: close every pipe (workers exit on end of file), reap, kill stragglers."""
        with self.cond:
            workers, self.idle = list(self.all), []
            self.all.clear()
            self.count = self.size = 0
        for w in workers:
            w.close_pipes()
        for w in workers:
            try:
                w.proc.wait(timeout=_EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                w.kill()


def _spawn() -> _Worker:
    child_in, wfd = os.pipe()
    rfd, child_out = os.pipe()
    try:
        proc = subprocess.Popen(
            interpreter.command("ftstore.codec.worker", str(os.getpid())),
            stdin=child_in,
            stdout=child_out,
            close_fds=True,
        )
    except BaseException:
        os.close(wfd)
        os.close(rfd)
        raise
    finally:
        os.close(child_in)
        os.close(child_out)
    return _Worker(proc, wfd, rfd)


def _pipe_capacity(fd: int) -> int:
    """Bytes the pipe holds before a write blocks: raised where the system allows, so that
    decode tasks (tens of KiB of hashes each) can queue too."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (AttributeError, OSError):
        pass
    try:
        return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    except (AttributeError, OSError):
        return select.PIPE_BUF  # the least any system guarantees


def _cwd() -> str | None:
    """Sent with every task: relative paths mean the same in a worker as in its parent,
    even after the parent changed directory."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _shared_pool() -> _Pool:
    global _pool
    with _lock:
        if _pool is None:
            _pool = _Pool()
        return _pool


def _forget_pool_in_child() -> None:
    global _pool, _lock
    if _pool is not None:
        _pool.close_in_forked_child()
    _pool, _lock = None, threading.Lock()


def _stop_workers_at_exit() -> None:
    if _pool is not None and not in_forked_child():
        _pool.shutdown()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)
atexit.register(_stop_workers_at_exit)


def _in_process_only() -> bool:
    """A forked child (whether or not this module was imported before the fork) and a
    worker do their codec work in-process."""
    return in_forked_child() or worker_program.RUNNING


def warm(jobs: int | None = None) -> None:
    """Start the worker processes in the background, so that a ``pmap`` soon after finds
    them running. Never blocks, never raises: a failure shows up, with its cause, in
    ``pmap``."""
    jobs = jobs or default_jobs()
    if jobs <= 1 or _in_process_only():
        return
    try:
        _shared_pool().warm(jobs)
    except Exception:  # noqa: BLE001 - reported by the pmap that needs the workers
        pass


def worker_pids() -> list[int]:
    """Process ids of this process's codec workers (for benchmarks and tests that measure
    or watch them)."""
    pool = _pool
    if pool is None:
        return []
    with pool.cond:
        return sorted(w.proc.pid for w in pool.all)


def _check_runnable(fn: Callable) -> None:
    module, name = getattr(fn, "__module__", None) or "", getattr(fn, "__qualname__", "")
    if not module.startswith(WORKER_MODULES) or not name.isidentifier():
        raise TypeError(f"codec workers run module-level functions of ftstore modules only, not {module}.{name}")


def pmap(fn: Callable[[T], R], tasks: list[T], jobs: int | None, *, parallel: bool = True) -> Iterator[R]:
    """Yield ``fn(task)`` for every task, in order. Closing the iterator early cancels the
    tasks not yet started. ``fn`` runs in a worker, so it must be a module-level function
    of an ftstore module."""
    jobs = jobs or default_jobs()
    if jobs <= 1 or len(tasks) <= 1 or not parallel or _in_process_only():
        yield from map(fn, tasks)
        return
    _check_runnable(fn)
    yield from _map(_shared_pool(), fn, tasks, jobs)


def _map(pool: _Pool, fn: Callable[[T], R], tasks: list[T], jobs: int) -> Iterator[R]:
    want = min(jobs, len(tasks))
    held: list[_Worker] = []
    sel = selectors.DefaultSelector()
    replies: dict[int, tuple[str, Any]] = {}
    sent = done = 0
    stop = len(tasks)  # no task at or after the first failed one is sent
    frame: bytes | None = None  # the next task's, pickled once

    def hold(workers: list[_Worker]) -> None:
        for w in workers:
            held.append(w)
            sel.register(w.rfd, selectors.EVENT_READ, w)

    def died(w: _Worker) -> WorkerError:
        return WorkerError(f"a codec worker process died ({w.how_it_died()}); nothing was changed")

    try:
        hold(pool.acquire(want, jobs))
        while done < len(tasks):
            if len(held) < want and sent < stop:
                hold(pool.try_acquire(want - len(held)))
            for depth in range(1, _DEPTH + 1):  # one task to every worker, then a second
                for w in held:
                    if sent >= stop or len(w.queued) >= depth:
                        continue
                    frame = frame or worker_program.dumps((_cwd(), fn, tasks[sent]))
                    if not w.can_take(len(frame)):
                        continue
                    try:
                        w.send(frame, sent)
                    except BrokenPipeError:
                        raise died(w) from None
                    sent, frame = sent + 1, None
            while done in replies:
                status, value = replies.pop(done)
                done += 1
                if status != "ok":
                    raise value
                yield value
            if done >= len(tasks):
                break
            for key, _ in sel.select():
                w = key.data
                index, reply = w.receive()
                if reply is None:
                    if index is None and not w.queued:  # died with earlier callers' tasks only
                        sel.unregister(w.rfd)
                        held.remove(w)
                        pool.release([w])
                        if not held:
                            hold(pool.acquire(want, jobs))
                        continue
                    raise died(w)
                if reply[0] == "fatal":
                    w.broken = True
                    raise WorkerError(f"a codec worker process failed: {reply[1]}")
                if index is not None:
                    replies[index] = reply
                    if reply[0] != "ok":
                        stop = min(stop, index)
    finally:
        sel.close()
        pool.release(held)


__all__ = ["WORKER_MODULES", "default_jobs", "pmap", "warm", "worker_pids"]
