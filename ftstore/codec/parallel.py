"""Process-parallel map for codec work.

The raptorq binding holds the GIL, so threads would serialise; workers are processes that
open the files themselves, so payloads are never pickled across. Small jobs run in-process
because starting workers costs more than they would save.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def pmap(fn: Callable[[T], R], tasks: list[T], jobs: int | None, *, parallel: bool = True) -> Iterator[R]:
    """Yield ``fn(task)`` for every task, in any order."""
    jobs = default_jobs() if not jobs else jobs
    if jobs <= 1 or len(tasks) <= 1 or not parallel:
        yield from map(fn, tasks)
        return
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ftstore.codec.encoder", "ftstore.codec.decoder"])  # workers start warm
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
        yield from pool.map(fn, tasks)


def chunks(items: Iterable[T], size: int) -> list[list[T]]:
    out: list[list[T]] = []
    for x in items:
        if not out or len(out[-1]) >= size:
            out.append([])
        out[-1].append(x)
    return out
