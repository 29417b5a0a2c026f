"""The store-facing behaviour, run on a local directory and on real SeaweedFS (S3)."""

import json
import os
import random
import subprocess
import sys
import time

import pytest

from ftstore import CheckpointManager, Store, UnrecoverableError, load, verify
from ftstore.codec.sidecar import read_meta
from ftstore.hashing import hash_bytes
from ftstore.api import scrub
from ftstore.api import copy as copy_store

from .conftest import ArtifactFiles, run_cli, files


def _save(store, make_file, size, name="a", seed=0):
    src = make_file(size, seed)
    env = store.save(src, name)
    paths = store.resolve(f"{name}@{env.version}")
    return src.read_bytes(), paths, ArtifactFiles(store, paths)


def _flip(data: bytes, positions) -> bytes:
    b = bytearray(data)
    for p in positions:
        b[p] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("size", [0, 1, 100_003, 9 * 1024 * 1024 + 5])
def test_round_trip(any_store, make_file, tmp_path, size):
    orig, paths, _ = _save(any_store, make_file, size)
    assert all(h.intact for h in verify(any_store))
    load(any_store, "a", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == orig


def test_save_move_takes_the_file_over(any_store, make_file, tmp_path):
    src = make_file(20_000_000)
    orig = src.read_bytes()
    with any_store.scratch() as scratch:
        built = scratch / "built.bin"  # where the checkpoint manager builds bundles
        built.write_bytes(orig[:1000])
        any_store.save(built, "b", move=True)
        assert not built.exists()
    any_store.save(src, "a", move=True)
    assert not src.exists()
    assert all(h.intact for h in verify(any_store))
    load(any_store, "a", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == orig


def test_versions_and_listing(any_store, make_file):
    for i in range(3):
        any_store.save(make_file(100 + i, seed=i), "m")
    any_store.save(make_file(10), "other")
    assert any_store.names() == ["m", "other"] and any_store.versions("m") == [1, 2, 3]
    rows = json.loads(run_cli("ls", "--json", store=any_store, check_rc=0).stdout)
    assert [(r["name"], r["version"]) for r in rows] == [("m", 1), ("m", 2), ("m", 3), ("other", 1)]


def test_flipped_byte_is_found_and_healed_by_load(any_store, make_file, tmp_path):
    orig, paths, files = _save(any_store, make_file, 2_000_000)
    files.write("payload", _flip(files.read("payload"), [5, 1_500_000]))
    run_cli("verify", "a", store=any_store, check_rc=1)
    out = tmp_path / "out"
    run_cli("load", "a", "-o", str(out), store=any_store, check_rc=0)
    assert out.read_bytes() == orig and files.read("payload") == orig
    assert any_store.read_envelope(paths).decode_proofs[-1].target == "payload"


@pytest.mark.parametrize("fault", ["bit_flips", "truncated", "sidecar_deleted", "sidecar_damaged",
                                   "envelope_deleted", "envelope_damaged"])
def test_scrub_repair_heals_damage_in_the_store(any_store, make_file, fault):
    orig, paths, files = _save(any_store, make_file, 3_000_000, seed=4)
    lay = read_meta_bytes(files.read("sidecar.ftrq"))
    if fault == "bit_flips":
        files.write("payload", _flip(orig, [lay.symbol_extent(j)[0] for j in range(0, lay.budget(0) * 3, 3)]))
    elif fault == "truncated":
        files.write("payload", orig[: len(orig) - lay.symbol_size * (lay.budget(0) - 1)])
    elif fault == "sidecar_deleted":
        files.delete("sidecar.ftrq")
    elif fault == "sidecar_damaged":
        sc = files.read("sidecar.ftrq")
        files.write("sidecar.ftrq", bytes(64) + sc[64:])
    elif fault == "envelope_deleted":
        files.delete("envelope.json")
    else:
        files.write("envelope.json", files.read("envelope.json").replace(b'"size": 3000000', b'"size": 3000001'))
    report = json.loads(run_cli("scrub", "--repair", "--json", store=any_store, check_rc=0).stdout)
    assert report["artifacts"][0]["status"] == "recovered"
    assert files.read("payload") == orig
    run_cli("verify", store=any_store, check_rc=0)


def read_meta_bytes(data: bytes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "sc"
        p.write_bytes(data)
        return read_meta(p).layout


def test_damage_beyond_budget_is_reported_failed_never_ok(any_store, make_file, tmp_path):
    orig, paths, files = _save(any_store, make_file, 500_000)
    files.write("payload", bytes(len(orig)))
    assert scrub(any_store, repair=True).artifacts[0].status == "failed"
    with pytest.raises(UnrecoverableError):
        load(any_store, "a", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_checkpoint_manager(any_store, make_file, tmp_path):
    m = CheckpointManager(any_store, "run", keep_last=2)
    srcs = {s: make_file(50_000 + s, seed=s) for s in (1, 2, 3)}
    for s, f in srcs.items():
        m.save(s, f)
    assert m.steps() == [2, 3]
    ArtifactFiles(any_store, any_store.resolve("run")).write("payload", b"rotten")
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        assert m.restore(tmp_path / "r").step == 2
    assert (tmp_path / "r").read_bytes() == srcs[2].read_bytes()
    bg = CheckpointManager(any_store, "bg", background=True)
    bg.save(1, make_file(2_000_000, seed=9))
    bg.wait_until_finished()
    assert any_store.read_envelope(any_store.resolve("bg")).raptorq is not None


def test_bundles(any_store):
    torch = pytest.importorskip("torch")
    from ftstore.bundles import load_bundle, save_bundle

    build = lambda cfg: torch.nn.Linear(cfg["N"], cfg["gridsize"])
    model = build({"N": 4, "gridsize": 2})
    save_bundle(any_store, "b", {"m": model}, "pytorch", params={"N": 4, "gridsize": 2})
    target = {"N": 99}
    res = load_bundle(any_store, "b", "pytorch", builders={"m": build}, target=target)
    x = torch.rand(1, 4)
    assert torch.equal(res.models["m"](x), model(x)) and target["N"] == 4


def test_drill_from_store(any_store, make_file):
    for i in range(3):
        any_store.save(make_file(300_000, seed=i), f"d{i}")
    res = run_cli("drill", "--from-store", "--seed", "5", "--json", store=any_store, check_rc=0)
    assert json.loads(res.stdout)["passed"]


def test_orphans_of_an_interrupted_save(any_store, make_file, monkeypatch):
    _save(any_store, make_file, 1000)
    src = make_file(5000, seed=9)
    code = ("import os, sys; from pathlib import Path; from ftstore.stores import open_store\n"
            "staging = open_store(sys.argv[1]).stage('a')\n"
            "staging.copy_in('payload', Path(sys.argv[2]), None, None, True)\n"
            "os._exit(0)  # dies mid-save: no commit, no clean-up\n")
    subprocess.run([sys.executable, "-c", code, any_store.url, str(src)], check=True)
    assert any_store.versions("a") == [1]
    assert scrub(any_store).orphans == [] or any_store.capabilities.local_files  # S3: within the claim's lease
    monkeypatch.setattr("ftstore.stores.s3.CLAIM_LEASE_SECONDS", 0)
    report = scrub(any_store)
    assert len(report.orphans) == 1 and not report.orphans[0].removed
    assert scrub(any_store, remove_orphans=True).orphans[0].removed
    assert scrub(any_store).orphans == []


def test_copy_between_local_and_s3_repairs_at_the_destination(seaweed, make_file, tmp_path):
    local = Store.open(tmp_path / "l", create=True)
    remote_url = f"s3://ftstore-tests/copy-{os.getpid()}-{random.random():.8f}"
    orig = make_file(1_000_000).read_bytes()
    local.save(make_file(1_000_000), "x")
    p = files(local, "x@1")
    p.payload.write_bytes(_flip(orig, [10]))  # damaged at the source
    res = run_cli("copy", local.url, remote_url, "--json", check_rc=0)
    assert json.loads(res.stdout)[0]["status"] == "repaired"
    remote = Store.open(remote_url)
    assert ArtifactFiles(remote, remote.resolve("x@1")).read("payload") == orig
    assert p.payload.read_bytes() != orig  # the source is only read
    back = Store.open(tmp_path / "back", create=True)
    assert [r.status for r in copy_store(remote, back)] == ["copied"]
    assert files(back, "x@1").payload.read_bytes() == orig
    assert [r.status for r in copy_store(remote, back)] == ["skipped"]


def test_two_processes_saving_the_same_name_get_distinct_versions(any_store, make_file):
    srcs = [make_file(3_000_000, seed=s) for s in range(4)]
    env = dict(os.environ, FTSTORE_STORE=any_store.url)
    procs = [subprocess.Popen([sys.executable, "-m", "ftstore.cli", "save", str(s), "--name", "race", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for s in srcs]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    versions = sorted(json.loads(o[0])["envelope"]["version"] for o in outs)
    assert versions == [1, 2, 3, 4]
    hashes = {json.loads(o[0])["envelope"]["version"]: json.loads(o[0])["envelope"]["source_hash"] for o in outs}
    for v, h in hashes.items():
        assert ArtifactFiles(any_store, any_store.resolve(f"race@{v}")).read("payload").__len__() == 3_000_000
        assert hash_bytes(ArtifactFiles(any_store, any_store.resolve(f"race@{v}")).read("payload")) == h
    assert all(h.intact for h in verify(any_store))


def test_killing_the_server_mid_save_leaves_no_committed_partial_artifact(tmp_path, make_file, monkeypatch):
    from .seaweed import Seaweed, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed")
    server = Seaweed(tmp_path / "weed")
    server.start()
    env = dict(os.environ, **server.env(), FTSTORE_STORE="s3://killed/store")
    try:
        small = make_file(1000, seed=1)
        subprocess.run([sys.executable, "-m", "ftstore.cli", "save", str(small), "--name", "keep"], env=env, check=True,
                       capture_output=True)
        big = make_file(200 * 1024 * 1024, seed=2)
        proc = subprocess.Popen([sys.executable, "-m", "ftstore.cli", "save", str(big), "--name", "big"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import boto3

        s3 = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.env()["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=server.env()["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the save has claimed version 1: its upload is under way
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="killed", Prefix="store/artifacts/big/").get("Contents", [])]
            if keys:
                break
            time.sleep(0.05)
        assert keys == ["store/artifacts/big/1/claim"], keys
        server.kill()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode != 0 and "Traceback" not in err
        server.start()
        for k, v in server.env().items():  # for this test only: later tests use the session's server
            monkeypatch.setenv(k, v)
        store = Store.open("s3://killed/store")
        assert store.names() == ["keep"]
        assert all(h.intact for h in verify(store))
        assert scrub(store).orphans == []  # within the claim's lease it may be a save in progress
        monkeypatch.setattr("ftstore.stores.s3.CLAIM_LEASE_SECONDS", 0)
        report = scrub(store, remove_orphans=True)
        assert report.totals.ok == 1 and report.totals.failed == 0
        paths = [o.path for o in report.orphans]
        assert paths[0] == "artifacts/big/1/" and all(o.removed for o in report.orphans)
        # the killed upload's parts, kept by the server until aborted: aborted now
        assert all(p.startswith("artifacts/big/1/payload?uploadId=") for p in paths[1:])
        assert not s3.list_multipart_uploads(Bucket="killed").get("Uploads")
        assert store.save(small, "big").version >= 1
    finally:
        server.stop()
