import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from ftstore import verify
from ftstore.hashing import hash_file
from ftstore.api import scrub
from ftstore.scrub import scrubber
from ftstore.scrub.drill import FAULTS, drill, inject
from ftstore.scrub.report import decode_report
from ftstore.engine.leaves import read_envelope

from .conftest import run_cli, files


def test_sigkill_during_save_never_leaves_a_partial_artifact(store, make_file):
    keep = make_file(300_000, seed=1)
    store.save(keep, "keep")
    keep_hash = hash_file(keep)[0]
    big = make_file(24 * 1024 * 1024, seed=2)
    env = dict(os.environ, FTSTORE_STORE=store.url)
    rng = random.Random(7)
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "ftstore.cli", "save", str(big), "--name", "big"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for h in verify(store):
            assert h.intact, h.problems  # every listed artifact is complete and verifies
        assert store.read_envelope("keep").source_hash == keep_hash
        assert hash_file(files(store, "keep").payload)[0] == keep_hash
    report = scrub(store, repair=True, remove_orphans=True)
    assert report.totals.failed == 0
    assert not any(store.backend.staging_dir.iterdir())


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "beyond_budget"])
def test_scrub_repair_heals_each_fault_kind(store, make_file, fault):
    src = make_file(3_000_000, seed=3)
    store.save(src, "a")
    store.save(make_file(1000, seed=4), "b")
    paths = files(store, "a")
    inject(paths, fault, random.Random(0))
    res = run_cli("scrub", store=store, check_rc=1)  # read-only scrub only reports
    assert "failed" in res.stdout
    res = run_cli("scrub", "--repair", "--json", store=store, check_rc=0)
    report = decode_report(res.stdout.encode())
    by_ref = {a.ref: a for a in report.artifacts}
    assert by_ref["a@1"].status == "recovered" and by_ref["a@1"].proofs
    assert by_ref["b@1"].status == "ok"
    assert paths.payload.read_bytes() == src.read_bytes()
    env = read_envelope(paths)
    assert env.scrub.status == "recovered" and env.scrub.last_ok_unix_ms
    assert env.decode_proofs[-1].proof_hash == by_ref["a@1"].proofs[-1]
    run_cli("verify", store=store, check_rc=0)
    reports = sorted((store.backend.root / "reports").glob("scrub-*.json"))
    assert reports and decode_report(reports[-1].read_bytes()).health == "healthy"


def test_unrepairable_artifact_is_failed_and_others_still_scrubbed(store, make_file):
    store.save(make_file(200_000, seed=1), "bad")
    store.save(make_file(200_000, seed=2), "good")
    inject(files(store, "bad"), "beyond_budget", random.Random(0))
    store.save(make_file(10, seed=3), "badenv")
    p = files(store, "badenv")
    p.envelope.write_text("{not json")
    p.sidecar.unlink()
    res = run_cli("scrub", "--repair", "--json", store=store, check_rc=1)
    status = {a["ref"]: a["status"] for a in json.loads(res.stdout)["artifacts"]}
    assert status == {"bad@1": "failed", "badenv@1": "failed", "good@1": "ok"}


def test_deep_scrub_proves_recoverability(store, make_file):
    store.save(make_file(5_000_000), "a")
    report = scrub(store, deep=True)
    deep = report.artifacts[0].deep
    assert deep.recovered and deep.symbols_erased > 0 and report.totals.ok == 1


def test_subset_slices_partition_the_store(store, make_file):
    for i in range(6):
        store.save(make_file(100, seed=i), f"n{i}")
    seen = []
    for k in (1, 2, 3):
        seen += [a.ref for a in scrub(store, subset=f"{k}/3", write_report=False).artifacts]
    assert sorted(seen) == sorted(p.ref for p in store.keys())
    run_cli("scrub", "--subset", "4/3", store=store, check_rc=2)


def test_orphans_are_reported_and_removed_only_on_request(store, make_file):
    store.save(make_file(100), "a")
    (store.backend.staging_dir / "deadbeef").mkdir(parents=True)
    (files(store, "a@1").folder / "payload.tmp-123").write_bytes(b"x")
    report = scrub(store)
    assert len(report.orphans) == 2 and not any(o.removed for o in report.orphans)
    assert (store.backend.staging_dir / "deadbeef").exists()
    report = scrub(store, remove_orphans=True)
    assert all(o.removed for o in report.orphans)
    assert scrub(store).orphans == []


def test_max_rate_limits_scrub_speed(store, make_file):
    store.save(make_file(3_000_000), "a")
    store.save(make_file(3_000_000, seed=1), "b")
    t = time.monotonic()
    scrub(store, max_rate_mb_s=10, jobs=1, write_report=False)
    assert time.monotonic() - t >= 0.5  # ~6.6 MB at 10 MB/s


def test_max_rate_paces_the_reads_of_one_large_artifact_as_they_happen(store, make_file, monkeypatch):
    """One 12 MB artifact at 20 MB/s: its chunks are read over about 0.6 s, not all at once
    and then slept for (what a pause after each whole artifact did)."""
    store.save(make_file(12_000_000), "big")
    seen: list[tuple[float, int]] = []
    real = scrubber._Pace.__call__

    def noted(self, nbytes):
        seen.append((time.monotonic(), nbytes))
        real(self, nbytes)

    monkeypatch.setattr(scrubber._Pace, "__call__", noted)
    scrub(store, max_rate_mb_s=20, jobs=1, write_report=False)
    payload = [t for t, n in seen if n]
    assert sum(n for _, n in seen) >= 12_000_000 and len(payload) >= 4
    half = next(t for t, n in zip(payload, itertools.accumulate(n for _, n in seen if n)) if n >= 6_000_000)
    assert half - payload[0] >= 0.2 and payload[-1] - payload[0] >= 0.45


def test_drill_repairs_every_fault_and_is_deterministic(tmp_path):
    a = drill(seed=11, rounds=1)
    b = drill(seed=11, rounds=1)
    assert a.passed
    assert {i.fault for i in a.injections} == set(FAULTS)
    strip = lambda r: [(i.ref, i.fault, i.detail) for i in r.injections]
    assert strip(a) == strip(b)
    assert any(i.expected == "failed" and i.status == "failed" for i in a.injections)


def test_drill_on_a_copy_leaves_the_store_untouched(store, make_file):
    src = make_file(400_000)
    store.save(src, "a")
    before = {p: p.read_bytes() for p in files(store, "a@1").folder.iterdir()}
    res = run_cli("drill", "--from-store", "--seed", "2", "--json", store=store, check_rc=0)
    assert json.loads(res.stdout)["passed"]
    assert {p: p.read_bytes() for p in files(store, "a@1").folder.iterdir()} == before


def test_a_drill_damages_payloads_of_zeros_too(store, tmp_path):
    """Checkpoints are full of zeros: a fault that zeroes a range (or everything, for the
    beyond-budget case) must still change every byte it covers, or the drill reports a
    healthy store as failing (it used to: "expected failed got ok")."""
    src = tmp_path / "zeros"
    src.write_bytes(bytes(200_000))
    for i in range(len(FAULTS)):
        store.save(src, f"z{i}")
    report = drill(store.backend, seed=1)
    assert report.passed and {i.fault for i in report.injections} == set(FAULTS)
    assert all(i.status == i.expected for i in report.injections)


def test_a_drill_from_the_store_names_every_version_it_could_not_copy(store, make_file):
    store.save(make_file(100_000, seed=1), "good")
    store.save(make_file(100_000, seed=2), "bad")
    files(store, "bad@1").payload.write_bytes(bytes(100_000))  # beyond its repair budget
    res = run_cli("drill", "--from-store", "--seed", "3", "--json", store=store, check_rc=1)
    report = json.loads(res.stdout)
    assert not report["passed"]
    missed = [i for i in report["injections"] if i["fault"] == "not_copied"]
    assert [i["ref"] for i in missed] == ["bad@1"] and "unrecoverable" in missed[0]["detail"]
    assert [i["passed"] for i in report["injections"] if i["ref"] == "good@1"] == [True]


@pytest.mark.parametrize("newest", [False, True])
def test_a_version_deleted_while_the_scrub_runs_is_not_a_failure(store, make_file, monkeypatch, newest):
    """Retention deletes a checkpoint (by another process) while a scheduled scrub is
    about to check it: the scrub is still healthy, exit 0, and says what it left out."""
    for i in range(3):
        store.save(make_file(20_000, seed=i), "ck")
    gone = "ck@3" if newest else "ck@1"
    real, done, said = scrubber.check, [], []

    def deleted_first(leaves, **kwargs):
        if leaves.key.ref == gone and not done:
            done.append(gone)
            code = f"import sys; from ftstore import Store; Store.open(sys.argv[1]).delete({gone!r})"
            subprocess.run([sys.executable, "-c", code, str(store.url)], check=True)
        return real(leaves, **kwargs)

    monkeypatch.setattr(scrubber, "check", deleted_first)
    report = scrub(store, repair=True, warn=said.append, jobs=1)
    monkeypatch.undo()
    assert done and report.health == "healthy" and report.totals.failed == 0
    assert sorted(a.ref for a in report.artifacts) == sorted({"ck@1", "ck@2", "ck@3"} - {gone})
    assert said == [f"{gone} was deleted while the scrub ran; not counted"]
    assert run_cli("scrub", store=store).returncode == 0


def test_a_max_rate_that_is_not_a_positive_number_is_refused(store, make_file):
    store.save(make_file(5000), "a")
    for rate in ("nan", "inf"):
        res = run_cli("scrub", "--max-rate", rate, store=store, check_rc=2)
        assert "--max-rate" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    run_cli("scrub", "--max-rate", "50", store=store, check_rc=0)


@pytest.mark.parametrize("builder", ["protector", "scrub"])
def test_a_payload_that_changes_while_its_sidecar_is_built_gets_no_sidecar(store, make_file, monkeypatch, builder):
    """The payload of a pending version was checked, then encoded: a change in between
    (a writer through a hard link, rot) gave a sidecar of other bytes, installed as if it
    protected the recorded ones, and every repair then failed in a puzzling way. Now the
    bytes encoded are checked afterwards and no such sidecar is installed."""
    from ftstore.codec.build import SidecarBuild
    from ftstore.engine.integrity import protect_pending
    from ftstore.engine.leaves import FolderLeaves
    from ftstore.errors import UnrecoverableError

    src = make_file(3_000_000)
    env = store.save(src, "m", protect=False)
    f = files(store, "m@1")
    real_encode = SidecarBuild.encode

    def encode_then_change(self, source, jobs, source_table=None):
        table = real_encode(self, source, jobs, source_table)
        with open(f.payload, "r+b") as p:  # the byte changes just after the encoders read it
            p.seek(1_000_000)
            byte = p.read(1)
            p.seek(1_000_000)
            p.write(bytes([byte[0] ^ 1]))
        return table

    monkeypatch.setattr(SidecarBuild, "encode", encode_then_change)
    if builder == "protector":
        with pytest.raises(UnrecoverableError, match="no sidecar was installed"):
            protect_pending(FolderLeaves(store.backend.version_dir(store.resolve("m@1")), store.resolve("m@1"), store.backend))
    else:
        report = scrub(store, repair=True, write_report=False)
        assert report.artifacts[0].error and "no sidecar was installed" in report.artifacts[0].error
    assert not f.sidecar.exists() and read_envelope(f).raptorq is None and env.raptorq is None
