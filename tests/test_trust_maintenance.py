"""Class 2: maintenance never touches a save in progress.

Saves run in a loop in one process while ``scrub --remove-orphans`` runs in a loop in
others, on a real directory store and on a real SeaweedFS server: hundreds of saves, and
not one committed version may come out without its payload or sidecar, nor may a save fail
because maintenance removed what it was writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ftstore import Store, verify
from ftstore.api import scrub
from ftstore.documents import ArtifactKey
from ftstore.errors import BadInputError

SAVER = r"""
import json, os, random, sys
from pathlib import Path
from ftstore import Store
store = Store.open(sys.argv[1])
count, out = int(sys.argv[2]), Path(sys.argv[3])
rng = random.Random(int(sys.argv[4]))
saved, failed = [], []
for i in range(count):
    data = rng.randbytes(rng.randrange(1, 40_000))
    name = f"n{i % 3}"
    try:
        if i % 2 and store.capabilities.hard_links:  # save --move of a file built in the store
            with store.scratch() as folder:
                (folder / "f").write_bytes(data)
                env = store.save(folder / "f", name, move=True)
        else:
            src = out.with_name(f"src-{os.getpid()}")
            src.write_bytes(data)
            env = store.save(src, name)
        saved.append([name, env.version, env.source_hash])
    except Exception as e:
        failed.append(f"{type(e).__name__}: {e}")
out.write_text(json.dumps({"saved": saved, "failed": failed}))
"""

SCRUBBER = r"""
import os, sys
from ftstore import Store
from ftstore.api import scrub
from ftstore.documents import ArtifactKey
from ftstore.errors import BadInputError
store = Store.open(sys.argv[1])
stop = sys.argv[2]
passes = removed = 0
while not os.path.exists(stop):
    report = scrub(store, remove_orphans=True, write_report=False, jobs=1)
    removed += sum(o.removed for o in report.orphans)
    passes += 1
print(passes, removed)
"""


def _run(store_url: str, tmp_path, saves: int, scrubbers: int, timeout: float) -> dict:
    stop = tmp_path / "stop"
    env = dict(os.environ)
    cleaners = [subprocess.Popen([sys.executable, "-c", SCRUBBER, store_url, str(stop)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(scrubbers)]
    savers = [subprocess.Popen([sys.executable, "-c", SAVER, store_url, str(saves), str(tmp_path / f"saved-{k}.json"),
                                str(k)], env=env, stderr=subprocess.PIPE, text=True) for k in range(2)]
    try:
        for s in savers:
            assert s.wait(timeout) == 0, s.stderr.read()
    finally:
        stop.write_text("")
        for c in cleaners:
            out, err = c.communicate(timeout=120)
            assert c.returncode == 0, err
            assert int(out.split()[0]) >= 1  # it really ran alongside
    saved, failed = [], []
    for k in range(2):
        doc = json.loads((tmp_path / f"saved-{k}.json").read_text())
        saved += doc["saved"]
        failed += doc["failed"]
    return {"saved": saved, "failed": failed}


def _every_save_is_whole(store: Store, result: dict, jobs: int | None = None) -> None:
    assert result["failed"] == [], result["failed"][:3]
    committed = {(k.name, k.version) for k in store.keys()}
    assert {(n, v) for n, v, _ in result["saved"]} == committed  # none lost, none extra
    for h in verify(store):
        assert h.intact, h.problems  # payload and sidecar present and right, every one
    hashes = {(n, v): digest for n, v, digest in result["saved"]}
    for key in store.keys():
        assert store.read_envelope(key).source_hash == hashes[(key.name, key.version)]
    report = scrub(store, remove_orphans=True, write_report=False, jobs=jobs)
    assert report.totals.failed == 0
    assert scrub(store, write_report=False, jobs=jobs).orphans == []


def test_remove_orphans_in_a_loop_never_harms_saves_running_in_a_loop(tmp_path):
    store = Store.open(tmp_path / "store", create=True)
    t = time.monotonic()
    result = _run(store.url, tmp_path, saves=200, scrubbers=2, timeout=600)
    assert len(result["saved"]) == 400
    _every_save_is_whole(store, result)
    assert time.monotonic() - t < 600


def test_remove_orphans_never_takes_a_claimed_version_on_s3(seaweed, tmp_path):
    url = f"s3://ftstore-trust/maintenance-{os.getpid()}"
    store = Store.open(url, create=True)
    result = _run(url, tmp_path, saves=25, scrubbers=1, timeout=600)
    assert len(result["saved"]) == 50
    # jobs=1: codec worker processes started by an earlier test lack this server's credentials
    _every_save_is_whole(store, result, jobs=1)


@pytest.mark.parametrize("kill_after", [0.05, 0.2])
def test_a_killed_save_is_an_orphan_only_once_its_process_is_gone(tmp_path, make_file, kill_after):
    """While the saving process lives, its staging folder is never an orphan; once it is
    SIGKILLed, it is, and --remove-orphans clears it without touching committed versions."""
    store = Store.open(tmp_path / "store", create=True)
    store.save(make_file(1000), "keep")
    big = make_file(30_000_000, seed=1)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from ftstore import Store; "
                             "Store.open(sys.argv[1]).save(sys.argv[2], 'big')", store.url, str(big)])
    deadline = time.monotonic() + 60
    while not any(p.is_dir() for p in store.backend.staging_dir.glob("*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(kill_after)
    live = scrub(store, write_report=False).orphans
    assert proc.poll() is not None or not any(o.path.startswith("staging/") for o in live)
    proc.kill()
    proc.wait()
    report = scrub(store, remove_orphans=True, write_report=False)
    assert all(o.removed for o in report.orphans)
    assert [k.ref for k in store.keys()] in (["keep@1"], ["big@1", "keep@1"])
    assert all(h.intact for h in verify(store))
    assert not any(store.backend.staging_dir.iterdir())


def test_a_lock_file_maintenance_saw_free_is_not_removed_once_a_save_holds_it(tmp_path):
    """The race behind "1 of 555 saves committed without payload and sidecar": a save's
    lock file exists before the save has locked it. Maintenance sees it free, with no folder
    beside it; then the save locks it and makes its folder; maintenance must not remove the
    lock now (it would leave the live folder looking dead, and the next pass empty it)."""
    from ftstore.stores.local import _Lease

    store = Store.open(tmp_path / "store", create=True)
    staging = store.backend.staging_dir
    staging.mkdir()
    folder = staging / ("a" * 32)
    (staging / (folder.name + ".lock")).write_bytes(b"")  # created, not yet locked
    assert [o.path for o in store.backend.orphans()] == [f"staging/{folder.name}.lock"]
    lease = _Lease(folder)  # the save locks it now, and makes its folder
    folder.mkdir()
    try:
        assert store.backend.remove_orphan(f"staging/{folder.name}.lock") is False
        assert (staging / (folder.name + ".lock")).exists()
        assert store.backend.orphans() == []
        assert scrub(store, remove_orphans=True, write_report=False).orphans == []
        assert folder.is_dir()
    finally:
        lease.release()
    assert [o.path for o in store.backend.orphans()] == [f"staging/{folder.name}"]  # dead now


def test_a_save_whose_lock_file_was_removed_before_it_locked_it_takes_a_new_one(tmp_path, monkeypatch):
    """The other order: maintenance removes the (free, folderless) lock file between the
    save's create and its lock. The save must notice and lock a file that is at the name."""
    import fcntl

    from ftstore.stores import local

    store = Store.open(tmp_path / "store", create=True)
    store.backend.staging_dir.mkdir()
    folder = store.backend.staging_dir / ("b" * 32)
    real_flock = fcntl.flock
    interfered = []

    def maintenance_first(fd, op):
        if op == fcntl.LOCK_EX and not interfered:
            interfered.append(store.backend.remove_orphan(f"staging/{folder.name}.lock"))
        return real_flock(fd, op)

    monkeypatch.setattr(local.fcntl, "flock", maintenance_first)
    lease = local._Lease(folder)
    monkeypatch.undo()
    try:
        assert interfered == [True]  # maintenance did remove the first lock file
        lock = folder.with_name(folder.name + ".lock")
        assert os.fstat(lease.fd).st_ino == os.stat(lock).st_ino  # the lease holds the one at the name
        folder.mkdir()
        assert store.backend.orphans() == []
    finally:
        lease.release()


def _claimed_by_a_killed_copy(seaweed, tmp_path, make_file, monkeypatch):
    """A local a@1, and an S3 store where a copy of it was killed long ago (claim older
    than the lease, set to 2 s here): its claim and half a payload are left."""
    monkeypatch.setattr("ftstore.stores.s3.CLAIM_LEASE_SECONDS", 2)
    src = Store.open(tmp_path / "src", create=True)
    data = make_file(300_000)
    src.save(data, "a")
    dst = Store.open(f"s3://ftstore-trust/takeover-{os.getpid()}-{time.monotonic_ns()}", create=True)
    dst.backend._put("artifacts/a/1/claim", src.read_envelope("a@1").artifact_id.encode())
    dst.backend._put("artifacts/a/1/payload", b"half a payload")
    time.sleep(2.2)
    assert [o.path for o in dst.backend.orphans()] == ["artifacts/a/1/"]
    return src, dst, data


def test_maintenance_never_removes_a_claim_a_rerun_copy_took_over(seaweed, tmp_path, make_file, monkeypatch):
    from ftstore.api import copy
    from ftstore.stores.s3 import S3Staging

    src, dst, data = _claimed_by_a_killed_copy(seaweed, tmp_path, make_file, monkeypatch)
    listed = dst.backend.orphans()  # maintenance lists the old claim as an interrupted save ...
    real_commit = S3Staging.commit

    def maintenance_then_commit(self, *a, **kw):
        assert [dst.backend.remove_orphan(o.path) for o in listed] == [False]  # ... but the claim is renewed
        return real_commit(self, *a, **kw)

    monkeypatch.setattr(S3Staging, "commit", maintenance_then_commit)
    [r] = copy(src, dst)
    assert r.status == "copied"
    assert dst.backend.read_leaf(dst.resolve("a@1"), "payload", 1 << 30) == data.read_bytes()
    assert all(h.intact for h in verify(dst))


def test_a_save_whose_objects_maintenance_removed_is_never_committed(seaweed, tmp_path, make_file, monkeypatch):
    from ftstore.api import copy
    from ftstore.stores.s3 import S3Staging

    src, dst, _ = _claimed_by_a_killed_copy(seaweed, tmp_path, make_file, monkeypatch)
    real_commit = S3Staging.commit

    def payload_removed_then_commit(self, *a, **kw):
        dst.backend._delete("artifacts/a/1/payload")  # as a remover that listed it before the renewal
        return real_commit(self, *a, **kw)

    monkeypatch.setattr(S3Staging, "commit", payload_removed_then_commit)
    [r] = copy(src, dst)
    assert r.status == "failed" and "vanished before the commit" in r.detail
    assert dst.keys() == []


_AT_WORK = """
import sys, time
from pathlib import Path
from ftstore import Store
from ftstore.documents import ArtifactKey
from ftstore.errors import BadInputError
store = Store.open(sys.argv[1])
with store.backend.working_copy(ArtifactKey("a", 1)) as folder:
    (folder / "payload.spill.tmp-0123456789ab").write_bytes(b"symbols being decoded")
    (folder / "sidecar.ftrq.tmp-0123456789ab").write_bytes(b"a sidecar being encoded")
    print("working", flush=True)
    sys.stdin.readline()
"""


def test_remove_orphans_never_takes_the_files_a_repair_is_writing(tmp_path, make_file):
    """A repair or protector writes temporary and spill files in the version's folder for
    as long as it works: `scrub --remove-orphans` used to remove them (a repairable
    artifact then failed). It neither lists nor removes them while the work goes on, and
    removes what a killed worker left once nothing holds the folder."""
    store = Store.open(tmp_path / "s", create=True)
    store.save(make_file(50_000), "a")
    worker = subprocess.Popen([sys.executable, "-c", _AT_WORK, str(store.url)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "working"
        folder = store.backend.version_dir(ArtifactKey("a", 1))
        report = scrub(store, remove_orphans=True, warn=lambda _: None)
        assert report.orphans == [] and len(list(folder.glob("*.tmp-*"))) == 2
        os.kill(worker.pid, 9)  # killed mid-work: its files are left, and its lock goes with it
        worker.wait()
        report = scrub(store, remove_orphans=True, warn=lambda _: None)
        assert sorted(o.path.rsplit("/", 1)[1] for o in report.orphans if o.removed) == \
            ["payload.spill.tmp-0123456789ab", "sidecar.ftrq.tmp-0123456789ab"]
        assert list(folder.glob("*.tmp-*")) == [] and all(h.intact for h in verify(store))
    finally:
        worker.kill()


def test_ranks_creating_one_store_at_once_all_open_it(tmp_path):
    """Ranks of one job (or a job array) start together and each opens the store with
    create=True: none may take the others' half-made store for a foreign folder (2 of 8
    rounds of 4 used to fail with "exists, is not empty and is not an ftstore store")."""
    code = ("import sys\nfrom ftstore import Store\n"
            "Store.open(sys.argv[1], create=True).save(sys.argv[2], 'r')\n")
    src = tmp_path / "src"
    src.write_bytes(b"x" * 1000)
    for r in range(8):
        root = tmp_path / f"store{r}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(src)], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
        errs = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errs
        assert Store.open(root).versions("r") == [1, 2, 3, 4]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not an ftstore store"):
        Store.open(tmp_path / "foreign", create=True)


_DELETE_THEN_COPY = """
import sys
from ftstore import Store, api
main, other = Store.open(sys.argv[1]), Store.open(sys.argv[2])
main.save(sys.argv[3], "a")            # a@5
main.delete("a@5")                     # a tombstone at 5; the ones at 3 and 4 are dropped
print([r.status for r in api.copy(other, main, ["a@3"])])
"""


def test_a_delete_acts_on_what_is_there_not_on_what_it_listed(tmp_path, make_file, monkeypatch):
    """Delete A is slow between making its tombstone and dropping the older ones; another
    process deletes meanwhile (dropping the tombstone at 3) and copies a version into 3.
    A must not then discard that copy as the tombstone it listed: deletes hold the name's
    lock, so the other process waits for A."""
    from ftstore.stores import local

    main, other = Store.open(tmp_path / "m", create=True), Store.open(tmp_path / "o", create=True)
    for i in range(3):
        main.save(make_file(1000, seed=i), "a")
        other.save(make_file(1000, seed=10 + i), "a")
    main.delete("a@3")  # the highest: a tombstone
    main.save(make_file(1000, seed=3), "a")  # a@4
    main.delete("a@2")  # below: discarded whole; now 1, (3), 4
    paused, go = threading.Event(), threading.Event()
    real = local.LocalStore._bury

    def slow_bury(self, key):
        real(self, key)
        paused.set()
        go.wait(30)

    monkeypatch.setattr(local.LocalStore, "_bury", slow_bury)
    a = threading.Thread(target=main.delete, args=("a@4",))
    a.start()
    assert paused.wait(30)
    b = subprocess.Popen([sys.executable, "-c", _DELETE_THEN_COPY, str(main.url), str(other.url),
                          str(make_file(1000, seed=99))], stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # B is now waiting for the name's lock (it used to go ahead)
    go.set()
    a.join(30)
    assert b.communicate(timeout=120)[0].strip() == "['copied']"
    monkeypatch.undo()
    assert main.versions("a") == [1, 3]
    assert main.load_bytes("a@3")[0].getvalue() == other.load_bytes("a@3")[0].getvalue()


_DELETE = "import sys; from ftstore import Store; Store.open(sys.argv[1]).delete(sys.argv[2])"


@pytest.mark.parametrize("moment", ["before the patch", "before the decode"])
def test_a_version_deleted_by_another_process_under_a_repair_is_reported_deleted(tmp_path, make_file, monkeypatch,
                                                                                 moment):
    """Another process (retention, a superseding save) deletes m@1 while a load repairs it.
    Between the decode and the patch, the patch found no payload and raised a bare
    ValueError (exit 3); earlier, the vanished files were reported as damage (exit 1). Both
    now say the version was deleted (exit 2), and nothing is written anywhere. The hook only
    chooses the moment; the delete is a real one, in another process."""
    from ftstore import codec  # the engine calls the decoder and the patch through the package
    from ftstore.errors import NotFoundError

    store = Store.open(tmp_path / "s", create=True)
    src = make_file(2_000_000, seed=1)
    store.save(src, "m")
    store.save(src, "m")
    root = tmp_path / "s"
    with open(root / "artifacts" / "m" / "1" / "payload", "r+b") as f:
        f.seek(10_000)
        f.write(bytes(5000))
    name = "patch_in_place" if moment == "before the patch" else "check_and_decode"
    real = getattr(codec, name)

    def delete_first(*args, **kwargs):
        subprocess.run([sys.executable, "-c", _DELETE, str(root), "m@1"], check=True, timeout=120)
        return real(*args, **kwargs)

    monkeypatch.setattr(codec, name, delete_first)
    with pytest.raises(NotFoundError, match="m@1 was deleted from .* while it was being repaired"):
        store.load("m@1", tmp_path / "out")
    assert not (tmp_path / "out").exists() and store.versions("m") == [2]
    assert not (root / "artifacts" / "m" / "1").exists()


def test_a_version_deleted_from_the_source_while_it_is_copied_is_skipped_not_failed(tmp_path, make_file, monkeypatch):
    import ftstore.engine.copy as copy_module
    from ftstore.api import copy

    src = Store.open(tmp_path / "src", create=True)
    dst = Store.open(tmp_path / "dst", create=True)
    src.save(make_file(300_000, seed=1), "m")
    src.save(make_file(300_000, seed=2), "m")
    real = copy_module.download_leaves

    def delete_first(store, key, folder):
        if key.version == 1:
            subprocess.run([sys.executable, "-c", _DELETE, str(tmp_path / "src"), "m@1"], check=True, timeout=120)
        return real(store, key, folder)

    monkeypatch.setattr(copy_module, "download_leaves", delete_first)
    results = {r.ref: r for r in copy(src, dst)}
    assert results["m@1"].status == "skipped" and "deleted from the source" in results["m@1"].detail
    assert results["m@2"].status == "copied" and dst.versions("m") == [2]


def test_a_version_damaged_at_the_destination_stays_failed_though_the_source_s_went(tmp_path, monkeypatch):
    """The skip for a version deleted from the source applies only where the destination
    lacks it: one it holds, damaged beyond repair there, is still a failure."""
    import random

    import ftstore.engine.copy as copy_module
    from ftstore.api import copy

    src = Store.open(tmp_path / "src", create=True)
    dst = Store.open(tmp_path / "dst", create=True)
    for seed in (1, 2):
        (tmp_path / "f").write_bytes(random.Random(seed).randbytes(300_000))
        src.save(tmp_path / "f", "m")
    copy(src, dst)
    (tmp_path / "dst" / "artifacts" / "m" / "1" / "payload").write_bytes(bytes(300_000))
    real = copy_module.download_leaves

    def delete_first(store, key, folder):
        if key.version == 1 and store is src.backend:
            subprocess.run([sys.executable, "-c", _DELETE, str(tmp_path / "src"), "m@1"], check=True, timeout=120)
        return real(store, key, folder)

    monkeypatch.setattr(copy_module, "download_leaves", delete_first)
    results = {r.ref: r for r in copy(src, dst)}
    assert results["m@1"].status == "failed" and "damaged at the destination" in results["m@1"].detail
