"""Recovery tests: every one damages real stored files on disk and checks restored bytes."""

import os
import random

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftstore import UnrecoverableError, load, verify
from ftstore.codec import read_meta
from ftstore.engine.integrity import check, repair
from ftstore.engine.leaves import read_envelope

from .conftest import run_cli, files


def _save(store, make_file, size, seed=0, **kw):
    src = make_file(size, seed)
    env = store.save(src, "a", **kw)
    paths = files(store, f"a@{env.version}")
    return src.read_bytes(), paths, read_meta(paths.sidecar).layout


def _flip_symbols(paths, layout, picks):
    data = bytearray(paths.payload.read_bytes())
    for s, i in picks:
        off, length = layout.symbol_extent(layout.global_index(s, i))
        data[off + length // 2] ^= 0x5A
    paths.payload.write_bytes(bytes(data))


def _load_bytes(store, tmp_path, ref="a"):
    out = tmp_path / "restored.bin"
    out.unlink(missing_ok=True)
    load(store, ref, out)
    return out.read_bytes()


def test_random_bit_flips_are_repaired_byte_identical(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 3_000_000)
    rng = random.Random(1)
    data = bytearray(paths.payload.read_bytes())
    for _ in range(40):
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
    paths.payload.write_bytes(bytes(data))
    assert _load_bytes(store, tmp_path) == orig
    assert paths.payload.read_bytes() == orig
    env = read_envelope(paths)
    assert env.decode_proofs[-1].target == "payload"
    assert all(h.intact for h in verify(store))


def test_zeroed_range_across_many_stripes_is_repaired(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 40 * 1024 * 1024 + 123)
    assert lay.stripes >= 5
    length = (min(lay.budget(s) for s in range(lay.stripes)) - 1) * lay.stripes * lay.symbol_size
    with open(paths.payload, "r+b") as f:
        f.seek(777)
        f.write(b"\0" * length)
    assert _load_bytes(store, tmp_path) == orig


def test_sidecars_written_with_8_mib_stripes_are_still_read_and_repaired(store, make_file, tmp_path, monkeypatch):
    """The first writers cut stripes of up to 8 MiB; readers take the recorded count."""
    from ftstore.codec import build
    from ftstore.codec.layout import MAX_STRIPE_BYTES, Layout, default_symbol_size, stripe_count

    real_plan = Layout.plan

    def old_plan(size, overhead=0.1, symbol_size=None, stripes=None):
        t = symbol_size or default_symbol_size(size)
        return real_plan(size, overhead, t, stripe_count(size, t, MAX_STRIPE_BYTES))

    with monkeypatch.context() as m:
        m.setattr(build.Layout, "plan", staticmethod(old_plan))
        orig, paths, lay = _save(store, make_file, 40 * 1024 * 1024)
    assert lay.stripes == 5 and lay.stripes < Layout.plan(len(orig)).stripes
    _flip_symbols(paths, lay, [(s, i) for s in range(lay.stripes) for i in range(0, lay.budget(s), 3)])
    assert _load_bytes(store, tmp_path) == orig
    assert read_meta(paths.sidecar).layout.stripes == 5


def test_truncated_payload_is_repaired(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 5_000_000)
    os.truncate(paths.payload, len(orig) - 200_000)
    assert _load_bytes(store, tmp_path) == orig


def test_payload_with_garbage_appended_is_cut_back(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 10_000)
    with open(paths.payload, "ab") as f:
        f.write(b"junk")
    assert _load_bytes(store, tmp_path) == orig


@pytest.mark.parametrize("damage", ["delete", "zero_head", "zero_tail", "flip_repair"])
def test_damaged_or_deleted_sidecar_is_rebuilt(store, make_file, tmp_path, damage):
    orig, paths, lay = _save(store, make_file, 600_000)
    before = paths.sidecar.read_bytes()
    if damage == "delete":
        paths.sidecar.unlink()
    elif damage == "zero_head":
        paths.sidecar.write_bytes(b"\0" * 100 + before[100:])
    elif damage == "zero_tail":
        paths.sidecar.write_bytes(before[:-100] + b"\0" * 100)
    else:
        meta = read_meta(paths.sidecar)
        b = bytearray(before)
        b[meta.repair_offset(0, 3)] ^= 1
        paths.sidecar.write_bytes(bytes(b))
    h = check(paths)
    assert h.sidecar_problem and not h.payload_problem
    res = repair(paths, h, reason="test")
    assert res.repaired == ["sidecar"]
    assert paths.sidecar.read_bytes() == before
    assert check(paths).intact


def test_payload_damage_is_repaired_with_one_sidecar_metadata_copy_gone(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 600_000)
    sc = bytearray(paths.sidecar.read_bytes())
    sc[20:60] = b"\xff" * 40
    paths.sidecar.write_bytes(bytes(sc))
    _flip_symbols(paths, lay, [(0, 1), (0, 7)])
    assert _load_bytes(store, tmp_path) == orig
    assert check(paths).intact


@pytest.mark.parametrize("damage", ["delete", "flip_digit", "garbage"])
def test_damaged_or_deleted_envelope_is_rebuilt_from_the_sidecar(store, make_file, tmp_path, damage):
    orig, paths, lay = _save(store, make_file, 50_000, metadata={"k": "v"})
    before = read_envelope(paths)
    if damage == "delete":
        paths.envelope.unlink()
    elif damage == "flip_digit":
        paths.envelope.write_bytes(paths.envelope.read_bytes().replace(b'"size": 50000', b'"size": 50001'))
    else:
        paths.envelope.write_bytes(b"\x00\xff garbage")
    h = check(paths)
    assert h.envelope_problem
    res = repair(paths, h, reason="test")
    assert res.repaired == ["envelope"]
    env = read_envelope(paths)
    assert (env.artifact_id, env.source_hash, env.metadata, env.raptorq) == (
        before.artifact_id, before.source_hash, before.metadata, before.raptorq)
    assert env.decode_proofs[-1].target == "envelope"
    assert _load_bytes(store, tmp_path) == orig


def test_damage_just_inside_the_budget_is_repaired_everywhere(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 20 * 1024 * 1024, seed=5)
    rng = random.Random(2)
    picks = [(s, i) for s in range(lay.stripes) for i in rng.sample(range(lay.stripe_k(s)), lay.budget(s))]
    _flip_symbols(paths, lay, picks)
    assert _load_bytes(store, tmp_path) == orig
    proof = read_envelope(paths).decode_proofs[-1]
    assert sum(r.count for r in proof.erased_source_symbols) == len(picks)


def test_damage_beyond_the_budget_is_unrecoverable_and_leaves_the_payload_alone(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 1_000_000)
    too_many = lay.repair_counts[0] + 1  # fewer than K good symbols remain
    _flip_symbols(paths, lay, [(0, i) for i in range(too_many)])
    damaged = paths.payload.read_bytes()
    out = tmp_path / "o.bin"
    with pytest.raises(UnrecoverableError, match=r"unrecoverable: .* can repair at most \d+"):
        load(store, "a", out)
    assert not out.exists()
    assert paths.payload.read_bytes() == damaged
    res = run_cli("load", "a", "-o", str(out), store=store, check_rc=1)
    assert "unrecoverable" in res.stderr


def test_repair_capacity_guarantee_over_overheads(store, make_file, tmp_path):
    for n, overhead in enumerate([0.05, 0.25, 1.0]):
        src = make_file(700_000, seed=n)
        env = store.save(src, f"o{n}", overhead=overhead)
        paths = files(store, f"{env.name}@{1}")
        lay = read_meta(paths.sidecar).layout
        k = lay.stripe_k(0)
        assert lay.budget(0) >= int(0.9 * overhead * k)
        _flip_symbols(paths, lay, [(0, i) for i in range(min(k, lay.budget(0)))])
        out = tmp_path / f"o{n}"
        load(store, env.name, out)
        assert out.read_bytes() == src.read_bytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hypothesis_damage_patterns_within_budget_come_back_byte_identical(store, make_file, tmp_path, data):
    size = data.draw(st.integers(1, 400_000))
    orig, paths, lay = _save(store, make_file, size, seed=size)
    kind = data.draw(st.sampled_from(["symbols", "burst", "truncate", "bits"]))
    if kind == "symbols":
        picks = [(s, i) for s in range(lay.stripes)
                 for i in data.draw(st.sets(st.integers(0, lay.stripe_k(s) - 1), max_size=min(lay.budget(s), lay.stripe_k(s))))]
        _flip_symbols(paths, lay, picks)
    else:
        rows = max(lay.budget(0) - 1, 0)
        span = min(size, rows * lay.stripes * lay.symbol_size)
        if kind == "truncate":
            os.truncate(paths.payload, size - span)
        elif kind == "burst" and span:
            start = data.draw(st.integers(0, size - span))
            with open(paths.payload, "r+b") as f:
                f.seek(start)
                f.write(bytes(span))
        else:
            buf = bytearray(paths.payload.read_bytes())
            for pos in data.draw(st.lists(st.integers(0, size - 1), max_size=min(lay.budget(0), lay.stripe_k(0)), unique_by=lambda p: p // lay.symbol_size)):
                buf[pos] ^= 0x80
            paths.payload.write_bytes(bytes(buf))
    assert _load_bytes(store, tmp_path, paths.key.ref) == orig


def test_verify_reports_a_tampered_proof_chain(store, make_file):
    orig, paths, lay = _save(store, make_file, 20_000)
    _flip_symbols(paths, lay, [(0, 0)])
    repair(paths, check(paths), reason="test")
    env = read_envelope(paths)
    forged = msgspec.structs.replace(env.decode_proofs[0], reason="nothing happened")
    paths.write_envelope(msgspec.structs.replace(env, decode_proofs=[forged]))
    res = run_cli("verify", "a", store=store, check_rc=1)
    assert "proof_hash" in res.stdout


def test_lost_envelope_and_damaged_repair_symbols_rebuild_both(store, make_file, tmp_path):
    orig, paths, lay = _save(store, make_file, 600_000)
    good_sidecar = paths.sidecar.read_bytes()
    meta = read_meta(paths.sidecar)
    sc = bytearray(good_sidecar)
    sc[meta.repair_offset(0, 2)] ^= 0xFF  # metadata intact, one repair symbol bad
    paths.sidecar.write_bytes(bytes(sc))
    paths.envelope.unlink()
    h = check(paths)
    assert h.envelope_problem and "1 repair symbols" in h.sidecar_problem
    res = repair(paths, h, reason="test")
    assert sorted(res.repaired) == ["envelope", "sidecar"]
    assert paths.sidecar.read_bytes() == good_sidecar
    assert check(paths).intact
