"""The shared codec worker pool: a worker that dies is reported, and the next call works."""

import os

import pytest

from ftstore.codec.parallel import pmap
from ftstore.errors import WorkerError


def square_or_die(x: int) -> int:
    if x == 3:
        os._exit(9)  # as if killed by the OOM killer
    return x * x


def test_a_dead_worker_is_a_clear_error_and_the_pool_recovers():
    with pytest.raises(WorkerError, match="worker process died"):
        list(pmap(square_or_die, [1, 2, 3, 4], 2))
    assert list(pmap(square_or_die, [1, 2, 4, 5], 2)) == [1, 4, 16, 25]


def test_a_forked_child_does_not_use_the_parents_pool():
    """A child forked after the parent used the pool (as data-loader workers are) must not
    wait on the parent's copy of it: it works in-process."""
    assert list(pmap(square_or_die, [1, 2], 2)) == [1, 4]
    pid = os.fork()
    if pid == 0:
        try:
            ok = list(pmap(square_or_die, [5, 6], 2)) == [25, 36]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
