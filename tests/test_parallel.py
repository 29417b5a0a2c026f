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
