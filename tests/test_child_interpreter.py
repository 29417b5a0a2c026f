"""Codec workers and background protectors run this very ftstore, under their parent's
isolation flags, with the standard library ahead of the folder ftstore came from: real
trainer processes, real children, modules planted where a wrong path would find them."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import ftstore
from ftstore import interpreter
from ftstore.documents import ArtifactKey
from ftstore.training.protection import BackgroundProtector

torch = pytest.importorskip("torch")

# Modules the children import, planted where they must not be found: each leaves a mark.
_STANDARD = ("struct", "random", "pickle")

# A trainer: a save big enough for the codec workers, and a checkpoint protected in the
# background. It prints the workers' count and whether the checkpoint got its sidecar.
_TRAINER = """\
import os, sys
{setup}
import torch
from ftstore import CheckpointManager, Store
from ftstore.codec import parallel
store = Store.open({store!r}, create=True)
with open({payload!r}, "wb") as f:
    f.write(os.urandom(40 << 20))
store.save({payload!r}, name="big")
workers = len(parallel.worker_pids())
ck = CheckpointManager(store, "run", background=True)
ck.save(1, {{"w": torch.ones(1000)}})
ck.wait_until_finished()
print(workers, ck.checkpoints()[0].protected, store.check("big").intact)
"""


def _plant(folder: Path, marks: Path, names: tuple[str, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.py").write_text(
            f"open({str(marks / name)!r}, 'w').write('imported')\nraise ImportError('planted {name}')\n")


def _run(tmp_path: Path, flags: list[str], setup: str, env: dict[str, str]) -> str:
    script = tmp_path / "train.py"
    script.write_text(_TRAINER.format(setup=setup, store=str(tmp_path / "s"), payload=str(tmp_path / "big.bin")))
    res = subprocess.run([sys.executable, *flags, str(script)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_children_keep_the_parents_isolation_flags(tmp_path):
    """A trainer run with -I ignores PYTHONPATH; its workers and protectors must too. Before,
    they were started without the flag, and a PYTHONPATH the trainer ignored (here, one
    whose blake3 and struct fail) broke both."""
    marks = tmp_path / "marks"
    marks.mkdir()
    _plant(tmp_path / "elsewhere", marks, _STANDARD + ("blake3",))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "elsewhere"))
    assert _run(tmp_path, ["-I"], "", env) == "2 True True"
    assert sorted(os.listdir(marks)) == []


def test_the_folder_ftstore_came_from_goes_after_the_standard_library(tmp_path):
    """ftstore installed in a site folder that also holds stale copies of standard modules
    (a backport left behind): the trainer, with that folder after the standard library,
    never sees them. Its children must not either, and must run that folder's ftstore.
    Before, the folder went first on their PYTHONPATH."""
    site, marks = tmp_path / "site", tmp_path / "marks"
    marks.mkdir()
    shutil.copytree(Path(ftstore.__file__).parent, site / "ftstore", ignore=shutil.ignore_patterns("__pycache__"))
    _plant(site, marks, _STANDARD)
    marks_of_ours = tmp_path / "ours"
    marks_of_ours.mkdir()
    for module in ("codec/worker.py", "engine/background.py"):
        path = site / "ftstore" / module
        path.write_text(path.read_text() + f"\nopen({str(marks_of_ours / path.stem)!r}, 'w').write(__file__)\n")
    setup = (
        "stdlib = os.path.dirname(os.__file__)\n"
        "at = max(i for i, p in enumerate(sys.path) if p == stdlib) + 1\n"
        f"sys.path.insert(at, {str(site)!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert _run(tmp_path, [], setup, env) == "2 True True"
    assert sorted(os.listdir(marks)) == []  # no stale module ran in any process
    assert sorted(os.listdir(marks_of_ours)) == ["background", "worker"]
    assert all(Path((marks_of_ours / m).read_text()).is_relative_to(site) for m in ("background", "worker"))


def test_flags_name_what_the_parent_runs_under():
    code = "from ftstore import interpreter; print(interpreter.flags())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for given, expected in (([], "[]"), (["-I"], "['-I']"), (["-E", "-s"], "['-E', '-s']"),
                            (["-s", "-B", "-S"], "['-s', '-B']"), (["-P"], "['-P']")):
        res = subprocess.run([sys.executable, *given, "-c", code], capture_output=True, text=True, env=env,
                             cwd=interpreter.PACKAGE_ROOT)
        assert res.stdout.strip() == expected, res.stderr


def test_only_modules_of_ftstore_can_be_started():
    for bad in ("os", "ftstore.x; import os", "ftstore.codec.worker\nimport os"):
        with pytest.raises(ValueError):
            interpreter.command(bad)


def test_a_protector_killed_by_a_signal_says_so(store, tmp_path):
    payload = tmp_path / "p.bin"
    payload.write_bytes(os.urandom(1 << 20))
    env = store.save(payload, name="run", protect=False)
    protector = BackgroundProtector(store.url)
    protector.start(ArtifactKey(env.name, env.version), env.artifact_id)
    (job,) = protector._procs.values()
    os.kill(job.proc.pid, signal.SIGKILL)
    with pytest.raises(ftstore.DamageError, match=r"run@1: .*\(killed by SIGKILL\)$|run@1: killed by SIGKILL$"):
        protector.wait()
