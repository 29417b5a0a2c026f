"""CheckpointManager with training states (objects, not paths): written straight into the
store, restored without running code; a step saved again supersedes the old one; NaN is
never the best; background protection and retention never race."""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from .conftest import files
import ftstore
from ftstore import BadInputError, CheckpointManager
from ftstore.engine.integrity import check
from ftstore.engine.leaves import read_envelope
from ftstore.training import protection

torch = pytest.importorskip("torch")


def _state(seed: int, n: int = 1000) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(n, 10, generator=g), "b": torch.zeros(10)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(n, 10, generator=g)}},
                      "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": [0]}]},
        "numpy": {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "flags": np.array([True, False]),
                  "seed": np.int64(seed), "names": np.array(["a", "bc"])},
        "step": seed, "loss": 0.25, "tag": "run", "none": None, "blob": b"\x00\x01",
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (np.ndarray, np.generic)):
        return type(a) is type(b) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_a_state_is_written_straight_into_the_store_and_restored_as_it_was(any_store):
    m = CheckpointManager(any_store, "run")
    for step in (1, 2):
        m.save(step, _state(step), metrics={"loss": 1.0 / step})
    env = any_store.read_envelope("run")
    assert env.metadata["ftstore.format"] == "torch-state" and env.raptorq is not None
    assert any_store.check("run").intact
    restored = m.restore(map_location="cpu")
    assert _equal(_state(2), restored) and m.restored.step == 2
    assert _equal(_state(1), m.restore(step=1))


def test_every_kind_of_value_a_state_may_hold_comes_back(store):
    """What the save accepts, the restore reads back without running code: the edge cases
    (empty bytes and empty arrays are ones Python's pickler writes as a call)."""
    import collections

    state = {
        "empty_bytes": b"", "bytes": b"\xff", "complex": 1 + 2j, "bool": True, "big_int": 2**70,
        "ordered": collections.OrderedDict(b=1, a=2), "keys": {1: "int", 2.5: "float", None: "none", False: "bool"},
        "tuple": (1, ("nested", [None])), "empty_array": np.zeros((0, 3), np.float32), "dates": np.array(["2024-02-29"], "M8[D]"),
        "strings": np.array(["a", "bc"]), "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "strided": np.arange(10)[::3],
        "scalars": [np.float16(1.5), np.uint64(2**63), np.bool_(False), np.str_("s"), np.bytes_(b"")],
        "bf16": torch.ones(3, dtype=torch.bfloat16), "param": torch.nn.Parameter(torch.ones(2)),
        "sparse": torch.eye(3).to_sparse(), "view": torch.arange(10)[2:8:2], "empty_tensor": torch.zeros(0, 5),
        "shape": torch.Size([2, 3]), "dtype": torch.bfloat16, "device": torch.device("cpu"),
        "set": {1, "a"},
    }
    m = CheckpointManager(store, "run")
    m.save(1, state)
    back = m.restore()
    assert back.keys() == state.keys()
    for k in state:
        a, b = state[k], back[k]
        if k == "sparse":
            assert b.is_sparse and torch.equal(a.to_dense(), b.to_dense())
        elif k == "scalars":
            assert [type(x) for x in a] == [type(x) for x in b] and a == b
        else:
            assert _equal(a, b), k
    assert type(back["param"]) is torch.nn.Parameter and list(back["ordered"]) == ["b", "a"]
    assert type(back["shape"]) is torch.Size and type(back["set"]) is set


def test_a_state_saved_after_dill_was_imported_is_restored(store):
    """PtychoPINN imports dill, which swaps its own savers into the standard pickler's
    shared table (for dicts, functions and types): a state saved in a process that imported
    dill before ftstore restores without running code, there and in a process without dill."""
    pytest.importorskip("dill")
    code = (
        "import sys, collections, dill\n"
        "import ftstore.training.state\n"  # before torch, whose import happens to undo dill's change
        "import torch\n"
        "from ftstore import CheckpointManager, Store\n"
        "state = {'complex': 1 + 2j, 'ordered': collections.OrderedDict(b=1, a=2), 'nested': {'x': [1, (2, b'')]},\n"
        "         'w': torch.ones(2)}\n"
        "m = CheckpointManager(Store.open(sys.argv[1]), 'run')\n"
        "m.save(1, state)\n"
        "back = m.restore()\n"
        "assert back['complex'] == 1 + 2j and back['ordered'] == state['ordered'] and back['nested'] == state['nested']\n"
        "assert torch.equal(back['w'], state['w'])\n"
    )
    subprocess.run([sys.executable, "-c", code, store.url], check=True, capture_output=True, timeout=300)
    back = CheckpointManager(store, "run").restore()  # and in a process without dill
    assert back["complex"] == 1 + 2j and list(back["ordered"]) == ["b", "a"]


def test_saving_a_state_reads_nothing_back_and_leaves_no_file_behind(store, monkeypatch):
    """Hashed on its way into the staging folder: no temp file, no second copy, no read."""
    import ftstore.hashing

    def no_reading(*a, **kw):
        raise AssertionError("the payload was read back")

    monkeypatch.setattr(ftstore.hashing, "read_ahead", no_reading)
    m = CheckpointManager(store, "run", background=True)
    m.save(1, _state(1, n=100_000))
    monkeypatch.undo()
    m.wait_until_finished()
    staging = Path(store.url) / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    assert store.check("run").intact and read_envelope(files(store, "run")).raptorq is not None


def test_what_cannot_be_restored_without_running_code_is_refused_at_save_naming_its_key(store):
    m = CheckpointManager(store, "run")
    with pytest.raises(BadInputError, match=r"state\['opt'\]\['hook'\]: a builtins.builtin_function_or_method"):
        m.save(1, {"opt": {"hook": print}})
    with pytest.raises(BadInputError, match=r"state\['a'\]: a numpy object value"):
        m.save(1, {"a": np.array([{}, 1], dtype=object)})
    with pytest.raises(BadInputError, match="not a set"):
        m.save(1, {1, 2})
    with pytest.raises(BadInputError, match=r"state\['f'\]: a builtins.frozenset"):  # torch.load refuses it
        m.save(1, {"f": frozenset({1})})
    assert m.steps() == []



def test_a_tensor_s_attributes_are_checked_like_the_rest_of_the_state(store):
    """torch.save writes a tensor's Python attributes; one weights_only cannot rebuild (a
    date, a module) passed the check, the save committed, and no restore could load it.
    An attribute of plain data still comes back."""
    import datetime

    m = CheckpointManager(store, "run")
    dated = torch.ones(2)
    dated.when = datetime.date(2024, 1, 1)
    with pytest.raises(BadInputError, match=r"state\['x'\]\.when: a datetime.date cannot be checkpointed"):
        m.save(1, {"x": dated})
    owned = torch.nn.Parameter(torch.ones(2))
    owned.owner = torch.nn.Linear(1, 1)
    with pytest.raises(BadInputError, match=r"state\['p'\]\.owner: a torch.nn.modules.linear.Linear"):
        m.save(1, {"p": owned})
    assert m.steps() == []
    tagged = torch.nn.Parameter(torch.ones(2))
    tagged.sequence_parallel = True
    m.save(1, {"p": tagged})
    assert m.restore(step=1)["p"].sequence_parallel is True


def test_a_state_sharing_sub_dicts_is_checked_once_per_object_and_a_cycle_still_refused(store):
    """Each level holding the same child twice made the check walk 2**depth paths: at depth
    40, weeks, for a state torch.save writes at once. A state that holds itself is still
    refused at the depth limit."""
    from ftstore.training.state import check_state

    shared: dict = {"leaf": torch.zeros(1)}
    for _ in range(40):
        shared = {"a": shared, "b": shared}
    check_state({"s": shared})
    looped: list = []
    looped.append(looped)
    with pytest.raises(BadInputError, match="nested more than 64 levels deep"):
        check_state({"l": looped})
    chains = [[1]]
    for _ in range(3):  # each chain 40 deep, ending in the one before: 120 deep in all
        link = chains[-1]
        for _ in range(40):
            link = [link]
        chains.append(link)
    with pytest.raises(BadInputError, match="nested more than 64 levels deep"):
        check_state({"chains": chains})  # met first shallow, each chain is walked again deeper

class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))  # what unpickling would run


def test_restore_never_runs_code_from_a_checkpoint_file(store, tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"x": torch.ones(2), "y": _Exploit(marker)}, evil)
    m = CheckpointManager(store, "run")
    m.save(1, evil)  # a file is stored as it is
    with pytest.raises(BadInputError, match="without running code"):
        m.restore()
    assert not marker.exists()


def test_a_run_resumed_past_a_damaged_checkpoint_saves_that_step_again(store):
    m = CheckpointManager(store, "run", keep_last=3)
    for step in (5, 6, 7):
        m.save(step, _state(step))
    p = files(store, "run").payload
    p.write_bytes(bytes(p.stat().st_size))  # step 7, beyond repair
    with pytest.warns(UserWarning, match="skipping damaged checkpoint run@3 .step 7."):
        assert m.restore()["step"] == 6
    m.save(7, _state(70))  # training goes on from 6 and reaches 7 again
    assert m.steps() == [5, 6, 7]
    assert m.restore()["step"] == 70 and all(h.intact for h in store.verify())


def test_a_nan_metric_is_never_the_best(store, make_file):
    m = CheckpointManager(store, "run", keep_best=1, best_metric="loss")
    for step, loss in ((1, float("nan")), (2, 0.1), (3, 0.5), (4, 0.7)):
        m.save(step, make_file(1000, seed=step), metrics={"loss": loss})
    assert m.steps() == [2, 4]  # the best, and the newest that verifies; never the NaN one


def test_max_mode_ignores_nan_too(store, make_file):
    m = CheckpointManager(store, "run", keep_best=1, best_metric="acc", best_mode="max")
    for step, acc in ((1, 0.9), (2, float("nan")), (3, 0.2)):
        m.save(step, make_file(1000, seed=step), metrics={"acc": acc})
    assert m.steps() == [1, 3]


def test_retention_cancels_pending_protection_instead_of_racing_it(store, monkeypatch, slow_protectors):
    """keep_last=1 with background protection: saves delete earlier versions while their
    protectors are still running (started late here, so that they surely are: retention
    now lets the oldest one finish, and only the versions after it are deleted under a
    running protector); the protector is stopped first, nothing fails, and what is left is
    protected and intact."""
    slow_protectors(1.0)
    running_when_cancelled = []
    real_cancel = protection.BackgroundProtector.cancel

    def cancel(self, key):
        job = self._procs.get(key)
        running_when_cancelled.append(job is not None and job.proc.poll() is None)
        real_cancel(self, key)

    monkeypatch.setattr(protection.BackgroundProtector, "cancel", cancel)
    m = CheckpointManager(store, "run", keep_last=1, background=True)
    for step in range(4):
        m.save(step, _state(step, n=300_000))  # 12 MB: its sidecar takes a while
    m.wait_until_finished()
    assert any(running_when_cancelled)
    assert m.steps() == [3]
    assert read_envelope(files(store, "run")).raptorq is not None and store.check("run").intact
    assert store.backend.orphans() == []


def test_a_version_deleted_under_its_protector_is_not_an_error(store):
    m = CheckpointManager(store, "run", background=True)
    cp = m.save(1, _state(1, n=300_000))
    store.delete(cp.ref)  # by someone else: no cancel first
    m.wait_until_finished()
    assert store.versions("run") == []


def test_a_protector_never_protects_another_artifact_under_a_reused_version(store, make_file):
    env = store.save(make_file(50_000), "run", protect=False)
    res = subprocess.run([sys.executable, "-m", "ftstore.engine.background", store.url, "run", str(env.version),
                          "0" * 32], capture_output=True, text=True)
    assert res.returncode == 0 and "deleted before its sidecar was built" in res.stderr
    assert read_envelope(files(store, "run")).raptorq is None  # left to its own protector
    res = subprocess.run([sys.executable, "-m", "ftstore.engine.background", store.url, "run", str(env.version),
                          env.artifact_id], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert read_envelope(files(store, "run")).raptorq is not None and check(files(store, "run")).intact


def test_a_protector_runs_this_ftstore_and_nothing_from_the_working_folder(tmp_path):
    """A trainer started in a project folder holding its own random.py (or queue.py, ...)
    and importing ftstore from a folder of its own: its protector runs neither the
    project's module (``python -m`` would have put the folder first on its path) nor
    another installed ftstore, and protects the checkpoint."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "random.py").write_text("open(__file__ + '.ran', 'w').write('ran')\nraise SystemExit('shadowed')\n")
    vendored = tmp_path / "vendored"
    shutil.copytree(Path(ftstore.__file__).parent, vendored / "ftstore", ignore=shutil.ignore_patterns("__pycache__"))
    (vendored / "ftstore" / "engine" / "background.py").write_text(
        (vendored / "ftstore" / "engine" / "background.py").read_text()
        + "\nimport os\nopen(os.environ['MARK'], 'w').write(__file__)\n")
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(vendored)!r})\n"
        "import torch\n"
        "from ftstore import Store, CheckpointManager\n"
        f"ck = CheckpointManager(Store.open({str(tmp_path / 's')!r}, create=True), 'run', background=True)\n"
        "ck.save(0, {'w': torch.ones(10)})\n"
        "ck.wait_until_finished()\n"
        "print(ck.checkpoints()[0].protected)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MARK": str(tmp_path / "mark")}
    res = subprocess.run([sys.executable, str(script)], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr
    assert not (project / "random.py.ran").exists()
    assert (tmp_path / "mark").read_text().startswith(str(vendored))


def test_a_protector_that_writes_a_lot_never_blocks_the_wait(store, monkeypatch):
    """Its messages go to a file: PYTHONVERBOSE=2 (hundreds of KiB on stderr) used to fill
    the pipe and hang wait_until_finished for ever."""
    monkeypatch.setenv("PYTHONVERBOSE", "2")
    m = CheckpointManager(store, "run", background=True)
    m.save(0, _state(0, n=1000))
    done = threading.Thread(target=m.wait_until_finished, daemon=True)
    done.start()
    done.join(120)
    assert not done.is_alive() and m.checkpoints()[0].protected
