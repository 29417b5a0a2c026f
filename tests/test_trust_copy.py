"""Class 4: ``ftstore copy`` commits only intact versions, and never calls a damaged
destination version "already there".

Real stores on both sides (a directory and a SeaweedFS bucket), real damage, a copy
SIGKILLed part way and run again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftstore import Store, load, verify
from ftstore.api import copy, scrub
from ftstore.errors import BadInputError

from .conftest import ArtifactFiles, files, run_cli


def _damage_beyond_repair(path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.write(b"\0" * (size // 2))


def _damage_a_little(path) -> None:
    with open(path, "r+b") as f:
        f.seek(3000)
        f.write(b"\xab" * 100)


def _store(tmp_path, name):
    return Store.open(tmp_path / name, create=True)


def test_an_unrecoverable_version_is_never_committed_and_a_rerun_says_so_again(tmp_path, make_file):
    src, dst = _store(tmp_path, "src"), _store(tmp_path, "dst")
    good, bad = make_file(200_000, seed=1), make_file(200_000, seed=2)
    src.save(good, "good")
    src.save(bad, "bad")
    _damage_beyond_repair(files(src, "bad@1").payload)
    for _ in range(2):  # the re-run must not call it "already at the destination"
        res = run_cli("copy", src.url, dst.url, "--json", check_rc=1)
        status = {r["ref"]: r["status"] for r in json.loads(res.stdout)}
        assert status["bad@1"] == "failed" and status["good@1"] in ("copied", "skipped")
        assert dst.names() == ["good"]
    assert all(h.intact for h in verify(dst))
    load(dst, "good", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == good.read_bytes()


def test_a_damaged_source_is_repaired_on_the_way_and_the_source_is_only_read(tmp_path, make_file):
    src, dst = _store(tmp_path, "src"), _store(tmp_path, "dst")
    data = make_file(300_000, seed=3)
    src.save(data, "a")
    a = files(src, "a@1")
    _damage_a_little(a.payload)
    a.envelope.unlink()
    before = {p.name: p.read_bytes() for p in a.folder.iterdir()}
    [r] = copy(src, dst)
    assert r.status == "repaired"
    assert {p.name: p.read_bytes() for p in a.folder.iterdir()} == before
    assert files(dst, "a@1").payload.read_bytes() == data.read_bytes() and verify(dst)[0].intact


@pytest.mark.parametrize("where", ["repairable", "beyond-repair-there"])
def test_a_damaged_destination_version_is_repaired_never_skipped(tmp_path, make_file, where):
    src, dst = _store(tmp_path, "src"), _store(tmp_path, "dst")
    data = make_file(300_000, seed=4)
    src.save(data, "a")
    assert [r.status for r in copy(src, dst)] == ["copied"]
    d = files(dst, "a@1")
    if where == "repairable":
        _damage_a_little(d.payload)
    else:  # the destination's own sidecar cannot bring it back: the source's copy does
        _damage_beyond_repair(d.payload)
        d.sidecar.unlink()
    [r] = copy(src, dst)
    assert r.status == "repaired", r
    assert ("from the source" in r.detail) == (where != "repairable")
    assert verify(dst)[0].intact and d.payload.read_bytes() == data.read_bytes()
    assert [r.status for r in copy(src, dst)] == ["skipped"]


def test_a_different_artifact_under_the_same_version_is_a_conflict_never_overwritten(tmp_path, make_file):
    src, dst = _store(tmp_path, "src"), _store(tmp_path, "dst")
    src.save(make_file(10_000, seed=5), "a")
    dst.save(make_file(10_000, seed=6), "a")
    before = files(dst, "a@1").payload.read_bytes()
    res = run_cli("copy", src.url, dst.url, "--json", check_rc=1)
    assert json.loads(res.stdout)[0]["status"] == "conflict"
    assert files(dst, "a@1").payload.read_bytes() == before


def _a_save_is_under_way(dst: Store) -> bool:
    """The destination shows a version being written: a staging folder, or a claim
    without an envelope."""
    if dst.capabilities.local_files:
        return any(p.is_dir() and not p.name.startswith("scratch-") for p in dst.backend.staging_dir.glob("*"))
    leaves: dict[str, set[str]] = {}
    for rel, _, _ in dst.backend._list("artifacts/"):
        prefix, _, leaf = rel.rpartition("/")
        leaves.setdefault(prefix, set()).add(leaf)
    return any("claim" in ls and "envelope.json" not in ls for ls in leaves.values())


def _kill_copies_then_rerun(src: Store, dst_url: str, rng: random.Random, attempts: int,
                            tmpdir: Path | None = None) -> int:
    """SIGKILL ``attempts`` copies, each once the destination shows a save under way (plus
    a random moment); return how many were still running when one was seen."""
    caught = 0
    env = dict(os.environ, **({"TMPDIR": str(tmpdir)} if tmpdir else {}))
    for _ in range(attempts):
        proc = subprocess.Popen([sys.executable, "-m", "ftstore.cli", "copy", src.url, dst_url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        dst = Store.open(dst_url)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not _a_save_is_under_way(dst):
            time.sleep(0.005)
        caught += proc.poll() is None
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for h in verify(dst):  # whatever a killed copy committed is intact
            assert h.intact, h.problems
    return caught


def _expect_all_copied(src: Store, dst_url: str, sources: dict) -> None:
    res = run_cli("copy", src.url, dst_url, "--json", check_rc=0, timeout=600)
    assert {r["status"] for r in json.loads(res.stdout)} <= {"copied", "skipped"}
    dst = Store.open(dst_url)
    assert sorted(k.ref for k in dst.keys()) == sorted(sources)
    for ref, data in sources.items():
        assert ArtifactFiles(dst, dst.resolve(ref)).read("payload") == data
    assert all(h.intact for h in verify(dst))


def test_a_sigkilled_copy_leaves_intact_versions_or_orphans_and_a_rerun_finishes(tmp_path, make_file):
    src = _store(tmp_path, "src")
    sources = {}
    for i in range(4):
        f = make_file(6_000_000, seed=10 + i)
        env = src.save(f, f"m{i}")
        sources[f"m{i}@{env.version}"] = f.read_bytes()
    dst_url = str(tmp_path / "dst")
    Store.open(dst_url, create=True)
    (tmp_path / "tmp").mkdir()
    assert _kill_copies_then_rerun(src, dst_url, random.Random(1), attempts=3, tmpdir=tmp_path / "tmp") >= 1
    assert not list((tmp_path / "tmp").iterdir()), "a killed copy left its private copy outside the store"
    _expect_all_copied(src, dst_url, sources)
    report = scrub(Store.open(dst_url), remove_orphans=True, write_report=False)
    assert report.totals.failed == 0
    assert scrub(Store.open(dst_url), write_report=False).orphans == []
    assert not list((tmp_path / "dst" / "staging").glob("scratch-*"))


def test_a_sigkilled_copy_to_s3_is_taken_over_by_the_rerun(seaweed, tmp_path, make_file):
    """A killed copy leaves a claimed, uncommitted version in the bucket; the re-run, which
    brings the same artifact (same id), takes the claim over instead of calling it a
    conflict for the claim's six-hour lease."""
    src = _store(tmp_path, "src")
    sources = {}
    for i in range(3):
        f = make_file(6_000_000, seed=20 + i)
        env = src.save(f, f"m{i}")
        sources[f"m{i}@{env.version}"] = f.read_bytes()
    dst_url = f"s3://ftstore-trust/copy-killed-{os.getpid()}"
    Store.open(dst_url, create=True)
    assert _kill_copies_then_rerun(src, dst_url, random.Random(2), attempts=2) >= 1
    _expect_all_copied(src, dst_url, sources)


def test_a_leaf_that_is_a_link_is_left_out_of_the_copy_and_rebuilt(tmp_path, make_file):
    """Found by the stateful test: an empty payload replaced by a link outside the store
    made copy fail ("is a symbolic link") though nothing was lost (the sidecar rebuilds an
    empty payload). A copy reads no link: it leaves the leaf out, repairs, copies."""
    src, dst = _store(tmp_path, "src"), _store(tmp_path, "dst")
    src.save(make_file(0), "empty")
    src.save(make_file(5000, seed=9), "small", overhead=1.0)
    outside = tmp_path / "outside"
    outside.write_bytes(b"outside" * 10)
    for ref in ("empty@1", "small@1"):
        p = files(src, ref).payload
        p.unlink()
        p.symlink_to(outside)
    assert {r.ref: r.status for r in copy(src, dst)} == {"empty@1": "repaired", "small@1": "repaired"}
    assert files(dst, "empty@1").payload.read_bytes() == b""
    assert files(dst, "small@1").payload.read_bytes() == make_file(5000, seed=9).read_bytes()
    assert outside.read_bytes() == b"outside" * 10 and files(src, "empty@1").payload.is_symlink()


@pytest.mark.parametrize("inside", ["artifacts/backup", "staging/x/y", "reports/r"])
def test_a_store_is_never_made_inside_another_stores_folders(any_store, tmp_path, make_file, inside):
    """`copy S S/artifacts/backup` used to succeed, and the next `scrub --remove-orphans`
    of S removed the whole copy as an orphan: now exit 2 before anything is written."""
    src = any_store
    src.save(make_file(5_000), "m")
    dest = f"{src.url}/{inside}"
    res = run_cli("copy", str(src.url), dest)
    assert res.returncode == 2 and "inside the store" in res.stderr, res.stderr
    res = run_cli("save", str(make_file(100, seed=2)), "--name", "x", "--store", dest)
    assert res.returncode == 2 and "inside the store" in res.stderr
    assert run_cli("copy", str(src.url), f"{src.url}/beside").returncode == 0  # not one of its folders
    report = scrub(src, remove_orphans=True, warn=lambda _: None)
    assert report.orphans == [] and src.load_bytes("m")[0].getvalue() == (make_file(5_000)).read_bytes()


def test_a_folder_that_is_not_empty_is_never_adopted_as_a_new_store(any_store, tmp_path, make_file):
    """Creating a store where a store is nested (S/artifacts/backup) or where a user keeps
    folders named like a store's (results/artifacts/best_model.pt) is refused: adopted,
    the next `scrub --remove-orphans` would have deleted what was there as orphans."""
    inner = Store.open(f"{any_store.url}/S/artifacts/backup", create=True)
    inner.save(make_file(1000), "keep")
    res = run_cli("save", str(make_file(100, seed=2)), "--name", "x", "--store", f"{any_store.url}/S")
    assert res.returncode == 2 and "not an ftstore store" in res.stderr, res.stderr
    assert inner.load_bytes("keep")[0].getvalue() == make_file(1000).read_bytes()
    if any_store.capabilities.local_files:
        user = tmp_path / "results"
        (user / "artifacts").mkdir(parents=True)
        (user / "artifacts" / "best_model.pt").write_bytes(b"weights")
        with pytest.raises(BadInputError, match="not an ftstore store"):
            Store.open(user, create=True)
        assert (user / "artifacts" / "best_model.pt").read_bytes() == b"weights"
