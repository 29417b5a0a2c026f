import re
import signal
import subprocess
import sys
import textwrap
import time

import msgspec
import numpy as np
import pytest
import torch

from .conftest import files
from ftstore import BadInputError, CheckpointManager, DamageError, NotFoundError, Store
from ftstore.engine.integrity import check
from ftstore.api import scrub
from ftstore.engine.leaves import read_envelope


def _ckpt(make_file, step):
    return make_file(20_000 + step, seed=step)


def test_keep_last_n(store, make_file):
    m = CheckpointManager(store, "run", keep_last=2)
    for step in range(0, 50, 10):
        m.save(step, _ckpt(make_file, step))
    assert m.steps() == [30, 40]
    assert m.latest().step == 40


def test_keep_every_k_plus_last(store, make_file):
    m = CheckpointManager(store, "run", keep_last=1, keep_every=20)
    for step in range(0, 70, 10):
        m.save(step, _ckpt(make_file, step))
    assert m.steps() == [0, 20, 40, 60]


@pytest.mark.parametrize("mode, best", [("min", [10, 30]), ("max", [20, 40])])
def test_keep_best_by_metric(store, make_file, mode, best):
    m = CheckpointManager(store, "run", keep_best=2, best_metric="loss", best_mode=mode)
    losses = {10: 0.1, 20: 0.9, 30: 0.2, 40: 0.8}
    for step, loss in losses.items():
        m.save(step, _ckpt(make_file, step), metrics={"loss": loss})
    assert m.steps() == sorted(set(best) | {40})  # the newest valid one always stays
    assert m.checkpoints()[0].metrics["loss"] == losses[m.steps()[0]]


def test_retention_never_deletes_the_newest_valid_checkpoint(store, make_file):
    m = CheckpointManager(store, "run", keep_best=1, best_metric="loss")
    m.save(1, _ckpt(make_file, 1), metrics={"loss": 0.1})
    m.save(2, _ckpt(make_file, 2), metrics={"loss": 5.0})
    assert m.steps() == [1, 2]  # 2 is not among the best, but it is the newest valid
    m.save(3, _ckpt(make_file, 3), metrics={"loss": 9.0})
    assert m.steps() == [1, 3]


def test_a_damaged_newest_checkpoint_does_not_count_as_valid(store, make_file):
    m = CheckpointManager(store, "run", keep_last=1)
    m.save(1, _ckpt(make_file, 1))
    m.keep_last = None
    m.policy.keep_last = None
    m.save(2, _ckpt(make_file, 2))
    p = files(store, "run@2").payload
    p.write_bytes(bytes(p.stat().st_size))  # beyond repair
    m.policy.keep_last = 1
    m._apply_retention()
    assert m.steps() == [1, 2]  # keep_last keeps 2; 1 is the newest *valid* one, so it stays


def test_restore_skips_a_damaged_newest_checkpoint(store, make_file, tmp_path):
    m = CheckpointManager(store, "run")
    ckpts = {s: _ckpt(make_file, s) for s in (1, 2, 3)}
    for s, f in ckpts.items():
        m.save(s, f)
    newest = files(store, "run@3")
    newest.payload.write_bytes(b"\0" * newest.payload.stat().st_size)  # beyond repair
    out = tmp_path / "restored"
    with pytest.warns(UserWarning, match="skipping damaged checkpoint run@3"):
        cp = m.restore(out)
    assert cp.step == 2 and out.read_bytes() == ckpts[2].read_bytes()
    with pytest.raises(DamageError):
        m.restore(out, step=3)
    with pytest.raises(NotFoundError):
        m.restore(out, step=99)


def test_restore_repairs_a_repairable_newest_checkpoint(store, make_file, tmp_path):
    m = CheckpointManager(store, "run")
    f = _ckpt(make_file, 7)
    m.save(7, f)
    p = files(store, "run@1").payload
    data = bytearray(p.read_bytes())
    data[100] ^= 1
    p.write_bytes(bytes(data))
    assert m.restore(tmp_path / "o").step == 7
    assert (tmp_path / "o").read_bytes() == f.read_bytes()


@pytest.mark.parametrize("damage", ["envelope lost", "envelope altered", "envelope lost and payload flipped"])
def test_restore_rebuilds_the_newest_checkpoints_envelope(store, make_file, tmp_path, damage):
    """A lost or altered envelope is repaired from the sidecar, as ``load`` does: the resume
    continues from the newest step, not silently from an older one."""
    m = CheckpointManager(store, "run")
    m.save(1, make_file(20_000, seed=1))
    newest = make_file(20_000, seed=2)
    m.save(2, newest)
    paths = files(store, "run@2")
    if damage == "envelope altered":
        paths.envelope.write_bytes(paths.envelope.read_bytes().replace(b'"2"', b'"3"', 1))
    else:
        paths.envelope.unlink()
    if "payload" in damage:
        with open(paths.payload, "r+b") as f:
            f.write(b"\xff" * 10)
    assert m.restore(tmp_path / "out").step == 2
    assert (tmp_path / "out").read_bytes() == newest.read_bytes()
    assert check(paths).intact


def test_background_protection_finishes(store, make_file):
    m = CheckpointManager(store, "run", background=True)
    m.save(1, make_file(3_000_000))
    env = read_envelope(files(store, "run@1"))
    assert check(files(store, "run@1")).intact  # valid and verifiable even while pending
    m.wait_until_finished()
    env = read_envelope(files(store, "run@1"))
    assert env.raptorq is not None and files(store, "run@1").sidecar.exists()
    assert check(files(store, "run@1")).intact


def test_background_protection_uses_the_overhead_asked_for(store, make_file, tmp_path):
    """A sidecar built in the background repairs as much as one built in line: with 50%
    overhead, a quarter of the payload zeroed is repaired, not lost."""
    src = make_file(1_000_000)
    m = CheckpointManager(store, "run", background=True, overhead=0.5)
    m.save(1, src)
    m.wait_until_finished()
    assert read_envelope(files(store, "run@1")).raptorq.overhead == 0.5
    with open(files(store, "run@1").payload, "r+b") as f:
        f.write(bytes(250_000))
    store.load("run@1", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == src.read_bytes()


def test_background_protection_survives_a_killed_parent(store, make_file):
    src = make_file(8_000_000)
    code = textwrap.dedent(f"""
        import os, signal
        from ftstore import Store, CheckpointManager
        m = CheckpointManager(Store.open({store.url!r}), "run", background=True)
        m.save(5, {str(src)!r})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    paths = files(store, "run@1")
    deadline = time.monotonic() + 60
    while read_envelope(paths).raptorq is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_envelope(paths).raptorq is not None
    assert check(paths).intact


def test_scrub_repair_protects_an_artifact_left_pending(store, make_file):
    store.save(make_file(100_000), "run", protect=False)
    paths = files(store, "run@1")
    assert read_envelope(paths).raptorq is None and not paths.sidecar.exists()
    assert scrub(store).artifacts[0].status == "ok" and read_envelope(paths).raptorq is None  # report-only
    report = scrub(store, repair=True)
    assert report.artifacts[0].protected and read_envelope(paths).raptorq is not None


@pytest.mark.parametrize("recorded, built", [(None, 0.30), ("0.3x", 0.10), ("9.0", 0.10)])
def test_a_pending_artifact_gets_the_overhead_its_saver_asked_for(store, make_file, recorded, built):
    """A trainer asking for 30% that died before its protector finished: the scrub that
    takes over builds 30%, not the default 10%. A record that is not a usable overhead
    (written by hand) gives the default."""
    metadata = {} if recorded is None else {"note": "x"}
    store.save(make_file(100_000), "run", metadata=metadata, overhead=0.30, protect=False)
    paths = files(store, "run@1")
    if recorded is not None:  # as if edited: the sidecar's copy is rebuilt from the envelope
        env = read_envelope(paths)
        assert env.metadata["ftstore.overhead"] == "0.3"
        paths.write_envelope(msgspec.structs.replace(env, metadata={**env.metadata, "ftstore.overhead": recorded}))
    report = scrub(store, repair=True)
    assert report.artifacts[0].protected
    assert read_envelope(paths).raptorq.overhead == pytest.approx(built)
    assert check(paths).intact


def test_steps_are_non_negative_and_a_step_saved_again_supersedes_the_old_one(store, make_file):
    m = CheckpointManager(store, "run")
    first = m.save(1, _ckpt(make_file, 1))
    again = m.save(1, _ckpt(make_file, 2))  # a resumed run saves step 1 again
    assert [(c.step, c.version) for c in m.checkpoints()] == [(1, again.version)] and again.version > first.version
    with pytest.raises(ValueError, match="non-negative"):
        m.save(-1, _ckpt(make_file, 1))
    with pytest.raises(ValueError):
        CheckpointManager(store, "run", keep_best=1)


@pytest.mark.parametrize("how", ["rolled back", "a new run under the same name"])
def test_saves_below_the_highest_stored_step_are_kept_and_resumed(store, make_file, tmp_path, how):
    """Retention ranked by step used to delete each new save at once (it was never among
    the last N steps), and restore() brought back the abandoned run."""
    old = CheckpointManager(store, "run", keep_last=2)
    for step in (100, 200, 300):
        old.save(step, _ckpt(make_file, step))
    m = CheckpointManager(store, "run", keep_last=2)
    if how == "rolled back":
        assert m.restore(tmp_path / "o", step=200).step == 200
    saved = {}
    for step in (210, 220, 230) if how == "rolled back" else (1, 2, 3):
        saved[step] = make_file(20_000, seed=1000 + step)
        cp = m.save(step, saved[step])
        assert m.latest() == cp  # never deleted by its own save's retention
    newest = max(saved)
    assert m.steps() == [newest - (10 if how == "rolled back" else 1), newest]
    assert m.restore(tmp_path / "out").step == newest
    assert (tmp_path / "out").read_bytes() == saved[newest].read_bytes()


def test_two_writers_of_one_step_keep_the_later_save(store, make_file):
    """Two managers (two ranks, or an old job beside its restart) save step 5: each save
    supersedes the other writer's older save of it, never the newer one, so one survives
    however their clean-ups interleave."""
    a, b = CheckpointManager(store, "run"), CheckpointManager(store, "run")
    first = a.save(5, make_file(10_000, seed=1))
    later = make_file(10_000, seed=2)
    second = b.save(5, later)
    a._after_save(first)  # a's clean-up, running late
    assert [c.version for c in a.checkpoints()] == [second.version]
    assert store.load_bytes(second.ref)[0].getvalue() == later.read_bytes()


def test_a_restore_takes_over_protection_that_died_with_the_previous_run(store, make_file, tmp_path):
    """The protector of the newest checkpoint killed with the trainer's job: the resumed
    run's restore builds the missing sidecar instead of leaving it unprotected."""
    m = CheckpointManager(store, "run", background=True)
    m.save(1, make_file(3_000_000, seed=1))
    m.save(2, make_file(3_000_000, seed=2))
    m.wait_until_finished()
    lost = make_file(3_000_000, seed=3)
    m._protector.start = lambda key, artifact_id: None  # the protector dies at once
    third = m.save(3, lost)
    assert read_envelope(files(store, third.ref)).raptorq is None
    resumed = CheckpointManager(store, "run", background=True)
    resumed.restore(tmp_path / "out")
    resumed.wait_until_finished()
    assert read_envelope(files(store, third.ref)).raptorq is not None
    with open(files(store, third.ref).payload, "r+b") as f:
        f.write(b"\xff" * 1000)  # now within what its sidecar repairs
    assert resumed.restore(tmp_path / "out2").step == 3
    assert (tmp_path / "out2").read_bytes() == lost.read_bytes()



def test_a_resumed_run_ends_cleanly_after_skipping_a_damaged_unprotected_checkpoint(store, make_file, tmp_path):
    """The newest checkpoint, unprotected (its protector died with the job), took a flipped
    byte. The restore skips it with a warning, as documented; it also started a protector
    for it, which failed, and the run's own wait_until_finished raised that failure at the
    end, though a later save of that step had deleted the version."""
    m = CheckpointManager(store, "run", keep_last=3, background=True)
    m.save(0, make_file(3_000_000, seed=0))
    m.wait_until_finished()
    m._protector.start = lambda key, artifact_id: None  # the protectors die with the job
    m.save(1, make_file(3_000_000, seed=1))
    damaged = m.save(2, make_file(3_000_000, seed=2))
    with open(files(store, damaged.ref).payload, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\xff")
    resumed = CheckpointManager(store, "run", keep_last=3, background=True)
    started = []
    real_start = resumed._protector.start
    resumed._protector.start = lambda key, artifact_id: (started.append(key.version), real_start(key, artifact_id))
    with pytest.warns(UserWarning, match=f"skipping damaged checkpoint {damaged.ref}"):
        assert resumed.restore(tmp_path / "out").step == 1
    assert damaged.version not in started
    resumed.save(2, make_file(3_000_000, seed=3))  # supersedes the damaged version
    resumed.wait_until_finished()
    assert [c.step for c in resumed.checkpoints()] == [0, 1, 2] and all(c.protected for c in resumed.checkpoints())


def test_a_cancelled_protector_s_failure_is_no_failure(store, make_file):
    """A protector that failed before its version was deleted (cancelled): the deletion
    makes its failure moot, and wait() no longer reports it; one not cancelled still is."""
    from ftstore.documents import ArtifactKey
    from ftstore.training.protection import BackgroundProtector

    env = store.save(make_file(200_000, seed=1), "p", protect=False)
    with open(files(store, f"{env.name}@{env.version}").payload, "r+b") as f:
        f.write(b"\xff")
    key = ArtifactKey(env.name, env.version)
    for cancel in (True, False):
        protector = BackgroundProtector(store.url)
        protector.start(key, env.artifact_id)
        deadline = time.monotonic() + 60
        while protector.pending() and time.monotonic() < deadline:  # finished, failed, and reaped
            time.sleep(0.05)
        if cancel:
            protector.cancel(key)
            protector.wait()
        else:
            with pytest.raises(DamageError, match="background protection failed"):
                protector.wait()


_RUN = """
import sys, warnings
import torch
from ftstore import Store, CheckpointManager
role, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ck = CheckpointManager(Store.open(root), "run", keep_last=1, keep_best=1, best_metric="loss")
warnings.simplefilter("error")  # a warning for a checkpoint that was only deleted is a defect too
done = 0
for s in range(n):
    if role == "writer":
        ck.save(s, {"w": torch.full((20_000,), float(s))}, metrics={"loss": float(s % 7)})
    else:
        state = ck.restore()
        assert state["w"][0].item() == ck.restored.step
    done += 1
print(done)
"""


def test_writers_and_a_reader_of_one_run_never_fail_on_each_others_retention(tmp_path):
    """Two ranks save one name with keep_last=1 while an evaluator restores it in a loop:
    a checkpoint deleted by another process between a listing and its use is neither an
    error nor a warning (restore, save and retention used to raise NotFoundError or a raw
    FileNotFoundError, and warn that a deleted envelope "could not be rebuilt")."""
    root = tmp_path / "s"
    m = CheckpointManager(Store.open(root, create=True), "run", keep_last=1)
    m.save(0, {"w": torch.zeros(20_000)})
    procs = [subprocess.Popen([sys.executable, "-c", _RUN, role, str(root), n], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for role, n in (("writer", "40"), ("writer", "40"), ("reader", "60"))]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["40", "40", "60"]
    assert len(m.checkpoints()) in (1, 2) and m.store.backend.orphans() == []


def test_restore_bundle_of_a_model_the_newest_lacks_is_an_error_not_an_older_checkpoint(store):
    """Only a checkpoint that is no longer listed is skipped as deleted: a model missing
    from the newest bundle is the caller's error (it used to restore an older step)."""
    from ftstore import BundleSpec
    from ftstore.bundles.bundle import ModelNotFoundError

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)
    m = CheckpointManager(store, "run")
    m.save(1, BundleSpec({"a": a, "b": b}, "pytorch", {"N": 64, "gridsize": 1}))
    m.save(2, BundleSpec({"a": a}, "pytorch", {"N": 64, "gridsize": 1}))
    with pytest.raises(ModelNotFoundError, match="not in run@2"):
        m.restore_bundle("pytorch", models=["b"], params={}, builders={"a": lambda: torch.nn.Linear(2, 2),
                                                                       "b": lambda: torch.nn.Linear(2, 3)})


def test_a_resumed_run_and_a_stray_sidecar_build_the_recorded_overhead(store, make_file, tmp_path):
    """The protector a resumed run starts passed its own manager's overhead; a repair of a
    pending version beside an unusable sidecar used 10%. Both now build what the version
    records."""
    store.save(make_file(100_000), "run", metadata={"ftstore.step": "1"}, overhead=0.5, protect=False)
    m = CheckpointManager(store, "run", background=True)  # its own overhead: the default
    m.restore(tmp_path / "out.bin")
    m.wait_until_finished()
    assert read_envelope(files(store, "run@1")).raptorq.overhead == pytest.approx(0.5)

    store.save(make_file(100_000), "other", overhead=0.5, protect=False)
    paths = files(store, "other@1")
    paths.sidecar.write_bytes(b"junk")
    assert scrub(store, repair=True).health == "healthy"
    assert read_envelope(paths).raptorq.overhead == pytest.approx(0.5) and check(paths).intact


def test_metadata_too_large_for_the_sidecar_header_is_refused_before_a_byte_is_written(store, make_file):
    """17 values of 65,000 characters: the sidecar was written with a header no reader
    accepts, so verify said ok and 10 damaged bytes were beyond repair."""
    big = {f"k{i}": "x" * 65_000 for i in range(17)}
    for protect in (True, False):
        with pytest.raises(BadInputError, match="metadata takes .* bytes"):
            store.save(make_file(10_000), "run", metadata=big, protect=protect)
        with pytest.raises(BadInputError, match="metadata takes .* bytes"):
            store.save_written(lambda f: f.write(b"x" * 10_000), "run", big, protect=protect)
    assert store.names() == []
    small = {f"k{i}": "x" * 65_000 for i in range(8)}
    store.save(make_file(10_000), "run", metadata=small)
    assert store.check("run").intact


def test_a_pending_save_written_checks_the_header_for_its_real_size(store):
    """Checked at size 0 only, a streamed checkpoint saved with protection pending could
    commit with a header no sidecar could hold: every protector and scrub then failed."""
    from ftstore.codec import check_header_fits
    from ftstore.engine.save import new_essentials

    payload = 3_000_000

    def fits(pad: int, size: int) -> bool:
        meta = {f"k{i}": "x" * 65_000 for i in range(16)} | {"pad": "x" * pad, "ftstore.overhead": "0.1"}
        try:
            check_header_fits(new_essentials("a", "file", meta, size), 0.1)
            return True
        except BadInputError:
            return False

    lo, hi = 0, 65_000  # the largest pad that fits at size 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid, 0) else (lo, mid - 1)
    assert fits(lo, 0) and not fits(lo, payload)
    meta = {f"k{i}": "x" * 65_000 for i in range(16)} | {"pad": "x" * lo, "ftstore.overhead": "0.1"}
    for protect in (False, True):
        with pytest.raises(BadInputError, match="header would be"):
            store.save_written(lambda f: f.write(b"\0" * payload), "a", meta, 0.1, protect=protect)
    assert store.names() == []


def test_states_files_and_bundles_in_one_run_each_restore_the_right_kind(store, tmp_path):
    """The README's example saves a state, a file and a bundle under one name: ``restore()``
    took the newest, the bundle, for a state, and failed with torch's unpickling message.
    It now restores the newest checkpoint that is not a bundle (skipping a damaged one with
    a warning), ``restore_bundle`` the newest bundle, and either, asked for a step of the
    other kind, says which call restores it."""
    from ftstore import BundleSpec

    model = torch.nn.Linear(2, 2)
    m = CheckpointManager(store, "run-42")
    m.save(1, {"model": model.state_dict(), "step": 1})
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "step": 2}, path)
    m.save(2, str(path))
    m.save(3, BundleSpec({"autoencoder": model}, "pytorch", {"N": 64, "gridsize": 1}))
    assert [c.is_bundle for c in m.checkpoints()] == [False, False, True]
    assert m.restore(map_location="cpu")["step"] == 2 and m.restored.step == 2
    cp, bundle = m.restore_bundle("pytorch", params={}, builders={"autoencoder": lambda cfg: torch.nn.Linear(2, 2)})
    assert cp.step == 3 and torch.equal(bundle.models["autoencoder"].weight, model.weight)
    with pytest.raises(BadInputError, match="step 3 of run-42 is a model bundle: restore it with restore_bundle"):
        m.restore(step=3)
    with pytest.raises(BadInputError, match="step 1 of run-42 is not a model bundle: restore it with restore()"):
        m.restore_bundle("pytorch", step=1)
    m.restore(tmp_path / "out.zip", step=3)  # written out as a file: any kind
    assert (tmp_path / "out.zip").stat().st_size > 0
    payload = files(store, "run-42@2").payload
    payload.write_bytes(b"\0" * payload.stat().st_size)  # beyond repair
    with pytest.warns(UserWarning, match="skipping damaged checkpoint run-42@2"):
        assert m.restore()["step"] == 1


def test_retention_keeps_the_newest_protected_checkpoint_until_the_newer_one_is_protected(store, monkeypatch):
    """keep_last=1 with background protection deleted step 1 (protected) as soon as step 2
    was committed, before step 2's sidecar existed; one flipped byte in step 2 then left no
    checkpoint to restore (a reviewer's repro). Step 1 now stays until step 2 is protected."""
    from ftstore.training.protection import BackgroundProtector

    m = CheckpointManager(store, "run", keep_last=1, background=True)
    m.save(1, {"w": torch.arange(1000.0)})
    m.wait_until_finished()
    assert [c.protected for c in m.checkpoints()] == [True]
    monkeypatch.setattr(BackgroundProtector, "start", lambda self, key, artifact_id: None)  # its sidecar: later
    m.save(2, {"w": torch.arange(1000.0) + 1})
    m.wait_until_finished()
    assert [(c.step, c.protected) for c in m.checkpoints()] == [(1, True), (2, False)]
    payload = files(store, "run@2").payload
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 1
    payload.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipping damaged checkpoint run@2"):
        assert torch.equal(m.restore()["w"], torch.arange(1000.0))
    monkeypatch.undo()
    m.save(3, {"w": torch.arange(1000.0) + 2})
    m.wait_until_finished()  # step 3 protected: step 1 and the damaged step 2 go
    assert [(c.step, c.protected) for c in m.checkpoints()] == [(3, True)]


def test_a_metric_that_is_not_a_number_is_refused_naming_it(store):
    m = CheckpointManager(store, "run", keep_best=1, best_metric="loss")
    with pytest.raises(BadInputError, match="metric 'loss' is not a number: 'abc'"):
        m.save(1, {"w": torch.zeros(2)}, metrics={"loss": "abc"})
    assert m.checkpoints() == []


def test_saves_faster_than_sidecars_still_leave_a_protected_checkpoint(store, slow_protectors):
    """Retention cancelled the protection of every checkpoint it deleted: with saves coming
    faster than sidecars are built, no checkpoint of a keep_last=1 run was ever protected,
    and the newest was always one flipped byte from nothing to restore. The oldest one still
    being protected is now let finish, and kept as the fallback until a newer one is
    protected."""
    slow_protectors(1.5)
    m = CheckpointManager(store, "run", keep_last=1, background=True)
    for step in range(1, 5):
        m.save(step, {"w": torch.full((1000,), float(step))})
    for job in list(m._tidy_jobs):  # retention of all four done; no sidecar built yet
        job.result()
    assert [(c.step, c.protected) for c in m.checkpoints()] == [(1, False), (4, False)]
    m.wait_until_finished()
    assert [(c.step, c.protected) for c in m.checkpoints()] == [(4, True)]


@pytest.mark.parametrize("kwargs,message", [
    ({"keep_last": 2.5}, "keep_last=2.5: a whole number"),
    ({"keep_last": "3"}, "keep_last='3': a whole number"),
    ({"keep_every": True}, "keep_every=True: a whole number"),
    ({"keep_best": 1, "best_metric": 5}, "best_metric=5: the name of a metric"),
    ({"background": "no"}, "background='no': True or False"),
    ({"overhead": "0.1"}, "overhead='0.1': a number"),
    ({"name": None}, "name is a NoneType"),
    ({"name": "run@1"}, "name 'run@1' names a version"),
    ({"store": "a/path"}, "store is a str: pass a Store"),
], ids=lambda v: str(v)[:30])
def test_a_manager_s_bad_arguments_are_refused_when_it_is_made(store, kwargs, message):
    """These raised TypeError or AttributeError from deep inside, or (keep_last=2.5) were
    accepted and failed at every save after its commit, pruning nothing."""
    args = {"store": store, "name": "run", **kwargs}
    with pytest.raises(BadInputError, match=re.escape(message)):
        CheckpointManager(**args)


def test_bad_arguments_to_save_and_restore_are_refused_in_words(store, make_file, tmp_path):
    m = CheckpointManager(store, "run")
    m.save(3, {"w": torch.ones(2)})
    with pytest.raises(BadInputError, match="metrics is a list"):
        m.save(4, {"w": torch.ones(2)}, metrics=[1.0])
    with pytest.raises(BadInputError, match=re.escape("step='3': a whole number")):
        m.restore(step="3")  # said there was no step 3
    with pytest.raises(BadInputError, match="out is a int"):
        m.restore(123)
    with pytest.raises(BadInputError, match="is a folder: a checkpoint here is one file"):
        m.save(5, tmp_path)
    assert m.steps() == [3]


_STAGED = """
import sys, time
from ftstore import Store
staging = Store.open(sys.argv[1]).backend.stage("run")
(staging.workdir / "payload").write_bytes(b"x" * 100_000)  # a partial checkpoint
print(staging.workdir.name, flush=True)
time.sleep(120)
"""


def test_a_restore_removes_what_killed_saves_left_and_nothing_a_live_save_holds(store, make_file, tmp_path):
    """A job killed mid-save again and again left a partial checkpoint in staging/ each
    time, which only a scrub --remove-orphans removed. A resumed run's restore removes
    those whose process is gone; a save still running in another process keeps its own."""
    CheckpointManager(store, "run").save(1, {"w": torch.ones(2)})
    procs = [subprocess.Popen([sys.executable, "-c", _STAGED, str(tmp_path / "store")], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        names = [p.stdout.readline().strip() for p in procs]
        for p in procs[:2]:
            p.kill()
            p.wait()
        staging = tmp_path / "store" / "staging"
        assert all((staging / n).is_dir() for n in names)
        assert CheckpointManager(store, "run").restore()["w"].tolist() == [1.0, 1.0]
        assert not (staging / names[0]).exists() and not (staging / names[1]).exists()
        assert (staging / names[2] / "payload").read_bytes() == b"x" * 100_000
    finally:
        procs[2].kill()
        procs[2].wait()


def test_a_resume_by_restore_bundle_protects_newer_healthy_checkpoints_of_the_other_kind(store, monkeypatch):
    """Protection a killed run left unfinished is taken over for every checkpoint but the
    ones the restore skipped as damaged: a restore_bundle at step 1 left the newer state
    checkpoints (steps 2 and 3) unprotected."""
    from ftstore import BundleSpec
    from ftstore.training.protection import BackgroundProtector

    cfg = {"N": 64, "gridsize": 1}
    first = CheckpointManager(store, "run", background=True)
    monkeypatch.setattr(BackgroundProtector, "start", lambda self, key, artifact_id: None)  # killed with the job
    first.save(1, BundleSpec(models={"m": torch.nn.Linear(2, 2)}, backend="pytorch", params=cfg))
    for s in (2, 3):
        first.save(s, {"w": torch.ones(3) * s})
    monkeypatch.undo()
    resumed = CheckpointManager(store, "run", background=True)
    cp, _ = resumed.restore_bundle("pytorch", params=cfg, builders={"m": lambda c: torch.nn.Linear(2, 2)})
    resumed.wait_until_finished()
    assert cp.step == 1 and [(c.step, c.protected) for c in resumed.checkpoints()] == [(1, False), (2, True), (3, True)]


def test_numpy_integers_are_whole_numbers_to_the_manager(store):
    m = CheckpointManager(store, "run", keep_last=np.int64(2), overhead=np.float32(0.2))
    for s in range(3):
        m.save(np.int64(s), {"w": torch.ones(1) * s})
    assert m.steps() == [1, 2] and m.restore(step=np.int64(2))["w"].item() == 2.0
