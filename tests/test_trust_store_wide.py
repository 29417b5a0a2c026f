"""Class 10: one bad entry never stops a store-wide command.

A folder where a file should be (and a file where a folder should be), names that are not
versions (``²``, ``01``), an oversized envelope object on a real SeaweedFS server, a
read-only store, a full store: ``verify``, ``ls``, ``scrub`` and ``load`` of the other
artifacts report that entry and go on, with a result for every artifact they could check."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import msgspec
import pytest

from ftstore import CheckpointManager, Store, load, verify
from ftstore.api import list_artifacts, scrub
from ftstore.documents import ArtifactKey
from ftstore.hashing import hash_file

from .conftest import ArtifactFiles, files, run_cli


def _three(store: Store, make_file) -> dict[str, bytes]:
    out = {}
    for i, n in enumerate(("a", "b", "c")):
        src = make_file(60_000, seed=10 + i)
        store.save(src, n)
        out[n] = src.read_bytes()
    return out


def _json(res) -> object:
    return msgspec.json.decode(res.stdout)


def test_folders_where_files_should_be_and_files_where_folders_should_be(store, make_file, tmp_path):
    data = _three(store, make_file)
    a1 = files(store, "a@1")
    a1.envelope.unlink()
    a1.envelope.mkdir()  # a folder where the envelope should be
    (store.backend.artifacts_dir / "d").write_bytes(b"a file where a name's folder should be")
    (store.backend.artifacts_dir / "b" / "2").write_bytes(b"a file where a version folder should be")
    res = run_cli("verify", "--json", store=store, check_rc=1)
    assert {d["ref"]: d["status"] for d in _json(res)} == {"a@1": "damaged", "b@1": "ok", "c@1": "ok"}
    rows = {f"{r.name}@{r.version}": r.envelope for r in list_artifacts(store)}
    assert rows["b@1"] == rows["c@1"] == "ok" and "directory" in rows["a@1"]
    run_cli("ls", store=store, check_rc=0)
    res = run_cli("scrub", "--repair", "--json", store=store, check_rc=0)
    report = _json(res)
    assert {a["ref"]: a["status"] for a in report["artifacts"]} == {"a@1": "recovered", "b@1": "ok", "c@1": "ok"}
    assert {o["path"] for o in report["orphans"]} == {"artifacts/d", "artifacts/b/2"}
    assert a1.envelope.is_file()  # the folder in its place is gone, the envelope rebuilt
    run_cli("verify", store=store, check_rc=0)
    for n in ("a", "b", "c"):
        run_cli("load", n, "-o", str(tmp_path / n), store=store, check_rc=0)
        assert (tmp_path / n).read_bytes() == data[n]


def test_names_that_are_not_versions_are_orphans_never_versions(store, make_file):
    data = _three(store, make_file)
    for odd in ("²", "01", "1\n", "0", "+1", " 1"):
        folder = store.backend.artifacts_dir / "a" / odd
        folder.mkdir()
        for leaf in ("payload", "sidecar.ftrq", "envelope.json"):
            (folder / leaf).write_bytes((files(store, "a@1").folder / leaf).read_bytes())
    (store.backend.artifacts_dir / "a\n").mkdir()
    assert store.versions("a") == [1] and store.names() == ["a", "b", "c"]
    res = run_cli("verify", store=store, check_rc=0)
    assert "3 checked, 0 damaged" in res.stderr
    assert "7 entries in the store belong to no version, skipped here: artifacts/a/ 1 (not a version directory)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 2  # the names' newlines are escaped
    assert "7 entries" in run_cli("ls", store=store, check_rc=0).stderr
    res = run_cli("scrub", store=store, check_rc=0)  # every orphan on a line of its own
    assert "orphan    artifacts/a\\x0a  (not an artifact name" in res.stdout
    assert "orphan    artifacts/a/1\\x0a  (not a version directory" in res.stdout and len(res.stdout.splitlines()) == 3 + 7
    assert "belong to no version" not in run_cli("verify", "a", store=store, check_rc=0).stderr  # only store-wide
    report = scrub(store, remove_orphans=True, write_report=False)
    assert report.totals.ok == 3 and len(report.orphans) == 7 and all(o.removed for o in report.orphans)
    run_cli("load", "a@01", "-o", "/dev/null", store=store, check_rc=2)
    assert "belong" not in run_cli("verify", store=store, check_rc=0).stderr  # none left
    assert sorted(os.listdir(store.backend.artifacts_dir / "a")) == ["1"]
    assert hash_file(files(store, "a@1").payload)[1] == len(data["a"])


def test_a_store_whose_artifacts_folder_became_a_link_is_not_an_empty_healthy_one(store, make_file, tmp_path):
    """``verify`` and ``ls`` said "0 checked, 0 damaged" and "no artifacts" of a store whose
    ``artifacts`` folder was replaced by a link (never followed): they now name it."""
    store.save(make_file(1000), "a")
    real = tmp_path / "elsewhere"
    store.backend.artifacts_dir.rename(real)
    store.backend.artifacts_dir.symlink_to(real)
    for args in (["verify"], ["ls"], ["ls", "--json"]):
        res = run_cli(*args, store=store, check_rc=0)
        assert "1 entry in the store belongs to no version, skipped here: artifacts (symbolic link" in res.stderr, res
        assert len(res.stderr.strip().splitlines()) <= 2
    assert (real / "a" / "1" / "payload").exists()  # nothing followed, nothing removed


def test_an_oversized_envelope_object_on_s3_is_one_damaged_entry(seaweed, make_file, tmp_path):
    store = Store.open(f"s3://ftstore-trust/oversized-{os.getpid()}", create=True)
    data = _three(store, make_file)
    ArtifactFiles(store, ArtifactKey("a", 1)).write("envelope.json", b" " * (17 * 1024 * 1024))
    s3 = store.backend
    for stray in ("artifacts/a/²/payload", "artifacts/a/01/envelope.json", "artifacts/a b/1/payload"):
        s3._put(stray, b"x")
    assert store.versions("a") == [1] and store.names() == ["a", "b", "c"]
    res = run_cli("verify", "--json", store=store, check_rc=1)
    assert {d["ref"]: d["status"] for d in _json(res)} == {"a@1": "damaged", "b@1": "ok", "c@1": "ok"}
    run_cli("ls", store=store, check_rc=0)
    load(store, "b", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == data["b"]
    report = scrub(store, repair=True, remove_orphans=True, write_report=False, jobs=1)
    assert {a.ref: a.status for a in report.artifacts} == {"a@1": "recovered", "b@1": "ok", "c@1": "ok"}
    assert {o.path for o in report.orphans} >= {"artifacts/a/²/payload", "artifacts/a/01/envelope.json",
                                                "artifacts/a b/1/payload"}
    load(store, "a", tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == data["a"]
    assert all(h.intact for h in verify(store))


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    if not _mount_tmpfs(mnt, "3m"):
        pytest.skip("needs root to mount a tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _damage(path: Path, at: int = 1000, n: int = 200) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\xee" * n)


def test_a_read_only_store_is_checked_and_loads_right_bytes_without_writing(small_fs, make_file, tmp_path):
    store = Store.open(small_fs / "store", create=True)
    data = _three(store, make_file)
    _damage(files(store, "a@1").payload)
    files(store, "c@1").sidecar.unlink()
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True).returncode == 0
    res = run_cli("scrub", "--json", store=store, check_rc=1)
    assert {a["ref"]: a["status"] for a in _json(res)["artifacts"]} == {"a@1": "failed", "b@1": "ok", "c@1": "failed"}
    assert "could not be kept" in res.stderr
    res = run_cli("scrub", "--repair", "--json", store=store, check_rc=1)
    by_ref = {a["ref"]: a for a in _json(res)["artifacts"]}
    assert by_ref["a@1"]["status"] == by_ref["c@1"]["status"] == "failed"
    assert by_ref["b@1"]["status"] == "ok" and "could not record" in by_ref["b@1"]["error"]
    assert "Read-only" in by_ref["a@1"]["error"] and len(res.stderr.strip().splitlines()) == 1  # the report warning
    for n in ("a", "b", "c"):  # damaged a@1 comes back right from a private repair
        res = run_cli("load", n, "-o", str(tmp_path / n), store=store, check_rc=0)
        assert (tmp_path / n).read_bytes() == data[n]
        if n == "a":  # said to be a private copy: the store still holds the damage
            assert "private copy" in res.stderr and "still holds the damage" in res.stderr, res.stderr
    res = run_cli("load", "a", "-o", str(tmp_path / "a2"), "--json", store=store, check_rc=0)
    assert _json(res)["repaired"] == ["payload"] and _json(res)["repaired_in_store"] is False
    run_cli("verify", store=store, check_rc=1)
    run_cli("ls", store=store, check_rc=0)


@pytest.mark.parametrize("into", ["file", "memory"])
def test_restore_from_a_read_only_store_rebuilds_a_lost_envelope_privately(small_fs, make_file, tmp_path, into):
    """The newest checkpoint's envelope lost, its payload damaged too, and the store then
    mounted read-only: restore still resumes the newest step, with the right bytes, from a
    private repair, and writes nothing to the store."""
    store = Store.open(small_fs / "store", create=True)
    m = CheckpointManager(store, "run")
    if into == "file":
        m.save(1, make_file(50_000, seed=1))
        newest = make_file(50_000, seed=2)
    else:
        m.save(1, {"step": 1, "blob": "a" * 50_000})
        newest = {"step": 2, "blob": "".join(random.Random(2).choices("xyz", k=50_000))}
    m.save(2, newest)
    paths = files(store, "run@2")
    paths.envelope.unlink()
    _damage(paths.payload)
    damaged = paths.payload.read_bytes()
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True).returncode == 0
    reader = CheckpointManager(Store.open(small_fs / "store"), "run")
    if into == "file":
        assert reader.restore(tmp_path / "out").step == 2
        assert (tmp_path / "out").read_bytes() == newest.read_bytes()
    else:
        assert reader.restore() == newest and reader.restored.step == 2
    assert not paths.envelope.exists() and paths.payload.read_bytes() == damaged


def test_keras_restores_from_a_read_only_store(small_fs):
    """restore_training writes the checkpoint into the store's scratch folder where it can
    (a small /tmp could not hold it), and into a temporary folder where it cannot."""
    keras = pytest.importorskip("keras")
    import numpy as np

    from ftstore.integrations.keras import FtstoreCheckpoint, restore_training

    def build():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        m.compile(optimizer="adam", loss="mse")
        return m

    model, x = build(), np.ones((8, 4), "float32")
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[FtstoreCheckpoint(CheckpointManager(
        Store.open(small_fs / "store", create=True), "run"))])
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True).returncode == 0
    fresh = build()
    cp = restore_training(CheckpointManager(Store.open(small_fs / "store"), "run"), fresh)
    assert cp.step == 2
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_full_store_reports_what_it_could_check_and_repair(small_fs, make_file, tmp_path):
    store = Store.open(small_fs / "store", create=True)
    data = _three(store, make_file)
    files(store, "c@1").sidecar.unlink()
    _damage(files(store, "a@1").payload)
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    res = run_cli("scrub", "--repair", "--json", store=store, check_rc=1)
    by_ref = {a["ref"]: a for a in _json(res)["artifacts"]}
    assert by_ref["b@1"]["status"] == "ok"
    assert by_ref["a@1"]["status"] in ("recovered", "failed")  # in place: the payload's own blocks
    assert by_ref["c@1"]["status"] == "failed" and "space" in by_ref["c@1"]["error"]
    for n in ("a", "b", "c"):
        run_cli("load", n, "-o", str(tmp_path / n), store=store, check_rc=0)
        assert (tmp_path / n).read_bytes() == data[n]
    filler.unlink()
    assert scrub(store, repair=True, write_report=False).totals.failed == 0
    assert all(h.intact for h in verify(store))


def test_a_disk_that_fills_at_any_point_of_a_save_is_reported_as_full(small_fs, make_file):
    """Whichever write meets the full disk (the payload's copy, the sidecar's repair symbols
    written by a codec worker, the envelope), the save says the disk is full, exit 1, and
    the store is left as it was: a worker's short write used to be reported as bad input."""
    store = Store.open(small_fs / "store", create=True)
    src = make_file(100_000)
    outcomes = set()
    for kib in range(40, 200, 6):  # free space from payload-sized down to sidecar-sized gaps
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        filler = small_fs / "filler"
        filler.write_bytes(b"\0" * max(0, free - kib * 1024))
        res = run_cli("save", str(src), "--name", "b", "--overhead", "0.3", store=store)
        filler.unlink()
        assert res.returncode in (0, 1), res.stderr
        if res.returncode == 1:
            assert "no space left while saving b" in res.stderr, res.stderr
        outcomes.add(res.returncode)
        assert not any((small_fs / "store" / "staging").iterdir())
    assert outcomes == {0, 1}
    for v in store.versions("b"):
        assert store.load_bytes(f"b@{v}")[0].getvalue() == src.read_bytes()


def test_names_with_line_separators_stay_on_one_line(store, make_file):
    """U+0085 and U+2028 end a line for Python's ``splitlines`` (and some terminals): written
    raw, a stray folder's name broke the verify line in two. Escaped, as control characters
    are."""
    store.save(make_file(1000), "a")
    for odd in ("2\x85x", "b\u2028y"):
        (store.backend.artifacts_dir / ("a" if odd.startswith("2") else "") / odd).mkdir()
    res = run_cli("verify", store=store, check_rc=0)
    assert len(res.stderr.splitlines()) == 2, res.stderr
    assert "artifacts/a/2\\x85x" in res.stderr and "artifacts/b\\u2028y" in res.stderr
    assert len(run_cli("scrub", store=store, check_rc=0).stdout.splitlines()) == 1 + 2
