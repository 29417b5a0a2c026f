"""The shared codec worker pool: results in order, a worker that dies is reported and
replaced, callers in two threads never share a worker, closing early stops the work, and
nothing from ``__main__`` is ever sent to a worker."""

import os
import threading
import time
from pathlib import Path

import pytest

from ftstore.codec import parallel
from ftstore.codec.parallel import pmap
from ftstore.errors import WorkerError


@pytest.fixture(autouse=True)
def workers_may_run_test_functions(monkeypatch):
    """Workers run functions of ftstore modules only; these tests send their own."""
    monkeypatch.setattr(parallel, "WORKER_MODULES", ("ftstore.", "tests."))


def square_or_die(x: int) -> int:
    if x == 3:
        os._exit(9)  # as if killed by the OOM killer
    return x * x


def square_slowly(task: tuple[int, float, str | None]) -> tuple[int, int]:
    """(x*x, worker pid) after a nap; notes in ``log`` that the task started."""
    x, nap, log = task
    if log:
        with open(log, "a") as f:
            f.write(f"{x}\n")
    time.sleep(nap)
    return x * x, os.getpid()


def fail_on_two(x: int) -> int:
    if x == 2:
        raise KeyError("two")
    return x


def tenfold(data: bytes) -> bytes:
    return data * 10


def cwd_listing(_: int) -> list[str]:
    return sorted(os.listdir("."))


def test_a_dead_worker_is_a_clear_error_and_the_pool_recovers():
    with pytest.raises(WorkerError, match="worker process died"):
        list(pmap(square_or_die, [1, 2, 3, 4], 2))
    assert list(pmap(square_or_die, [1, 2, 4, 5], 2)) == [1, 4, 16, 25]


def test_results_come_in_order_from_several_workers():
    out = list(pmap(square_slowly, [(x, 0.02 * (x % 3), None) for x in range(12)], 2))
    assert [r for r, _ in out] == [x * x for x in range(12)]
    pids = {pid for _, pid in out}
    assert os.getpid() not in pids and len(pids) == 2


def test_an_exception_in_a_task_is_raised_as_itself():
    with pytest.raises(KeyError, match="two"):
        list(pmap(fail_on_two, [0, 1, 2, 3], 2))
    assert list(pmap(fail_on_two, [0, 1, 3], 2)) == [0, 1, 3]


def test_closing_early_cancels_the_rest_and_the_next_call_gets_its_own_results(tmp_path):
    log = tmp_path / "started"
    it = pmap(square_slowly, [(x, 0.3, str(log)) for x in range(10)], 2)
    assert next(it)[0] == 0
    it.close()
    time.sleep(1.0)
    assert len(log.read_text().split()) <= 6  # what was queued to the two workers, not ten
    # the replies nobody wanted any more are dropped, not taken for these
    assert [r for r, _ in pmap(square_slowly, [(x, 0, None) for x in range(5, 9)], 2)] == [25, 36, 49, 64]


def test_large_tasks_and_larger_replies_do_not_deadlock_the_pipes():
    """Tasks queue in a worker's pipe only while they fit: a parent blocked writing a task
    while its worker blocks writing a reply would wait forever."""
    tasks = [bytes([i]) * (700_000 * (1 + i % 3)) for i in range(12)]  # most exceed a pipe
    out: list[bytes] = []
    t = threading.Thread(target=lambda: out.extend(pmap(tenfold, tasks, 2)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "pmap hung"
    assert out == [x * 10 for x in tasks]


def test_two_threads_never_share_a_worker():
    results: dict[int, list[int]] = {}

    def run(k: int) -> None:
        tasks = [(k * 100 + x, 0.01, None) for x in range(15)]
        results[k] = [r for r, _ in pmap(square_slowly, tasks, 2)]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(not t.is_alive() for t in threads)
    for k in range(3):
        assert results[k] == [(k * 100 + x) ** 2 for x in range(15)]


def test_workers_started_by_a_thread_outlive_it():
    """The kernel's parent-death signal follows the thread that started a worker: workers
    must come from a thread that lasts, not from the (short-lived) caller's."""
    list(pmap(square_slowly, [(1, 0, None), (2, 0, None)], 2))  # the pool is up
    before = set(parallel.worker_pids())
    t = threading.Thread(target=parallel.warm, args=(4,))
    t.start()
    t.join()
    deadline = time.monotonic() + 30
    while len(parallel.worker_pids()) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = set(parallel.worker_pids()) - before
    assert len(started) == 2
    time.sleep(0.5)
    assert all(Path(f"/proc/{pid}").exists() for pid in started)
    assert {pid for _, pid in pmap(square_slowly, [(x, 0.05, None) for x in range(8)], 4)} >= started


def test_workers_use_the_callers_current_directory(tmp_path, monkeypatch):
    (tmp_path / "here").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert list(pmap(cwd_listing, [1, 2], 2)) == [["here"], ["here"]]


def test_functions_from_main_or_outside_ftstore_are_refused(monkeypatch):
    monkeypatch.setattr(parallel, "WORKER_MODULES", ("ftstore.",))

    def nested(x):
        return x

    guardless = square_or_die.__class__(square_or_die.__code__, {"os": os}, "square_or_die")
    guardless.__module__ = "__main__"
    for fn in (guardless, nested, lambda x: x, square_or_die):
        with pytest.raises(TypeError, match="module-level functions of ftstore modules"):
            list(pmap(fn, [1, 2], 2))
    assert list(pmap(guardless, [1, 2], 1)) == [1, 4]  # in-process: nothing is sent


def test_a_forked_child_does_not_use_the_parents_pool():
    """A child forked after the parent used the pool (as data-loader workers are) must not
    write into the parent's pipes or wait on them: it works in-process, and the parent's
    workers keep working."""
    assert list(pmap(square_or_die, [1, 2], 2)) == [1, 4]
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = list(pmap(square_or_die, [5, 6], 2)) == [25, 36] and parallel._pool is None
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert list(pmap(square_or_die, [7, 8], 2)) == [49, 64]
