"""Classes 11 and 12: bad input and a dying server get one clear line, exit 2 (or 1 for
damage), never a traceback or an "internal error"; and import-legacy never commits a
bundle ftstore could not read back.

Every case runs the real command in a subprocess (bytes arguments where the shell would
pass bytes) against a real store, a real SeaweedFS server killed mid-transfer, and real
PtychoPINN archives (tests/fixtures/ptychopinn) altered the way the issue found them."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from ftstore import Store
from ftstore.bundles import load_bundle
from ftstore.errors import FtstoreError

from .conftest import files, run_cli

PTYCHO = Path(__file__).parent / "fixtures" / "ptychopinn"


def _cli_bytes(*args: bytes, store: Store | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("FTSTORE_DEBUG", None)
    if store is not None:
        env["FTSTORE_STORE"] = store.url
    return subprocess.run([sys.executable, "-m", "ftstore.cli", *args], capture_output=True, env=env, timeout=timeout)


def _one_clear_line(res, rc: int) -> str:
    err = res.stderr.decode(errors="replace") if isinstance(res.stderr, bytes) else res.stderr
    assert res.returncode == rc, (res.returncode, err)
    assert "Traceback" not in err and "internal error" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ftstore: error: "), err
    return err


@pytest.mark.parametrize("args,words", [
    ([b"--meta", b"k=\xff\xfe"], "not valid UTF-8"),
    ([b"--meta", b"\xff=v"], "not valid UTF-8"),
    ([b"--name", b"a\n"], "invalid artifact name"),
    ([b"--name", b"a@1"], "invalid artifact name"),
    ([b"--name", b"\xc3\xa9"], "invalid artifact name"),
    ([b"--name", b""], "invalid artifact name"),
], ids=["meta-value-bytes", "meta-key-bytes", "name-newline", "name-at", "name-unicode", "name-empty"])
def test_bad_save_arguments_are_one_line_exit_2_and_nothing_is_written(store, make_file, args, words):
    src = make_file(100)
    res = _cli_bytes(b"save", str(src).encode(), *([b"--name", b"a"] if b"--name" not in args else []), *args,
                     store=store)
    assert words in _one_clear_line(res, 2)
    assert store.keys() == [] and not any(store.backend.staging_dir.glob("*"))


@pytest.mark.parametrize("ref", [b"a@\xc2\xb2", b"a@01", b"a@0", b"a@-1", b"a@1.0", b"a@", b"a\n", b"a@1\n", b"@1"])
def test_refs_outside_the_grammar_are_one_line_exit_2(store, make_file, ref):
    store.save(make_file(100), "a")
    for cmd in ([b"load", ref, b"-o", b"/dev/null"], [b"show", ref], [b"verify", ref]):
        _one_clear_line(_cli_bytes(*cmd, store=store), 2)


def test_a_version_folder_01_is_never_version_1_again(store, make_file):
    store.save(make_file(100, seed=1), "a")
    one = files(store, "a@1").folder
    (one.parent / "01").mkdir()
    for p in one.iterdir():
        (one.parent / "01" / p.name).write_bytes(p.read_bytes())
    assert store.versions("a") == [1]
    assert "a@01" not in run_cli("ls", store=store, check_rc=0).stdout
    assert store.save(make_file(100, seed=2), "a").version == 2


def test_a_legacy_archive_without_N_in_its_params_is_one_line_exit_2(tmp_path):
    dill = pytest.importorskip("dill")
    arch = tmp_path / "wts.h5.zip"
    with zipfile.ZipFile(PTYCHO / "torch-workflow-head.zip") as zin, zipfile.ZipFile(arch, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("params.dill"):
                params = dill.loads(data)  # the fixture's own, plain data
                params.pop("N")
                data = dill.dumps(params)
            zout.writestr(info, data)
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "s"))
    assert "params lack N" in _one_clear_line(res, 2)
    assert not (tmp_path / "s").exists()


def _legacy_with_models(tmp_path: Path, models: list[str], rename: dict[str, str]) -> Path:
    dill = pytest.importorskip("dill")
    pytest.importorskip("torch")
    arch = tmp_path / "wts.h5.zip"
    with zipfile.ZipFile(PTYCHO / "torch-workflow-head.zip") as zin, zipfile.ZipFile(arch, "w") as zout:
        manifest = dill.loads(zin.read("manifest.dill"))
        for info in zin.infolist():
            if info.filename == "manifest.dill":
                continue
            name = info.filename
            for old, new in rename.items():
                name = new + name[len(old):] if name.startswith(old + "/") else name
            zout.writestr(name, zin.read(info))
        zout.writestr("manifest.dill", dill.dumps({**manifest, "models": models}))
    return arch


@pytest.mark.parametrize("case", ["duplicate-model", "model-name-with-a-space"])
def test_import_legacy_never_commits_a_bundle_it_could_not_read_back(tmp_path, case):
    if case == "duplicate-model":
        arch = _legacy_with_models(tmp_path, ["diffraction_to_obj", "diffraction_to_obj", "autoencoder"], {})
    else:
        arch = _legacy_with_models(tmp_path, ["my model", "autoencoder"], {"diffraction_to_obj": "my model"})
    store = Store.open(tmp_path / "store", create=True)
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", store.url)
    err = _one_clear_line(res, 2)
    assert "manifest.dill" in err and "held-legacy" not in err and tempfile.gettempdir() not in err
    assert store.keys() == [] and not any(store.backend.staging_dir.glob("*"))


def test_the_read_back_pass_refuses_what_the_converter_let_through(tmp_path, monkeypatch):
    """Whatever slips past the converter's own checks, the read-back pass before the save
    catches: here a bundle whose weights member is cut short after it was written."""
    from ftstore.bundles import legacy

    real_write = legacy.write_bundle

    def write_then_damage(path, *a, **kw):
        real_write(path, *a, **kw)
        data = bytearray(path.read_bytes())
        at = data.find(b"weights/") + 200
        data[at : at + 64] = bytes(64)
        path.write_bytes(bytes(data))

    monkeypatch.setattr(legacy, "write_bundle", write_then_damage)
    pytest.importorskip("torch")
    from ftstore.api import import_legacy

    with pytest.raises(FtstoreError, match="could not be read back"):
        import_legacy(tmp_path / "store", PTYCHO / "torch-workflow-head.zip", "x")
    assert not (tmp_path / "store").exists() or Store.open(tmp_path / "store").keys() == []


def test_load_bundle_errors_are_documented_errors(store, tmp_path):
    """Each of these was a bare ValueError, KeyError or RuntimeError: now each is an
    FtstoreError (still a ValueError / KeyError where it was one), one line at the CLI."""
    pytest.importorskip("torch")
    from ftstore.api import import_legacy

    import_legacy(store, PTYCHO / "torch-workflow-head.zip", "tw")
    cases = [
        dict(backend="jax"),
        dict(backend="pytorch", params={}, target={}),
        dict(backend="pytorch", tensors="cupy"),
        dict(backend="pytorch", models=["nope"]),
        dict(backend="pytorch", models=["diffraction_to_obj"]),  # no builder registered
    ]
    for kw in cases:
        backend = kw.pop("backend")
        with pytest.raises(FtstoreError) as e:
            load_bundle(store, "tw", backend, **kw)
        assert "\n" not in str(e.value) and not str(e.value).startswith("'")


@pytest.mark.parametrize("command", ["load", "copy"])
def test_a_server_dying_mid_load_or_mid_copy_is_one_line_never_a_traceback(tmp_path, command):
    """The server is SIGKILLed once the command has received part of the payload (which
    used to end in an IncompleteReadError and exit 3)."""
    from .seaweed import Seaweed, weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed")
    server = Seaweed(tmp_path / "weed")
    server.start()
    env = dict(os.environ, **server.env(), TMPDIR=str(tmp_path / "t"))
    env.pop("FTSTORE_DEBUG", None)
    (tmp_path / "t").mkdir()
    url = "s3://dying/store"
    out, dst = tmp_path / "out", tmp_path / "dst"
    try:
        big = tmp_path / "big"
        big.write_bytes(random.Random(0).randbytes(80 * 1024 * 1024))
        subprocess.run([sys.executable, "-m", "ftstore.cli", "save", str(big), "--name", "big", "--store", url],
                       env=env, check=True, capture_output=True, timeout=600)
        args = ["load", "big", "-o", str(out), "--store", url] if command == "load" else ["copy", url, str(dst)]
        where, pattern = (tmp_path, "out.tmp-*") if command == "load" else (dst, "staging/scratch-*/payload")
        proc = subprocess.Popen([sys.executable, "-m", "ftstore.cli", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if max((p.stat().st_size for p in where.glob(pattern) if p.is_file()), default=0) > 2_000_000:
                break
            time.sleep(0.002)
        mid_transfer = proc.poll() is None
        server.kill()
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        server.stop()
    assert mid_transfer, "the command finished before the server could be killed"
    assert proc.returncode in (1, 2) and "Traceback" not in stderr and "internal error" not in stderr, (proc.returncode, stderr)
    assert "object storage error" in stderr + stdout
    if command == "load":
        assert len(stderr.strip().splitlines()) == 1
        assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))
    else:
        assert not dst.exists() or Store.open(dst).keys() == []
        assert not list(dst.glob("staging/scratch-*")) and not list((tmp_path / "t").iterdir())


def test_file_names_that_are_not_utf8_are_shown_as_escapes_never_an_internal_error(tmp_path, make_file):
    """A store at a path that is not UTF-8, holding an orphan whose name is not either:
    every store-wide command reports, with the bytes shown as \\xNN (they used to end in
    exit 3, "surrogates not allowed", after the work was done)."""
    root = Path(os.fsdecode(bytes(tmp_path) + b"/st\xff"))
    store = Store.open(root, create=True)
    store.save(make_file(3000), "c")
    (root / "staging" / os.fsdecode(b"\xfd")).write_bytes(b"x")
    env = {**os.environ, "FTSTORE_STORE": os.fsdecode(root)}
    for args in (["scrub"], ["scrub", "--json"], ["show", "c"], ["verify", "--json"], ["ls", "--json"],
                 ["scrub", "--repair", "--remove-orphans"]):
        res = subprocess.run([sys.executable, "-m", "ftstore.cli", *args], capture_output=True, env=env, timeout=120)
        assert res.returncode == 0 and b"Traceback" not in res.stderr and b"internal error" not in res.stderr, args
        out = res.stdout.decode("utf-8")  # valid UTF-8, JSON or text
        if args[0] == "scrub":
            assert "\\xfd" in out
    assert not (root / "staging" / os.fsdecode(b"\xfd")).exists()
    reports = list((root / "reports").iterdir())
    assert reports and all("\\\\xff" in r.read_text("utf-8") for r in reports)


@pytest.mark.parametrize("dies_at", ["repair", "orphans"])
def test_a_server_dying_mid_repair_stops_the_scrub_with_exit_2_and_judges_nothing(tmp_path, monkeypatch, capsys,
                                                                                  dies_at):
    """It was reported as a failed (unrecoverable) version and a damaged store, exit 1,
    although nothing was known about the version (or as a healthy store with a warning, when
    it died as orphans were listed); after a restart the same scrub repairs it."""
    from ftstore.stores.s3 import S3Store
    from .seaweed import Seaweed, weed_binary
    from ftstore.api import scrub
    from ftstore.cli.main import main
    from ftstore.scrub import scrubber

    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed")
    server = Seaweed(tmp_path / "weed")
    server.start()
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        store = Store.open("s3://dying/store", create=True)
        src = tmp_path / "p"
        src.write_bytes(random.Random(1).randbytes(3 * 1024 * 1024))
        store.save(src, "m")
        key = store.resolve("m@1")
        data = bytearray(store.backend.read_leaf(key, "payload", 4 << 20))
        data[10] ^= 1
        store.backend._put(store.backend._vkey(key, "payload"), bytes(data))
        assert not store.check("m@1").intact
        owner, attr = (scrubber, "repair") if dies_at == "repair" else (S3Store, "orphans")
        real = getattr(owner, attr)

        def dies_first(*args, **kw):
            server.kill()
            return real(*args, **kw)

        monkeypatch.setattr(owner, attr, dies_first)
        args = ["--repair"] if dies_at == "repair" else ["--remove-orphans"]  # the versions are checked first
        with pytest.raises(SystemExit) as exited:
            main(["scrub", *args, "--jobs", "1", "--store", store.url])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and "object storage error" in err and len(err.strip().splitlines()) == 1, err
        monkeypatch.undo()
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        server.start()
        assert store.read_envelope("m@1").scrub.status != "failed"
        report = scrub(store, repair=True, write_report=False)
        assert [a.status for a in report.artifacts] == ["recovered"]
        assert store.load_bytes("m@1")[0].getvalue() == src.read_bytes()
    finally:
        server.stop()
