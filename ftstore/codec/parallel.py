"""Process-parallel map for codec work.

The raptorq binding holds the GIL, so threads would serialise; workers are processes that
open the files themselves, so payloads are never pickled across. Small jobs run in-process
because starting workers costs more than they would save.

Workers come from a forkserver (never a fork of the caller, which may be a training process
with threads and a GPU context) and are kept for the life of the process: the first start
costs about a tenth of a second, as much as encoding 64 MiB, so a save warms the pool in
the background while it stats and opens its files, and later saves find it ready.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from ftstore.errors import WorkerError

T = TypeVar("T")
R = TypeVar("R")

_PRELOAD = ["ftstore.codec.encoder", "ftstore.codec.decoder"]
_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_jobs = 0
_in_forked_child = False


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _keep_freed_memory() -> None:
    """Worker initializer: let glibc reuse freed memory instead of returning it to the
    kernel. Every stripe allocates a few MiB; on a VM each fresh page costs a fault, and
    faults cost a third of the encoding speed (measured: 445 vs 600 MB/s per core). The
    worker's peak use, not these thresholds, bounds what it keeps."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc only
    if mallopt is not None:
        mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def _shared_pool(jobs: int) -> ProcessPoolExecutor:
    global _pool, _pool_jobs
    with _lock:
        if _pool is None or _pool_jobs != jobs:
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(_PRELOAD)  # workers start with the codec imported
            _pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_keep_freed_memory)
            _pool_jobs = jobs
        return _pool


def _discard(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def _forget_pool_in_child() -> None:
    """A process forked from one that has used the pool (a data-loader worker, say) holds
    only copies of the parent's pool and forkserver handles, whose threads and processes are
    not its own, and multiprocessing cannot start a new forkserver there: such a child does
    its codec work in-process."""
    global _pool, _lock, _in_forked_child
    _pool, _lock, _in_forked_child = None, threading.Lock(), True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def warm(jobs: int | None = None) -> None:
    """Start the worker processes in the background, so that a ``pmap`` soon after finds
    them running. Never raises: a failure here shows up, with its cause, in ``pmap``."""
    jobs = jobs or default_jobs()
    if jobs <= 1 or _in_forked_child or (_pool is not None and _pool_jobs == jobs):
        return  # nothing to start: the pool for these jobs is up or coming up

    def start() -> None:
        try:
            pool = _shared_pool(jobs)
            for f in [pool.submit(os.getpid) for _ in range(jobs)]:
                f.result()
        except Exception:  # noqa: BLE001 - reported by the pmap that needs the pool
            pass

    threading.Thread(target=start, name="ftstore-warm-pool", daemon=True).start()


def pmap(fn: Callable[[T], R], tasks: list[T], jobs: int | None, *, parallel: bool = True) -> Iterator[R]:
    """Yield ``fn(task)`` for every task, in order. Closing the iterator early cancels the
    tasks not yet started."""
    jobs = jobs or default_jobs()
    if jobs <= 1 or len(tasks) <= 1 or not parallel or _in_forked_child:
        yield from map(fn, tasks)
        return
    pool = _shared_pool(jobs)
    try:
        yield from pool.map(fn, tasks)
    except BrokenProcessPool:
        _discard(pool)  # the next call starts afresh
        raise WorkerError("a codec worker process died (killed, or out of memory?); nothing was changed") from None


def chunks(items: Iterable[T], size: int) -> list[list[T]]:
    out: list[list[T]] = []
    for x in items:
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].append(x)
    return out
