"""An envelope a newer ftstore wrote is left alone: not used, not taken for damage, never
rebuilt over (a team upgrading one machine at a time shares its stores with older
releases). One flipped bit in an envelope's version number is still damage, repaired."""

import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from .conftest import files
from ftstore import Store
from ftstore.documents import decode_envelope
from ftstore.documents.envelope_json import canonical
from ftstore.errors import EnvelopeError, NewerFormatError
from ftstore.hashing import hash_bytes

FTSTORE = [sys.executable, "-m", "ftstore.cli"]


def _newer(envelope: bytes, *, new_field: bool) -> bytes:
    """What a release with envelope schema_version 2 could write: the number raised, a field
    of its own perhaps, and a checksum over that document (its rule, assumed to be ours)."""
    doc = json.loads(envelope)
    doc["schema_version"] = 2
    if new_field:
        doc["shards"] = [{"rank": 0, "size": doc["size"]}]
    doc["checksum"] = "blake3:" + "0" * 64
    doc["checksum"] = hash_bytes(canonical(doc))
    return json.dumps(doc, indent=2).encode()


@pytest.fixture
def saved(store: Store, tmp_path: Path) -> tuple[Store, bytes]:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3_000_000))
    store.save(payload, "m")
    return store, payload.read_bytes()


@pytest.mark.parametrize("new_field", [True, False])
def test_a_newer_envelope_is_named_as_such(saved, new_field):
    store, _ = saved
    data = _newer(files(store, "m@1").envelope.read_bytes(), new_field=new_field)
    with pytest.raises(NewerFormatError, match="written by a newer ftstore .*schema_version 2"):
        decode_envelope(data)


@pytest.mark.parametrize("version", [3, 0, -1, "2", 2.0, True, None])
def test_a_damaged_version_number_is_damage(sample_envelope_bytes, version):
    """1 -> 3 is one flipped bit: set back, the envelope passes its own checksum."""
    doc = json.loads(sample_envelope_bytes)
    doc["schema_version"] = version
    with pytest.raises(EnvelopeError, match="schema_version"):
        decode_envelope(json.dumps(doc).encode())


@pytest.fixture
def sample_envelope_bytes(saved) -> bytes:
    store, _ = saved
    return files(store, "m@1").envelope.read_bytes()


def _cli(*args, cwd):
    return subprocess.run([*FTSTORE, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_every_command_leaves_a_newer_envelope_as_it_is(saved, tmp_path):
    store, payload = saved
    f = files(store, "m@1")
    newer = _newer(f.envelope.read_bytes(), new_field=True)
    f.envelope.write_bytes(newer)
    url = store.url

    res = _cli("verify", "--store", url, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout.startswith("NEWER    m@1"), res
    assert "Traceback" not in res.stderr and "1 written by a newer ftstore" in res.stderr
    res = _cli("verify", "--json", "--store", url, cwd=tmp_path)
    assert res.returncode == 2 and json.loads(res.stdout)[0]["status"] == "newer_format"

    out = tmp_path / "out.bin"
    res = _cli("load", "m", "-o", str(out), "--store", url, cwd=tmp_path)
    assert res.returncode == 2 and not out.exists()
    assert res.stderr.count("\n") == 1 and "upgrade ftstore" in res.stderr, res.stderr

    res = _cli("show", "m", "--store", url, cwd=tmp_path)
    assert res.returncode == 2 and "newer ftstore" in res.stderr

    f.sidecar.unlink()  # damage beside it: still nothing is rebuilt from this release's view
    (f.folder / "shards.json").write_text("{}")  # a file the newer release writes there
    res = _cli("scrub", "--repair", "--deep", "--remove-orphans", "--store", url, cwd=tmp_path)
    assert res.returncode == 1 and "newer ftstore" in res.stdout + res.stderr, res
    assert "Traceback" not in res.stderr

    mirror = tmp_path / "mirror"
    res = _cli("copy", url, str(mirror), cwd=tmp_path)
    assert res.returncode != 0 and "newer ftstore" in res.stdout + res.stderr, res
    assert not (mirror / "artifacts" / "m" / "1").exists()

    assert f.envelope.read_bytes() == newer and f.payload.read_bytes() == payload and not f.sidecar.exists()
    assert (f.folder / "shards.json").read_text() == "{}"


def test_one_flipped_bit_in_the_version_is_repaired(saved, tmp_path):
    store, payload = saved
    f = files(store, "m@1")
    original = f.envelope.read_bytes()
    assert original.count(b'"schema_version": 1') == 1
    f.envelope.write_bytes(original.replace(b'"schema_version": 1', b'"schema_version": 3'))  # 0x31 -> 0x33
    out = tmp_path / "out.bin"
    res = _cli("load", "m", "-o", str(out), "--store", store.url, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == payload
    rebuilt = decode_envelope(f.envelope.read_bytes())
    assert msgspec.structs.replace(rebuilt, decode_proofs=[], checksum="") == \
        msgspec.structs.replace(decode_envelope(original), decode_proofs=[], checksum="")
    assert [p.target for p in rebuilt.decode_proofs] == ["envelope"]


def test_a_newer_checkpoint_is_passed_over_by_restore(store, tmp_path):
    torch = pytest.importorskip("torch")
    from ftstore import CheckpointManager

    m = CheckpointManager(store, "run")
    m.save(1, {"w": torch.ones(3)})
    m.save(2, {"w": torch.full((3,), 2.0)})
    f = files(store, "run@2")
    newer = _newer(f.envelope.read_bytes(), new_field=True)
    f.envelope.write_bytes(newer)
    with pytest.warns(UserWarning, match="newer ftstore"):
        state = m.restore()
    assert torch.equal(state["w"], torch.ones(3)) and m.restored.step == 1
    assert f.envelope.read_bytes() == newer


def test_an_envelope_nested_past_the_stack_is_refused_cleanly(saved, tmp_path):
    """Nested a little less deep than the decoder allows: checking it once raised
    RecursionError (exit 3 for verify, ls, scrub and copy, and the rest of the store went
    unchecked). Each depth is a version of its own, so some land where it once broke."""
    store, _ = saved
    src = tmp_path / "small.bin"
    src.write_bytes(os.urandom(1000))
    for depth in range(940, 1000, 4):
        env = store.save(src, "deep")
        inner = '{"a":' * depth + "1" + "}" * depth
        files(store, f"deep@{env.version}").envelope.write_text(
            '{"format":"ftstore-envelope","schema_version":2,"x":' + inner + "}")
    for args in (["verify"], ["ls"], ["scrub"]):
        res = _cli(*args, "--store", store.url, cwd=tmp_path)
        assert res.returncode in (0, 1, 2) and "Traceback" not in res.stderr and "internal" not in res.stderr, res
    res = _cli("verify", "m", "--store", store.url, cwd=tmp_path)
    assert res.returncode == 0, res


def test_a_repair_refuses_a_version_a_newer_ftstore_wrote(saved):
    """Whatever calls it (a load or restore on a store whose working copy is checked
    again, after a newer node rewrote the envelope): nothing is rebuilt."""
    from ftstore.engine.integrity import check, repair

    store, _ = saved
    f = files(store, "m@1")
    newer = _newer(f.envelope.read_bytes(), new_field=True)
    f.envelope.write_bytes(newer)
    with open(f.payload, "r+b") as p:
        p.write(b"\0" * 1000)
    health = check(f)
    assert health.newer_format and not health.files_damaged and not health.damaged
    with pytest.raises(NewerFormatError):
        repair(f, health, reason="test")
    assert f.envelope.read_bytes() == newer


def test_ls_names_a_newer_version_as_such(saved, tmp_path):
    store, _ = saved
    f = files(store, "m@1")
    f.envelope.write_bytes(_newer(f.envelope.read_bytes(), new_field=False))
    res = _cli("ls", "--store", store.url, cwd=tmp_path)
    assert res.returncode == 0 and "written by a newer ftstore" in res.stdout and "scrub --repair" not in res.stdout


def test_remove_orphans_leaves_everything_under_a_newer_version(any_store, tmp_path):
    """On S3, an object two levels down in a newer version's prefix was removed as a
    stray object: the guard knew only paths one level down."""
    from .conftest import ArtifactFiles
    from ftstore.api import scrub

    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(100_000))
    env = any_store.save(src, "m")
    key = any_store.resolve("m")
    leaves = ArtifactFiles(any_store, key)
    newer = _newer(leaves.read("envelope.json"), new_field=True)
    leaves.write("envelope.json", newer)
    if any_store.backend.capabilities.local_files:
        (any_store.backend.version_dir(key) / "chunks").mkdir()
        (any_store.backend.version_dir(key) / "chunks" / "0001").write_bytes(b"x")
        (any_store.backend.version_dir(key) / "newfile").write_bytes(b"y")
    else:
        any_store.backend._put(any_store.backend._vkey(key, "chunks/0001"), b"x")
        any_store.backend._put(any_store.backend._vkey(key, "newfile"), b"y")
    with pytest.warns(UserWarning, match="newer ftstore"):
        report = scrub(any_store, repair=True, remove_orphans=True)
    assert report.orphans and not any(o.removed for o in report.orphans)
    assert leaves.read("envelope.json") == newer and leaves.read("payload") == src.read_bytes()
    assert env.version == 1


def test_a_copy_onto_a_newer_version_at_the_destination_says_so_and_leaves_it(saved, tmp_path):
    """It was reported as a conflict whose envelope and sidecar 'say no artifact'."""
    from ftstore.api import copy

    store, _ = saved
    mirror = Store.open(tmp_path / "mirror", create=True)
    assert [r.status for r in copy(store, mirror)] == ["copied"]
    f = files(mirror, "m@1")
    newer = _newer(f.envelope.read_bytes(), new_field=True)
    f.envelope.write_bytes(newer)
    f.sidecar.unlink()
    results = copy(store, mirror)
    assert [(r.status, "newer ftstore" in (r.detail or "")) for r in results] == [("conflict", True)]
    assert f.envelope.read_bytes() == newer and not f.sidecar.exists()
