"""Class 8: small inputs never make ftstore allocate in proportion to what they claim.

Each scenario runs the real command in a subprocess and reads its peak resident memory
from the kernel (``VmHWM``): a 500 KiB zip whose manifest inflates to 500 MB, a 4 MiB
bundle whose 600 MB manifest passes the zip-bomb ratio check, a 4 GiB sparse
``envelope.json``. A bare command peaks near 50 MB; each must stay under 150 MB and end with
a clear result."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import msgspec
import pytest

from ftstore.documents import decode_envelope, encode_envelope

from .conftest import files

PEAK_MB = 150


HWM = r"""
import atexit, os, sys
def _report():
    with open("/proc/self/status") as f, open(os.environ["FTSTORE_TEST_PEAK_FILE"], "w") as out:
        out.write(next(line for line in f if line.startswith("VmHWM:")).split()[1])
atexit.register(_report)
"""


def _run(*args: str, code: str | None = None, tmp: Path) -> tuple[int, int, str]:
    """(exit code, peak RSS in MB, stderr) of one ftstore command (or python snippet). The
    peak is the process's own high-water mark (``VmHWM``, reset by exec), read as it
    exits: ``ru_maxrss`` would count the test process's memory the child was forked from."""
    env = dict(os.environ)
    env.pop("FTSTORE_DEBUG", None)
    env["FTSTORE_TEST_PEAK_FILE"] = str(tmp / "peak")
    body = code if code else "from ftstore.cli.main import main\nmain(sys.argv[1:])\n"
    res = subprocess.run([sys.executable, "-c", HWM + body, *args], capture_output=True, text=True, env=env,
                         timeout=300)
    return res.returncode, int((tmp / "peak").read_text()) // 1024, res.stderr


def _zip_with_big_manifest(path: Path, mib: int, head: bytes, step: int) -> Path:
    """A zip whose manifest.json is ``head`` then ``mib`` MiB of spaces with a letter every
    ``step`` bytes (how compressible it is: 500 -> ~150x, none -> ~1000x)."""
    rng = random.Random(0)
    block = bytearray(b" " * (1 << 20))
    if step:
        for i in range(0, len(block), step):
            block[i] = rng.randrange(97, 123)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("manifest.json", "w", force_zip64=True) as f:
            f.write(head)
            for _ in range(mib):
                f.write(block)
        zf.writestr("params.json", b"{}")
    return path


def test_type_detection_never_inflates_a_manifest(store, tmp_path):
    bomb = _zip_with_big_manifest(tmp_path / "bomb.zip", 500, b'{"format": "ftstore-bundle", "pad": "', step=0)
    assert bomb.stat().st_size < 1 << 20
    rc, peak, err = _run("save", str(bomb), "--name", "b", "--store", store.url, tmp=tmp_path)
    assert rc == 2 and "zip bomb" in err and len(err.strip().splitlines()) == 1, err
    assert peak < PEAK_MB, peak
    plain = _zip_with_big_manifest(tmp_path / "plain.zip", 500, b'{"not": "a bundle", "pad": "', step=0)
    rc, peak, err = _run("save", str(plain), "--name", "p", "--store", store.url, tmp=tmp_path)
    assert rc == 0 and peak < PEAK_MB, (rc, peak, err)
    assert store.read_envelope("p").artifact_type == "file"


@pytest.fixture(scope="module")
def huge_manifest_bundle(tmp_path_factory):
    """A 4 MiB zip whose 600 MB manifest.json inflates only ~150x: under the 200x ratio that
    flags a zip bomb, far over the 16 MiB document cap."""
    path = _zip_with_big_manifest(tmp_path_factory.mktemp("hb") / "b.zip", 600, b'{"format": "ftstore-bundle", "x": "',
                                  step=500)
    assert path.stat().st_size < 5 << 20
    return path


def test_a_manifest_over_the_cap_is_refused_before_it_is_read(store, tmp_path, huge_manifest_bundle):
    rc, peak, err = _run("save", str(huge_manifest_bundle), "--name", "m", "--type", "model_bundle",
                         "--store", store.url, tmp=tmp_path)
    assert rc == 2 and "over the 16777216 byte limit" in err and peak < PEAK_MB, (rc, peak, err)
    # The same bytes already in a store as a model_bundle (an older ftstore, a tampered store):
    # show and load_bundle refuse them the same way.
    store.save(huge_manifest_bundle, "m", "file")
    f = files(store, "m@1")
    env = decode_envelope(f.envelope.read_bytes())
    f.envelope.write_bytes(encode_envelope(msgspec.structs.replace(env, artifact_type="model_bundle")))
    rc, peak, err = _run("show", "m", "--json", "--store", store.url, tmp=tmp_path)
    assert rc == 0 and peak < PEAK_MB, (rc, peak, err)
    code = ("import sys\nfrom ftstore import Store\nfrom ftstore.bundles import load_bundle\n"
            "from ftstore.errors import FtstoreError\n"
            "try:\n    load_bundle(Store.open(sys.argv[1]), 'm', 'pytorch', params={})\n"
            "except FtstoreError as e:\n    print(e, file=sys.stderr)\n    sys.exit(2)\n")
    rc, peak, err = _run(store.url, code=code, tmp=tmp_path)
    assert rc == 2 and "over the 16777216 byte limit" in err and peak < PEAK_MB, (rc, peak, err)


def test_a_4_GiB_sparse_envelope_is_never_read_whole(store, make_file, tmp_path):
    src = make_file(100_000)
    store.save(src, "a")
    store.save(make_file(1000, seed=1), "b")
    with open(files(store, "a@1").envelope, "r+b") as f:
        f.truncate(4 << 30)
    rc, _, _, err = _bytes_moved("scrub", "--json", "--store", store.url, tmp=tmp_path)
    counted = [int(n) for n in re.findall(r'"bytes_read": (\d+)', err)]
    assert rc == 1 and counted and max(counted) < 1 << 20, (rc, counted)  # the refused envelope is not counted
    for args in (["verify"], ["ls"], ["show", "a"], ["load", "a", "-o", str(tmp_path / "out")],
                 ["scrub", "--repair"], ["verify"]):
        rc, peak, err = _run(*args, "--store", store.url, tmp=tmp_path)
        assert peak < PEAK_MB and "Traceback" not in err, (args, peak, err)
        assert rc in (0, 1, 2), (args, rc, err)
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    assert files(store, "a@1").envelope.stat().st_size < 1 << 20  # rebuilt
    assert rc == 0  # the last verify: every artifact intact again


IO = r"""
import atexit, os
def _io():
    with open("/proc/self/io") as f, open(os.environ["FTSTORE_TEST_IO_FILE"], "w") as out:
        out.write(f.read())
atexit.register(_io)
"""


def _bytes_moved(*args: str, tmp: Path) -> tuple[int, int, int, str]:
    """(exit code, bytes read, bytes written, stdout + stderr) of one ftstore command, as the kernel
    counts its read and write calls (``rchar``/``wchar``: page-cache hits included)."""
    env = {k: v for k, v in os.environ.items() if k != "FTSTORE_DEBUG"}
    env["FTSTORE_TEST_IO_FILE"] = str(tmp / "io")
    res = subprocess.run([sys.executable, "-c", IO + "import sys\nfrom ftstore.cli.main import main\nmain(sys.argv[1:])\n",
                          *args], capture_output=True, text=True, env=env, timeout=300)
    io_ = dict(line.split(": ") for line in (tmp / "io").read_text().splitlines())
    return res.returncode, int(io_["rchar"]), int(io_["wchar"]), res.stdout + res.stderr


def test_a_payload_grown_sparse_to_4_GiB_is_not_read_past_its_recorded_size(store, make_file, tmp_path):
    """Growing a file to terabytes costs nothing (``truncate -s``); checking and loading it
    must cost what the recorded size warrants, not what the file claims: no more than one
    byte past the recorded size is read, and nothing of the excess is written."""
    src = make_file(3000)
    store.save(src, "a")
    payload = files(store, "a@1").payload
    os.truncate(payload, 4 << 30)
    out = tmp_path / "out"
    for args, want_rc in ((["verify"], 1), (["load", "a", "-o", str(out), "--no-heal"], 1), (["verify"], 1)):
        rc, read, written, err = _bytes_moved(*args, "--store", store.url, tmp=tmp_path)
        assert rc == want_rc and "Traceback" not in err, (args, rc, err)
        assert read < 64 << 20 and written < 64 << 20, (args, read, written)
    assert "4294967296 bytes, expected 3000" in err  # the real size, from fstat
    assert not out.exists()
    rc, read, written, err = _bytes_moved("scrub", "--json", "--store", store.url, tmp=tmp_path)
    assert rc == 1 and read < 64 << 20, (rc, read, err)
    counted = [int(n) for n in re.findall(r'"bytes_read": (\d+)', err)]
    assert counted and max(counted) < 1 << 20, counted  # what --max-rate paces: not the 4 GiB
    rc, read, written, err = _bytes_moved("load", "a", "-o", str(out), "--store", store.url, tmp=tmp_path)
    assert rc == 0 and read < 64 << 20 and written < 64 << 20, (rc, read, written, err)
    assert out.read_bytes() == src.read_bytes()


def test_json_nested_past_the_parsers_depth_is_damage_not_an_internal_error(store, make_file, tmp_path):
    """msgspec raises RecursionError, not DecodeError, past about 1000 levels: a 2 KB
    envelope nested that deep used to stop every command with exit 3, store-wide ones
    included, and left the artifact beyond repair."""
    src = make_file(3000)
    store.save(src, "a")
    store.save(make_file(3000, seed=1), "b")
    env = files(store, "a@1").envelope
    deep = b"[" * 1000 + b"]" * 1000
    env.write_bytes(env.read_bytes().replace(b'"metadata": {}', b'"metadata": {"k": ' + deep + b"}"))
    from .conftest import run_cli
    res = run_cli("verify", store=store, check_rc=1)
    assert "b@1" in res.stdout  # the other artifact is still checked
    run_cli("show", "a", store=store, check_rc=2)
    run_cli("scrub", "--repair", store=store, check_rc=0)
    run_cli("load", "a", "-o", str(tmp_path / "out"), store=store, check_rc=0)
    assert (tmp_path / "out").read_bytes() == src.read_bytes()
    run_cli("verify", store=store, check_rc=0)
