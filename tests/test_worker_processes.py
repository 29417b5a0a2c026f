"""Codec workers seen from the host process: real scripts, run as their own processes.

A training script without a ``__main__`` guard runs once; a host killed with SIGKILL
mid-save leaves no ftstore process behind, nor does one that exits normally; small saves
start no worker; hosts with threads, forked data-loader workers or CUDA save as usual.
Every process a script starts carries a marker in its environment, so that the checks
see only this test's processes.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = "FTSTORE_TEST_MARKER"


def script_env(marker: str) -> dict[str, str]:
    """The test's own environment, this checkout first on the path, and the marker."""
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **{MARKER: marker})


def marked_processes(marker: str, but: int | None = None) -> list[str]:
    """Command lines of live processes (other than ``but``) with ``marker`` in their
    environment that mention ftstore (zombies have no environment left, and are not
    running anything)."""
    tag = f"{MARKER}={marker}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == but:
            continue
        try:
            environ = (d / "environ").read_bytes()
            cmdline = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag in environ.split(b"\0") and b"ftstore" in cmdline and state != "Z":
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{d.name}: {command[:120]}")
    return found


def wait_until_gone(marker: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def write_random(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return path


def run_script(tmp_path: Path, body: str, marker: str, timeout: float = 240, args: tuple[str, ...] = ()):
    script = tmp_path / f"script_{uuid.uuid4().hex[:6]}.py"
    script.write_text(COUNT_WORKERS + textwrap.dedent(body))
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=script_env(marker),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hung script's children are killed with it
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# Heads every script: counts the script's codec workers from /proc, its own view rather
# than the pool's.
COUNT_WORKERS = """import os


def my_workers():
    me, n = str(os.getpid()), 0
    for d in os.listdir("/proc"):
        try:
            ppid = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]
            cmd = open(f"/proc/{d}/cmdline", "rb").read()
        except OSError:
            continue
        n += ppid == me and b"ftstore.codec.worker" in cmd
    return n

"""


def test_a_script_without_a_main_guard_runs_once_and_leaves_nothing_behind(tmp_path):
    marker = uuid.uuid4().hex
    state = write_random(tmp_path / "state.bin", 64)
    body = f"""
        import os
        with open({str(tmp_path / "runs")!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
        from ftstore import Store
        store = Store.open({str(tmp_path / "store")!r}, create=True)
        store.save({str(state)!r}, "state", jobs=2)
        print("workers", my_workers())
        print("saved")
    """
    r = run_script(tmp_path, body, marker)
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "runs").read_text().split()) == 1  # the top-level code ran once
    assert "saved" in r.stdout and "workers 0" not in r.stdout, r.stdout  # the save did use workers
    assert r.stderr == ""
    assert wait_until_gone(marker, 5) == []
    check = subprocess.run(
        [sys.executable, "-m", "ftstore.cli", "verify", "state", "--store", str(tmp_path / "store")],
        env=script_env(marker),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0 and check.stdout.startswith("ok"), check.stdout + check.stderr


def test_a_host_killed_mid_save_leaves_no_ftstore_process(tmp_path):
    marker = uuid.uuid4().hex
    src = write_random(tmp_path / "big.bin", 256)
    script = tmp_path / "saver.py"
    script.write_text(
        textwrap.dedent(f"""
        from ftstore import Store
        store = Store.open({str(tmp_path / "store")!r}, create=True)
        while True:  # killed mid-save, however fast the machine
            store.save({str(src)!r}, "big", jobs=2)
        """)
    )
    host = subprocess.Popen([sys.executable, str(script)], env=script_env(marker), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(marked_processes(marker, but=host.pid)) < 2:  # the workers (whatever starts them)
            assert host.poll() is None, host.returncode
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.02)
        time.sleep(0.3)  # the workers are encoding
        assert host.poll() is None, host.returncode
        host.send_signal(signal.SIGKILL)
        assert host.wait(timeout=10) == -signal.SIGKILL
        assert wait_until_gone(marker, 5) == []
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


def test_small_saves_start_no_worker(tmp_path):
    marker = uuid.uuid4().hex
    small = write_random(tmp_path / "small.bin", 1)
    below = tmp_path / "below.bin"
    with open(below, "wb") as f:
        f.write(os.urandom(16 * 1024 * 1024 - 1))
    body = f"""
        import os
        from ftstore import Store, load, verify
        from ftstore.codec import parallel
        from ftstore.codec.encoder import PARALLEL_MIN_BYTES
        assert os.path.getsize({str(below)!r}) < PARALLEL_MIN_BYTES
        store = Store.open({str(tmp_path / "store")!r}, create=True)
        store.save({str(small)!r}, "small", jobs=2)
        store.save({str(below)!r}, "below", jobs=2)
        assert all(h.intact for h in verify(store))
        load(store, "below", {str(tmp_path / "out.bin")!r}, jobs=2)
        print("pool", parallel._pool, "workers", my_workers())
    """
    r = run_script(tmp_path, body, marker)
    assert r.returncode == 0, r.stderr
    assert "pool None workers 0" in r.stdout, r.stdout
    assert (tmp_path / "out.bin").read_bytes() == below.read_bytes()


def test_a_host_with_busy_threads_saves_with_workers(tmp_path):
    marker = uuid.uuid4().hex
    src = write_random(tmp_path / "src.bin", 32)
    body = f"""
        import os, threading, time
        from ftstore import Store
        stop = threading.Event()
        def spin():
            while not stop.is_set():
                sum(range(1000))
        def nap():
            while not stop.is_set():
                time.sleep(0.001)
        threads = [threading.Thread(target=f, daemon=True) for f in (spin, spin, nap, nap)]
        for t in threads:
            t.start()
        store = Store.open({str(tmp_path / "store")!r}, create=True)
        for i in range(2):
            store.save({str(src)!r}, f"a{{i}}", jobs=2)
        print("workers", my_workers())
        stop.set()
    """
    r = run_script(tmp_path, body, marker, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "workers 0" not in r.stdout, r.stdout
    assert wait_until_gone(marker, 5) == []


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_fork_based_dataloader_workers_that_use_the_codec_do_not_hang(tmp_path):
    """A host that used its workers forks data-loader workers; their codec calls run
    in-process (they neither wait on nor write into the host's pipes), and the host's
    workers still work afterwards."""
    marker = uuid.uuid4().hex
    src = write_random(tmp_path / "src.bin", 20)
    body = f"""
        import torch
        from torch.utils.data import DataLoader, Dataset
        from ftstore import Store
        from ftstore.codec import parallel
        from ftstore.hashing import symbol_hash

        store = Store.open({str(tmp_path / "store")!r}, create=True)
        store.save({str(src)!r}, "before", jobs=2)
        assert parallel._pool is not None and my_workers() > 0
        blocks = [bytes([i]) * 4096 for i in range(8)]
        want = [symbol_hash(b) for b in blocks]

        class Hashing(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                ok = list(parallel.pmap(symbol_hash, blocks, 2)) == want and parallel._pool is None
                return torch.tensor(int(ok))

        loader = DataLoader(Hashing(), batch_size=1, num_workers=2, multiprocessing_context="fork")
        print("children", [int(b) for b in loader])
        store.save({str(src)!r}, "after", jobs=2)
        print("versions", len(store.keys()))
    """
    r = run_script(tmp_path, body, marker, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "children [1, 1, 1, 1]" in r.stdout and "versions 2" in r.stdout, r.stdout
    assert wait_until_gone(marker, 5) == []


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or not Path("/dev/nvidiactl").exists(), reason="needs torch and a GPU"
)
def test_a_host_with_a_cuda_context_saves_with_workers(tmp_path):
    marker = uuid.uuid4().hex
    body = f"""
        import os, torch
        from ftstore import Store
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA")
        x = torch.randn(16 << 20, device="cuda")  # 64 MiB on the GPU: a live CUDA context
        torch.save(x.cpu(), {str(tmp_path / "x.pt")!r})
        Store.open({str(tmp_path / "store")!r}, create=True).save({str(tmp_path / "x.pt")!r}, "x", jobs=2)
        print("workers", my_workers())
    """
    r = run_script(tmp_path, body, marker)
    if "no CUDA" in r.stderr:
        pytest.skip("torch sees no CUDA device")
    assert r.returncode == 0, r.stderr
    assert "workers 0" not in r.stdout, r.stdout
    assert wait_until_gone(marker, 5) == []
