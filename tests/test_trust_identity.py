"""Class 1: a sidecar is bound to exactly one artifact version, and repair decides and
verifies its whole result before it writes a byte.

Every scenario puts real files in a real store (a sidecar restored from a backup into the
wrong folder, another artifact's sidecar, an old-format sidecar, a forged one) and runs the
real commands: an intact payload is never rewritten, a load never returns another version's
bytes, verify never says ok for them."""

from __future__ import annotations

import shutil
import struct
import threading
from pathlib import Path

import msgspec
import pytest

from ftstore import load, verify
from ftstore.api import scrub
from ftstore.codec import read_meta
from ftstore.codec.sidecar import TRAILER_MAGIC, build_block, header_bytes
from ftstore.documents import ArtifactKey, decode_envelope, encode_envelope
from ftstore.engine import save as save_engine
from ftstore.errors import DamageError
from ftstore.hashing import hash_file

from .conftest import files, run_cli

FIXTURES = Path(__file__).parent / "fixtures" / "sidecar-v1"


def _two_versions(store, make_file, size=300_000):
    """a@1 and a@2: same name, bytes that differ in a few places (a checkpoint and the next
    one, fine-tuned), so a2's sidecar could "repair" a1 into a2 within its budget."""
    one = make_file(size, seed=1)
    data = bytearray(one.read_bytes())
    for pos in (1000, 90_000, 250_000):
        data[pos : pos + 8] = b"\x5a" * 8
    two = one.with_name("two.bin")
    two.write_bytes(bytes(data))
    store.save(one, "a")
    store.save(two, "a")
    return one.read_bytes(), two.read_bytes()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_another_versions_sidecar_never_rewrites_an_intact_payload(store, make_file, tmp_path):
    """v2's sidecar restored into v1's folder, v1's envelope lost: scrub --repair used to
    'repair' v1 into v2's bytes and verify then said ok."""
    v1, v2 = _two_versions(store, make_file)
    a1, a2 = files(store, "a@1"), files(store, "a@2")
    shutil.copyfile(a2.sidecar, a1.sidecar)
    a1.envelope.unlink()

    res = run_cli("scrub", "--repair", "--json", store=store, check_rc=1)
    assert a1.payload.read_bytes() == v1  # not one byte of the intact payload changed
    by_ref = {a["ref"]: a for a in msgspec.json.decode(res.stdout)["artifacts"]}
    assert by_ref["a@1"]["status"] == "failed" and by_ref["a@2"]["status"] == "ok"
    assert "belongs to a@2" in " ".join(by_ref["a@1"]["damage"])

    out = tmp_path / "out"
    with pytest.raises(DamageError):
        load(store, "a@1", out)
    assert not out.exists()
    assert not verify(store, ["a@1"])[0].intact
    load(store, "a@2", out)
    assert out.read_bytes() == v2


def test_another_artifacts_sidecar_is_refused_before_anything_is_written(store, make_file):
    src_a, src_b = make_file(200_000, seed=3), make_file(200_000, seed=4)
    store.save(src_a, "a")
    store.save(src_b, "b")
    a1, b1 = files(store, "a@1"), files(store, "b@1")
    shutil.copyfile(b1.sidecar, a1.sidecar)
    a1.envelope.unlink()
    before = _snapshot(a1.folder)
    report = scrub(store, repair=True, write_report=False)
    [a] = [r for r in report.artifacts if r.ref == "a@1"]
    assert a.status == "failed" and "belongs to artifact 'b'" in " ".join(a.damage)
    assert _snapshot(a1.folder) == before


def test_a_foreign_sidecar_beside_a_damaged_payload_writes_nothing(store, make_file):
    """The envelope survives, so its hash would catch wrong bytes at the end; the repair
    must not get that far: the sidecar is not a1's, so its tables are never used."""
    _two_versions(store, make_file)
    a1, a2 = files(store, "a@1"), files(store, "a@2")
    shutil.copyfile(a2.sidecar, a1.sidecar)
    with open(a1.payload, "r+b") as f:
        f.seek(5000)
        f.write(b"\xff" * 300)
    damaged = a1.payload.read_bytes()
    report = scrub(store, repair=True, write_report=False)
    [a] = [r for r in report.artifacts if r.ref == "a@1"]
    assert a.status == "failed" and "sidecar belongs to a@2" in (a.error or "")
    assert a1.payload.read_bytes() == damaged


def test_a_foreign_sidecar_beside_an_intact_payload_is_replaced_by_its_own(store, make_file, tmp_path):
    v1, _ = _two_versions(store, make_file)
    a1, a2 = files(store, "a@1"), files(store, "a@2")
    shutil.copyfile(a2.sidecar, a1.sidecar)
    report = scrub(store, repair=True, write_report=False)
    assert report.totals.failed == 0
    meta = read_meta(a1.sidecar)
    assert (meta.header.artifact.name, meta.header.artifact_version) == ("a", 1)
    assert a1.payload.read_bytes() == v1
    with open(a1.payload, "r+b") as f:  # and it repairs a1 again
        f.seek(100)
        f.write(b"\0" * 64)
    load(store, "a@1", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == v1


def test_a_forged_sidecar_that_passes_the_identity_check_still_writes_nothing(store, make_file):
    """a2's tables and repair symbols under a header that claims to be a1's: every decoded
    symbol matches the forged table, but the whole result is not a1's recorded payload. The
    repair sees that before it writes (the old code overwrote the payload, then failed)."""
    _two_versions(store, make_file)
    a1, a2 = files(store, "a@1"), files(store, "a@2")
    env1 = decode_envelope(a1.envelope.read_bytes())
    meta2 = read_meta(a2.sidecar)
    forged_header = msgspec.structs.replace(meta2.header, artifact=read_meta(a1.sidecar).header.artifact,
                                            artifact_version=1)
    hj = header_bytes(forged_header)
    block = build_block(hj, meta2.source_hashes, meta2.repair_hashes)
    lay = meta2.layout
    region = a2.sidecar.read_bytes()[meta2.block_len : meta2.block_len + lay.total_repair * lay.symbol_size]
    a1.sidecar.write_bytes(block + region + block + struct.pack("<Q", len(block)) + TRAILER_MAGIC)
    # the envelope records the forged sidecar, so only the payload looks damaged
    digest, size = hash_file(a1.sidecar)
    rq = msgspec.structs.replace(env1.raptorq, sidecar_hash=digest, sidecar_size=size)
    a1.envelope.write_bytes(encode_envelope(msgspec.structs.replace(env1, raptorq=rq)))
    with open(a1.payload, "r+b") as f:  # a little damage, well within the budget
        f.seek(0)
        f.write(b"\x00" * 16)
    damaged = a1.payload.read_bytes()
    report = scrub(store, repair=True, write_report=False)
    [a] = [r for r in report.artifacts if r.ref == "a@1"]
    assert a.status == "failed"
    assert "would not give back the recorded payload" in a.error or "unrecoverable" in a.error
    assert a1.payload.read_bytes() == damaged


def test_sidecars_name_the_version_they_were_committed_as_even_when_another_save_took_theirs(
        store, make_file, monkeypatch, tmp_path):
    """Save A plans version 9 and encodes; meanwhile save B commits 9; A commits as 10. A's
    sidecar must say 10 (one digit longer: its repair region moves) and still repair A."""
    for i in range(8):
        store.save(make_file(1000, seed=100 + i), "a")
    a_src, b_src = make_file(500_000, seed=7), make_file(1000, seed=8)
    real_encode = save_engine.SidecarBuild.encode
    once = threading.Event()

    def encode_then_let_b_commit(self, *args, **kw):
        table = real_encode(self, *args, **kw)
        if not once.is_set():
            once.set()
            store.save(b_src, "a")
        return table

    monkeypatch.setattr(save_engine.SidecarBuild, "encode", encode_then_let_b_commit)
    env = store.save(a_src, "a")
    monkeypatch.undo()
    assert env.version == 10 and store.read_envelope("a@9").size == 1000
    for v in (9, 10):
        assert read_meta(files(store, f"a@{v}").sidecar).header.artifact_version == v
    assert all(h.intact for h in verify(store))
    a10 = files(store, "a@10")
    with open(a10.payload, "r+b") as f:
        f.seek(200_000)
        f.write(b"\xaa" * 2000)
    a10.envelope.unlink()
    load(store, "a@10", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == a_src.read_bytes()


# -- sidecar format version 1 (no version in the header) ------------------------------------


def _plant_v1(store, name: str, version: int, fixture: str) -> Path:
    """A version filed from the published version-1 vectors (written before sidecars named
    their version), its envelope re-addressed to ``name@version``."""
    folder = store.backend.version_dir(ArtifactKey(name, version))
    folder.mkdir(parents=True)
    shutil.copyfile(FIXTURES / fixture / "payload", folder / "payload")
    shutil.copyfile(FIXTURES / fixture / "sidecar.ftrq", folder / "sidecar.ftrq")
    env = decode_envelope((FIXTURES / fixture / "envelope.json").read_bytes())
    (folder / "envelope.json").write_bytes(encode_envelope(msgspec.structs.replace(env, name=name, version=version)))
    return folder


def test_version_1_sidecars_are_still_read_verified_and_used_for_repair(store, tmp_path):
    folder = _plant_v1(store, "two-stripes", 1, "two-stripes")
    assert read_meta(folder / "sidecar.ftrq").header.sidecar_version == 1
    payload = (folder / "payload").read_bytes()
    assert verify(store)[0].intact
    (folder / "envelope.json").unlink()
    with open(folder / "payload", "r+b") as f:
        f.seek(1000)
        f.write(b"\x01" * 200)
    report = scrub(store, repair=True, write_report=False)
    assert report.totals.recovered == 1
    assert (folder / "payload").read_bytes() == payload
    load(store, "two-stripes@1", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == payload


def test_a_version_1_sidecar_whose_artifact_id_is_another_versions_is_refused(store, make_file):
    """With no version in the header, the store is asked: version 2's envelope carries the
    sidecar's artifact id, so it is version 2's sidecar, not version 1's."""
    _plant_v1(store, "two-stripes", 2, "two-stripes")
    other = make_file(262_300, seed=5)
    store.save(other, "two-stripes")  # version 3: just another version
    v1 = store.backend.version_dir(ArtifactKey("two-stripes", 1))
    v1.mkdir()
    shutil.copyfile(other, v1 / "payload")
    shutil.copyfile(FIXTURES / "two-stripes" / "sidecar.ftrq", v1 / "sidecar.ftrq")
    before = _snapshot(v1)
    report = scrub(store, repair=True, write_report=False)
    [a] = [r for r in report.artifacts if r.ref == "two-stripes@1"]
    assert a.status == "failed" and "belongs to two-stripes@2" in " ".join(a.damage)
    assert _snapshot(v1) == before
    assert {r.ref: r.status for r in report.artifacts}["two-stripes@2"] == "ok"


def test_two_versions_sharing_one_payload_file_are_each_repaired_without_harming_the_other(store, tmp_path):
    """m@2's payload made a hard link to m@1's (a dedup tool, a hand-made link), the two
    differing in one symbol: repairing m@2 wrote through the shared file into m@1, and the
    scrub said the store was healthy while m@1 was now damaged. The repair gives m@2 a
    file of its own first."""
    import os
    import random

    a = random.Random(1).randbytes(1_000_000)
    b = bytearray(a)
    b[500_000:500_010] = bytes(10)
    for i, data in enumerate((a, bytes(b))):
        (tmp_path / f"v{i}").write_bytes(data)
        store.save(tmp_path / f"v{i}", "m")
    p1, p2 = files(store, "m@1").payload, files(store, "m@2").payload
    p2.unlink()
    os.link(p1, p2)
    run_cli("scrub", "--repair", store=store, check_rc=0)
    run_cli("verify", store=store, check_rc=0)
    assert p1.read_bytes() == a and p2.read_bytes() == bytes(b)
    assert os.stat(p1).st_ino != os.stat(p2).st_ino
