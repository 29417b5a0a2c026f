import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ftstore import Store


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run multi-GiB tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: use --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store", create=True)


@pytest.fixture
def make_file(tmp_path):
    counter = iter(range(10**6))

    def make(size: int, seed: int = 0) -> Path:
        p = tmp_path / f"src-{next(counter)}.bin"
        p.write_bytes(random.Random(seed).randbytes(size))
        return p

    return make


def run_cli(*args: str, store: Store | None = None, check_rc: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FTSTORE_DEBUG", None)
    cmd = [sys.executable, "-m", "ftstore.cli", *args]
    if store is not None:
        env["FTSTORE_STORE"] = str(store.root)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert "Traceback" not in res.stderr, res.stderr
    if check_rc is not None:
        assert res.returncode == check_rc, (res.returncode, res.stdout, res.stderr)
    return res
