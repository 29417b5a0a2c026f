"""Hostile and broken input: mutated sidecars, absurd claims, full disks, kills mid-repair."""

import errno
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import files
from ftstore import Store, StorageFullError, load, verify
from ftstore.codec import SidecarError, read_meta
from ftstore.codec.sidecar import BLOCK_MAGIC, TRAILER_MAGIC, build_block
from ftstore.errors import FtstoreError
from ftstore.hashing import hash_file
from ftstore.api import scrub
from ftstore.scrub.report import decode_report

FIXTURES = Path(__file__).parent / "fixtures" / "fuzz"


@pytest.fixture(scope="module")
def sidecar_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("sc")
    store = Store.open(d / "s", create=True)
    src = d / "src"
    src.write_bytes(random.Random(0).randbytes(20_000))
    store.save(src, "a")
    return files(store, "a@1").sidecar.read_bytes()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_sidecars_raise_only_sidecar_errors(sidecar_bytes, tmp_path, data):
    raw = bytearray(sidecar_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 64))]
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    p = tmp_path / "sc"
    p.write_bytes(bytes(raw))
    try:
        meta = read_meta(p)
    except SidecarError:
        return
    assert meta.layout.size >= 0  # a surviving copy parsed: it must be internally consistent


@pytest.mark.parametrize(
    "claims",
    [
        {"payload_size": 1 << 49, "stripes": 1 << 31, "source_symbols": 1 << 35},
        {"payload_size": 1 << 40},
        {"symbol_size": 8, "payload_size": 10**12},
        {"repair_symbols_per_stripe": [10**9]},
    ],
)
def test_sidecars_claiming_absurd_sizes_are_refused_without_allocating(sidecar_bytes, tmp_path, claims):
    hlen = struct.unpack("<I", sidecar_bytes[8:12])[0]
    header = msgspec.json.decode(sidecar_bytes[12 : 12 + hlen])
    header.update(claims)
    hj = msgspec.json.encode(header)
    block = build_block(hj, b"", b"")  # a self-consistent block that lies about sizes
    p = tmp_path / "sc"
    p.write_bytes(block + struct.pack("<Q", len(block)) + TRAILER_MAGIC)
    with pytest.raises(SidecarError):
        read_meta(p)


@pytest.mark.parametrize("stripes", [0, 80])  # the payload has 79 symbols
def test_sidecars_with_a_stripe_count_outside_the_limits_are_refused(sidecar_bytes, tmp_path, stripes):
    """Zero stripes for a non-empty payload, or more stripes than symbols (empty stripes)."""
    hlen = struct.unpack("<I", sidecar_bytes[8:12])[0]
    header = msgspec.json.decode(sidecar_bytes[12 : 12 + hlen])
    header.update(stripes=stripes, repair_symbols_per_stripe=[3] * stripes)
    block = build_block(msgspec.json.encode(header), b"", b"")
    p = tmp_path / "sc"
    p.write_bytes(block + struct.pack("<Q", len(block)) + TRAILER_MAGIC)
    with pytest.raises(SidecarError, match="stripes"):
        read_meta(p)


def test_sidecar_header_length_past_the_file_is_refused(tmp_path):
    p = tmp_path / "sc"
    p.write_bytes(BLOCK_MAGIC + struct.pack("<I", 0xFFFFFFFF) + b"{}")
    with pytest.raises(SidecarError, match="out of bounds"):
        read_meta(p)


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_scrub_report_parser_raises_only_documented_errors(data):
    try:
        decode_report(data)
    except FtstoreError:
        pass


def test_fuzz_regression_fixtures_raise_only_documented_errors():
    """Inputs found by fuzz/fuzz_parsers.py stay fixed: named <parser>-<what>. They run in a
    subprocess because one of them used to crash the interpreter (a crafted numpy dtype
    state): a regression must fail this test, not kill the test run."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from targets import PARSERS\n"
        "from ftstore.errors import FtstoreError\n"
        "for f in sorted(Path(sys.argv[1]).glob('*')):\n"
        "    try:\n"
        "        PARSERS[f.name.split('-')[0]](f.read_bytes())\n"
        "    except FtstoreError:\n"
        "        pass\n"
        "    print('ok', f.name)\n"
    )
    fuzz_dir = Path(__file__).resolve().parent.parent / "fuzz"
    res = subprocess.run([sys.executable, "-c", code, str(FIXTURES), str(fuzz_dir)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("ok ") == len(list(FIXTURES.glob("*"))) >= 5


def test_restricted_unpickler_reads_plain_data_of_every_protocol():
    dill = pytest.importorskip("dill")
    import pickle

    import numpy as np

    from ftstore.bundles.restricted_pickle import UnsafePickleError, loads_plain

    arrays = {"f4": np.arange(6, dtype="<f4").reshape(2, 3), "c8": (np.arange(4) * 1j).astype(np.complex64),
              "be": np.arange(3, dtype=">i8"), "S": np.array([b"ab", b"c"]), "U": np.array(["xy", "z"]),
              "b": np.array([True, False]), "zero_d": np.array(3.5), "F": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "empty": np.zeros((0, 4), np.float32), "scalar": np.float32(2.5), "i64": np.int64(-3)}
    doc = {"N": 64, "gridsize": 2, "t": (1, 2.5), "s": {1, 2}, "raw": b"\x00\xff", "e": b"", **arrays}
    for mod in (pickle, dill):
        for proto in (2, 4, 5):
            got = loads_plain(mod.dumps(doc, protocol=proto), "t")
            for k, v in arrays.items():
                assert type(got[k]) is type(v) and np.asarray(got[k]).dtype == np.asarray(v).dtype
                assert np.array_equal(got[k], v), (mod.__name__, proto, k)
            assert (got["t"], got["s"], got["raw"], got["e"]) == ((1, 2.5), {1, 2}, b"\x00\xff", b"")
    for bad in (np.array(["2020-01-01"], dtype="M8[D]"), np.array([object()], dtype=object), np.zeros(2, dtype=[("a", "f4")])):
        with pytest.raises(UnsafePickleError, match="not a plain dtype"):
            loads_plain(pickle.dumps({"x": bad}), "b")

    class BytesBomb:
        def __reduce__(self):
            return (bytes, (10**12,))

    with pytest.raises(UnsafePickleError):
        loads_plain(pickle.dumps(BytesBomb()), "bomb")


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def test_full_disk_save_fails_cleanly_and_the_store_stays_intact(tmp_path, make_file):
    mnt = tmp_path / "small"
    if not _tmpfs(mnt, "4m"):
        pytest.skip("needs root to mount a small tmpfs (the monkeypatched ENOSPC test below still runs)")
    try:
        store = Store.open(mnt / "store", create=True)
        small = make_file(100_000, seed=1)
        store.save(small, "keep")
        big = make_file(5_000_000, seed=2)
        with pytest.raises(StorageFullError, match="no space left"):
            store.save(big, "big")
        assert [p.ref for p in store.keys()] == ["keep@1"]
        assert not any(store.backend.staging_dir.iterdir())
        assert scrub(store, write_report=False).totals.ok == 1
        res = subprocess.run([sys.executable, "-m", "ftstore.cli", "save", str(big), "--name", "big",
                              "--store", store.url], capture_output=True, text=True)
        assert res.returncode == 1 and "no space left" in res.stderr and "Traceback" not in res.stderr
    finally:
        subprocess.run(["umount", str(mnt)])


def test_a_file_size_limit_stops_save_and_load_with_a_message_that_says_so(tmp_path, make_file):
    """``ulimit -f`` (EFBIG, which the kernel reports without a file name) on the copy, on
    the sidecar the workers write (100% overhead, with the payload under the limit), and on
    a load's output: exit 1 with one line naming the cause, and the store as it was."""
    store_dir, out = tmp_path / "store", tmp_path / "out"
    kept = make_file(3_000_000, seed=3)
    cli = [sys.executable, "-m", "ftstore.cli"]
    assert subprocess.run([*cli, "save", str(kept), "--name", "kept", "--store", str(store_dir)]).returncode == 0
    big = make_file(40_000_000, seed=4)

    def limited(kib: int, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *args, "--store", str(store_dir)], capture_output=True, text=True,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024,) * 2))

    for kib, args in [(2_000, ("save", str(big), "--name", "big")),
                      (39_300, ("save", str(big), "--name", "big", "--overhead", "1.0")),
                      (2_000, ("load", "kept", "-o", str(out)))]:
        res = limited(kib, *args)
        assert res.returncode == 1, (args, res.stderr)
        assert "file-size limit (ulimit -f)" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    store = Store.open(store_dir)
    assert [p.ref for p in store.keys()] == ["kept@1"] and not any(store.backend.staging_dir.iterdir())
    assert not out.exists() and verify(store)[0].intact


def test_enospc_anywhere_in_save_is_a_clean_error(store, make_file, monkeypatch):
    import ftstore.engine.save as store_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.SidecarBuild, "finish", full)
    with pytest.raises(StorageFullError):
        store.save(make_file(1000), "x")
    assert store.keys() == [] and not any(store.backend.staging_dir.iterdir())


def _damage_half_the_budget(payload, lay, rng) -> None:
    with open(payload, "r+b") as f:
        for s in range(lay.stripes):
            for i in rng.sample(range(lay.stripe_k(s)), lay.budget(s) // 2):
                off, _ = lay.symbol_extent(lay.global_index(s, i))
                f.seek(off)
                f.write(b"\xde\xad")


@pytest.mark.parametrize("command", ["scrub", "load"])
def test_sigkill_during_repair_never_loses_the_artifact(store, make_file, tmp_path, command):
    src = make_file(24 * 1024 * 1024, seed=9)
    store.save(src, "a")
    paths = files(store, "a@1")
    lay = read_meta(paths.sidecar).layout
    want = hash_file(src)[0]
    rng = random.Random(3)
    env = dict(os.environ, FTSTORE_STORE=store.url)
    out = tmp_path / "out.bin"
    for attempt in range(8):
        # Fresh damage of half the budget, once the last repair finished: a repair killed
        # before its end leaves its damage, and twice that would be beyond the budget.
        if hash_file(paths.payload)[0] == want:
            _damage_half_the_budget(paths.payload, lay, rng)
        args = ["scrub", "--repair"] if command == "scrub" else ["load", "a", "-o", str(out)]
        proc = subprocess.Popen([sys.executable, "-m", "ftstore.cli", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            assert hash_file(out)[0] == want  # a load that finished wrote only right bytes
    report = scrub(store, repair=True, remove_orphans=True)
    assert report.totals.failed == 0
    assert hash_file(paths.payload)[0] == want
    load(store, "a", tmp_path / "final.bin")
    assert hash_file(tmp_path / "final.bin")[0] == want


def test_sigkill_during_retention_deletes_never_loses_the_newest_checkpoint(store, make_file, tmp_path):
    from ftstore import CheckpointManager

    srcs = [make_file(400_000 + i, seed=i) for i in range(4)]
    code = (
        "import sys, itertools\n"
        "from ftstore import Store, CheckpointManager\n"
        "m = CheckpointManager(Store.open(sys.argv[1]), 'run', keep_last=1)\n"
        "start = (m.latest().step + 1) if m.latest() else 0\n"
        "for step in itertools.count(start):\n"
        "    m.save(step, sys.argv[2 + step % 4])\n"
    )
    rng = random.Random(11)
    for attempt in range(10):
        proc = subprocess.Popen([sys.executable, "-c", code, store.url, *map(str, srcs)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        m = CheckpointManager(store, "run")
        assert m.steps(), "every checkpoint was lost"
        for h in verify(store):
            assert h.intact, h.problems
        newest = m.latest()
        m.restore(tmp_path / "r")
        assert (tmp_path / "r").read_bytes() == srcs[newest.step % 4].read_bytes()
    report = scrub(store, repair=True, remove_orphans=True)
    assert report.totals.failed == 0
    assert scrub(store).orphans == []


def test_a_pickle_memo_index_bomb_is_refused_without_allocating():
    """Found by the fuzz script: a 222-byte stream whose memo index made the C unpickler
    allocate gigabytes. Run under a 1 GiB address-space limit."""
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from ftstore.bundles.restricted_pickle import loads_plain\n"
        "from ftstore.errors import BadInputError\n"
        "try:\n"
        "    loads_plain(open(sys.argv[1], 'rb').read(), 'bomb')\n"
        "except BadInputError as e:\n"
        "    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "pickle-memo-index-bomb")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "not a readable pickle" in res.stdout and "MemoryError" not in res.stdout
