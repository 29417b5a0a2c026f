"""Real training runs, killed with SIGKILL mid-run, their newest checkpoint damaged (first
repairably, then beyond repair), resumed through each framework's normal resume path: the
resumed state (global step, weights, optimizer state) is the state of the checkpoint it
resumed from. The runs are tests/training_scripts/*.py, tiny models on CPU."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import files
from ftstore import CheckpointManager, Store
from ftstore.api import scrub
from ftstore.engine.leaves import read_envelope

torch = pytest.importorskip("torch")
SCRIPTS = Path(__file__).parent / "training_scripts"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "default"}


def _kill_when(cmd: list[str], ready, log: Path, timeout: float = 180) -> None:
    """Run a training script until ``ready()``, then SIGKILL it."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *cmd], stdout=out, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended by itself:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the run never got there:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _resume(cmd: list[str]) -> str:
    res = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr


def _store_exists(url: str) -> bool:
    return (Path(url) / "ftstore-store.json").exists()  # the run creates it: written last


def _rot_one_byte(payload: Path) -> None:
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))


def _destroy(payload: Path) -> None:
    payload.write_bytes(bytes(payload.stat().st_size))


def _wait_protected(store: Store, ref: str, timeout: float = 30) -> None:
    """A checkpoint saved with background protection is repairable once its sidecar is in,
    built by a protector that outlives the killed run. A kill that lands between a commit and
    the start of its protector leaves that one pending (valid, not repairable): protected
    then as a scheduled ``scrub --repair`` would."""
    deadline = time.monotonic() + timeout
    while store.read_envelope(ref).raptorq is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if store.read_envelope(ref).raptorq is None:
        scrub(store, repair=True)
    assert store.read_envelope(ref).raptorq is not None


def _same_tensors(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tensors(x, y) for x, y in zip(a, b))
    return a == b


# -- Lightning ---------------------------------------------------------------------------------
def _step_of(path: Path) -> int:
    return int(re.search(r"step=(\d+)", path.name).group(1))


def _lightning_checkpoint_state(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True)
    return {"global_step": ckpt["global_step"], "state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"][0]}


def _assert_lightning_resumed(out: Path, expected: dict) -> None:
    got = torch.load(out, weights_only=True)
    assert got["global_step"] == expected["global_step"]
    assert _same_tensors(dict(got["state_dict"]), dict(expected["state_dict"]))
    assert _same_tensors(got["optimizer"]["state"], expected["optimizer"]["state"])
    assert got["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]


def test_lightning_killed_damaged_and_resumed_with_ckpt_path_last(tmp_path):
    pytest.importorskip("lightning")
    from ftstore.integrations.lightning import FtstoreCheckpointIO

    store_url, ckpts = str(tmp_path / "store"), tmp_path / "ckpts"
    script = str(SCRIPTS / "lightning_run.py")
    regular = lambda: [p for p in ckpts.glob("*.ckpt") if not p.is_symlink()]  # noqa: E731
    _kill_when([script, "train", store_url, str(ckpts)], lambda: len(regular()) >= 3, tmp_path / "train.log")
    store, io = Store.open(store_url), FtstoreCheckpointIO(Store.open(store_url))

    # repairable damage under the newest checkpoint: "last" resumes from it, repaired
    newest = (ckpts / "last.ckpt").resolve()
    expected = _lightning_checkpoint_state(newest)
    _rot_one_byte(files(store, io.artifact_name(newest)).payload)  # the file Lightning sees is that payload
    _resume([script, "resume", store_url, str(ckpts), str(tmp_path / "resumed-1.pt")])
    _assert_lightning_resumed(tmp_path / "resumed-1.pt", expected)
    assert read_envelope(files(store, io.artifact_name(newest))).decode_proofs[-1].target == "payload"

    # beyond repair: the newest good checkpoint at no later step, with a warning naming it
    newest = (ckpts / "last.ckpt").resolve()
    candidates = [p for p in regular() if p != newest and _step_of(p) <= _step_of(newest)]
    _destroy(files(store, io.artifact_name(newest)).payload)
    err = _resume([script, "resume", store_url, str(ckpts), str(tmp_path / "resumed-2.pt")])
    used = Path(re.search(r"loading (\S+\.ckpt) \(global step \d+\), the newest checkpoint", err).group(1))
    assert used in candidates and _step_of(used) == max(map(_step_of, candidates))
    _assert_lightning_resumed(tmp_path / "resumed-2.pt", _lightning_checkpoint_state(used))


# -- Keras --------------------------------------------------------------------------------------
def test_keras_killed_damaged_and_resumed_with_initial_epoch(tmp_path):
    pytest.importorskip("keras")
    store_url, dumps = str(tmp_path / "store"), tmp_path / "dumps"
    dumps.mkdir()
    script = str(SCRIPTS / "keras_run.py")
    manager = lambda: CheckpointManager(Store.open(store_url), "keras-run")  # noqa: E731
    _kill_when([script, "train", store_url, str(dumps)],
               lambda: _store_exists(store_url) and len(manager().steps()) >= 3, tmp_path / "train.log")
    store = Store.open(store_url)

    def resumed_matches(out: Path, epoch: int) -> None:
        got, expected = np.load(out), np.load(dumps / f"epoch-{epoch}.npz")
        assert int(got["epoch"]) == epoch
        assert sorted(k for k in got.files if k != "epoch") == sorted(expected.files)
        for k in expected.files:  # weights, and the optimizer's iterations, moments, learning rate
            np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
        assert int(got["opt:adam/iteration"]) == 4 * epoch

    newest = manager().latest()
    _rot_one_byte(files(store, newest.ref).payload)
    _resume([script, "resume", store_url, str(dumps), str(tmp_path / "resumed-1.npz")])
    resumed_matches(tmp_path / "resumed-1.npz", newest.step)

    steps = manager().steps()  # the resumed run saved two more epochs
    assert steps[-2:] == [newest.step + 1, newest.step + 2]
    _destroy(files(store, manager().latest().ref).payload)
    err = _resume([script, "resume", store_url, str(dumps), str(tmp_path / "resumed-2.npz")])
    assert f"skipping damaged checkpoint keras-run@" in err and f"(step {steps[-1]})" in err
    resumed_matches(tmp_path / "resumed-2.npz", steps[-2])
    assert manager().steps()[-2:] == [steps[-2] + 1, steps[-2] + 2]  # the damaged epoch, saved anew
    assert all(h.intact for h in store.verify([c.ref for c in manager().checkpoints()[-2:]]))


# -- plain PyTorch -------------------------------------------------------------------------------
def test_pytorch_loop_killed_damaged_and_resumed_from_its_state_dict(tmp_path):
    store_url, dumps = str(tmp_path / "store"), tmp_path / "dumps"
    dumps.mkdir()
    script = str(SCRIPTS / "torch_run.py")
    manager = lambda: CheckpointManager(Store.open(store_url), "torch-run")  # noqa: E731
    _kill_when([script, "train", store_url, str(dumps)],
               lambda: _store_exists(store_url) and len(manager().steps()) >= 3, tmp_path / "train.log")
    store = Store.open(store_url)

    def resumed_matches(out: Path, step: int) -> None:
        got, expected = torch.load(out, weights_only=True), torch.load(dumps / f"step-{step}.pt", weights_only=True)
        assert got["step"] == expected["step"] == step
        assert _same_tensors(dict(got["model"]), dict(expected["model"]))
        assert _same_tensors(got["optimizer"]["state"], expected["optimizer"]["state"])
        assert got["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]

    newest = manager().latest()
    _wait_protected(store, newest.ref)  # its sidecar comes from a protector that outlived the kill
    _rot_one_byte(files(store, newest.ref).payload)
    _resume([script, "resume", store_url, str(dumps), str(tmp_path / "resumed-1.pt")])
    resumed_matches(tmp_path / "resumed-1.pt", newest.step)

    latest, previous = manager().latest(), manager().steps()[-2]
    _wait_protected(store, latest.ref)
    _destroy(files(store, latest.ref).payload)
    err = _resume([script, "resume", store_url, str(dumps), str(tmp_path / "resumed-2.pt")])
    assert f"skipping damaged checkpoint {latest.ref} (step {latest.step})" in err
    resumed_matches(tmp_path / "resumed-2.pt", previous)
    assert latest.step in manager().steps() and store.check(manager().latest().ref).intact
