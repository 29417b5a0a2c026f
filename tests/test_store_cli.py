import json
import os
import stat

import pytest

from ftstore import DamageError, NotFoundError, Store, load, verify
from ftstore.hashing import hash_file

from .conftest import run_cli, files


@pytest.mark.parametrize("size", [0, 1, 255, 100_003, 9 * 1024 * 1024 + 5])
def test_save_verify_load_round_trip_is_byte_identical(store, make_file, tmp_path, size):
    src = make_file(size)
    env = store.save(src, "model", metadata={"epoch": "3"})
    assert env.size == size and env.version == 1 and env.metadata == {"epoch": "3"}
    assert all(h.intact for h in verify(store))
    out = tmp_path / "out.bin"
    load(store, "model", out)
    assert out.read_bytes() == src.read_bytes()
    assert (files(store, "model@1").payload).read_bytes() == src.read_bytes()


def test_saving_a_name_again_makes_a_new_version(store, make_file):
    a, b = make_file(10, seed=1), make_file(20, seed=2)
    assert store.save(a, "x").version == 1
    assert store.save(b, "x").version == 2
    assert store.resolve("x").version == 2
    assert store.resolve("x@1").version == 1
    with pytest.raises(NotFoundError):
        store.resolve("x@3")


def test_cli_tour_with_json_output(store, make_file, tmp_path):
    src = make_file(5000)
    res = run_cli("save", str(src), "--name", "m", "--meta", "k=v", "--json", store=store, check_rc=0)
    doc = json.loads(res.stdout)
    assert doc["envelope"]["metadata"] == {"k": "v"}
    ls = json.loads(run_cli("ls", "--json", store=store, check_rc=0).stdout)
    assert [(r["name"], r["version"]) for r in ls] == [("m", 1)]
    show = json.loads(run_cli("show", "m@1", "--json", store=store, check_rc=0).stdout)
    for key in ("payload", "sidecar", "envelope"):
        assert os.path.exists(show["paths"][key])
    v = json.loads(run_cli("verify", "--json", store=store, check_rc=0).stdout)
    assert v[0]["status"] == "ok"
    out = tmp_path / "o.bin"
    run_cli("load", "m", "-o", str(out), store=store, check_rc=0)
    assert out.read_bytes() == src.read_bytes()


def test_flipped_byte_makes_verify_exit_1_and_no_heal_load_refuse(store, make_file, tmp_path):
    src = make_file(70_000)
    store.save(src, "m")
    payload = files(store, "m@1").payload
    data = bytearray(payload.read_bytes())
    data[12345] ^= 0x01
    payload.write_bytes(data)
    res = run_cli("verify", "m", store=store, check_rc=1)
    assert "DAMAGED" in res.stdout
    out = tmp_path / "o.bin"
    res = run_cli("load", "m", "-o", str(out), "--no-heal", store=store, check_rc=1)
    assert not out.exists()
    with pytest.raises(DamageError):
        load(store, "m", out, self_heal=False)
    assert not out.exists()
    res = run_cli("load", "m", "-o", str(out), "--json", store=store, check_rc=0)  # repaired where it lies
    doc = json.loads(res.stdout)
    assert doc["repaired"] == ["payload"] and doc["repaired_in_store"] is True and out.read_bytes() == src.read_bytes()
    run_cli("verify", "m", store=store, check_rc=0)


@pytest.mark.parametrize(
    "args, msg",
    [
        (["save", "/nonexistent/file", "--name", "x"], "no such file"),
        (["save", "/dev/null", "--name", "x"], "/dev/null: not a regular file"),
        (["save", "DIR", "--name", "x"], "is a directory"),
        (["import-legacy", "/dev/null", "--name", "x"], "/dev/null: not a regular file"),
        (["load", "nope", "-o", "x"], "no artifact named"),
        (["show", "bad name"], "invalid artifact name"),
        (["save", "FILE", "--name", "x", "--overhead", "5"], "overhead"),
        (["save", "FILE", "--name", "x", "--meta", "novalue"], "KEY=VALUE"),
        (["save", "FILE", "--name", "x", "--meta", "k=1", "--meta", "k=2"], "given twice"),
        (["save", "FILE", "--name", "x", "--type", "weights"], "Invalid value"),
        (["verify", "x@0"], "invalid version"),
        (["show", "x@" + "9" * 5000], "invalid version"),  # past Python's int-from-text limit
        (["load", "x@9223372036854775808", "-o", "o"], "invalid version"),
        (["scrub", "--subset", "1/" + "9" * 5000], "--subset"),
        (["scrub", "--subset", "\u00b2/3"], "--subset"),
        (["save", "FILE"], "Missing option '--name'"),
        (["scrub", "--max-rate", "0"], "--max-rate"),
        (["frobnicate"], "No such command"),
        (["ls", "--store", ""], "store location is empty"),
        (["copy", "STORE", ""], "store location is empty"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(store, make_file, args, msg):
    src = make_file(10)
    args = [{"FILE": str(src), "STORE": store.url, "DIR": str(src.parent)}.get(a, a) for a in args]
    res = run_cli(*args, store=store, check_rc=2)
    assert msg in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # click's usage errors too


def test_malformed_envelope_exits_2_on_show_and_1_on_verify(store, make_file):
    store.save(make_file(100), "m")
    files(store, "m@1").envelope.write_text('{"format": "ftstore-envelope", "schema_version": 1, "bogus": true}')
    res = run_cli("show", "m", store=store, check_rc=2)
    assert "envelope" in res.stderr
    run_cli("verify", store=store, check_rc=1)


def test_missing_store_is_a_clear_error(tmp_path):
    res = run_cli("ls", "--store", str(tmp_path / "none"), check_rc=2)
    assert "no ftstore store" in res.stderr


def test_load_refuses_a_directory_as_output(store, make_file, tmp_path):
    store.save(make_file(10), "m")
    run_cli("load", "m", "-o", str(tmp_path), store=store, check_rc=2)


@pytest.mark.slow
def test_two_gib_round_trip(store, tmp_path):
    src = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(2048 + 3):
            f.write(block[i % 7 :] + block[: i % 7])
    env = store.save(src, "big")
    assert env.size == src.stat().st_size
    out = tmp_path / "big.out"
    load(store, "big", out)
    assert hash_file(out)[0] == hash_file(src)[0] == env.source_hash


@pytest.mark.parametrize("mtime", ["kept", "future"])
def test_a_source_that_changes_during_save_is_refused(store, make_file, monkeypatch, mtime):
    """Seen through the source's stat, or (an mtime in the future says nothing) by hashing
    the source again after the copy."""
    import ftstore.stores.local as store_mod
    from ftstore.errors import BadInputError

    src = make_file(3_000_000)
    if mtime == "future":
        os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**12))
    real_copy = store_mod.copy_hashing

    def copy_while_written_to(s, d, progress=None, *a, **kw):
        def write_to_source(n):
            with open(s, "r+b") as f:  # the writer of the source changes it mid-copy
                f.seek(10)
                f.write(b"changed")

        return real_copy(s, d, write_to_source, *a, **kw)

    monkeypatch.setattr(store_mod, "copy_hashing", copy_while_written_to)
    with pytest.raises(BadInputError, match="changed while it was being saved"):
        store.save(src, "m")
    assert store.keys() == [] and not any(store.backend.staging_dir.iterdir())


def test_load_never_replaces_a_device_a_link_or_a_store_file(store, make_file, tmp_path):
    """``-o`` is replaced by a rename: over a device node or a link that would swap the node
    (``/dev/null`` as root) for a regular file, and inside the store it would overwrite a
    committed leaf or the store marker. All refused, with nothing changed."""
    store.save(make_file(5000), "a")
    store.save(make_file(5000, seed=1), "b")
    dev = tmp_path / "null"
    os.mknod(dev, 0o600 | stat.S_IFCHR, os.makedev(1, 3)) if os.geteuid() == 0 else os.mkfifo(dev)
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    into_store = tmp_path / "via-link"
    into_store.symlink_to(store.backend.root)
    a = files(store, "a@1")
    before = {p: p.read_bytes() for p in (a.payload, a.envelope, store.backend.root / "ftstore-store.json")}
    for out in (dev, link, a.payload, a.envelope, store.backend.root / "ftstore-store.json", into_store / "new"):
        res = run_cli("load", "b", "-o", str(out), store=store, check_rc=2)
        assert "not a regular file" in res.stderr or "inside the store" in res.stderr, res.stderr
    assert not stat.S_ISREG(dev.lstat().st_mode) and link.is_symlink()
    assert all(p.read_bytes() == data for p, data in before.items())
    assert not (store.backend.root / "new").exists()
    run_cli("verify", store=store, check_rc=0)


def test_save_move_never_takes_a_store_file(store, make_file):
    store.save(make_file(5000), "a")
    a = files(store, "a@1")
    for src in (a.payload, store.backend.root / "ftstore-store.json"):
        res = run_cli("save", str(src), "--name", "c", "--move", store=store, check_rc=2)
        assert "store's own files" in res.stderr or "lies inside the ftstore store at" in res.stderr, res.stderr
        assert src.exists()
    # spelled through a link and a ``..`` after it: the kernel follows the link first
    (store.backend.root.parent / "v").symlink_to(a.payload.parent)
    sneaky = store.backend.root.parent / "v" / ".." / "1" / "payload"
    res = run_cli("save", str(sneaky), "--name", "c", "--move", store=store, check_rc=2)
    assert ("store's own files" in res.stderr or "lies inside the ftstore store at" in res.stderr) and a.payload.exists()
    run_cli("load", "a", "-o", str(sneaky), store=store, check_rc=2)
    run_cli("save", str(a.payload), "--name", "c", store=store, check_rc=0)  # a copy is fine
    with store.backend.scratch() as tmp:  # a scratch folder's files are the caller's (Keras, bundles)
        (tmp / "ckpt").write_bytes(b"x" * 5000)
        store.save(tmp / "ckpt", "d", move=True)
        assert not (tmp / "ckpt").exists()
    run_cli("verify", store=store, check_rc=0)


def test_save_move_of_a_hard_linked_file_copies_it(store, make_file, tmp_path):
    """Taking over a file that has another name would let a write through that name change
    the stored bytes; such a file is copied, and only the moved name removed."""
    src = make_file(50_000)
    other = tmp_path / "other-name"
    os.link(src, other)
    run_cli("save", str(src), "--name", "h", "--move", store=store, check_rc=0)
    assert not src.exists() and other.exists()
    assert files(store, "h@1").payload.stat().st_nlink == 1
    with open(other, "ab") as f:
        f.write(b"written through the other name")
    run_cli("verify", "h", store=store, check_rc=0)


def test_no_command_takes_or_overwrites_another_stores_files(any_store, make_file, tmp_path):
    """``save --move`` of a file that is another store's committed payload would take that
    artifact away (the target store can be anywhere, S3 included); ``load -o`` onto one
    would replace it. Both refused with exit 2 and one line; the other store stays intact,
    and saving such a file without ``--move`` copies it."""
    other = Store.open(tmp_path / "other", create=True)
    other.save(make_file(5000), "mine")
    theirs = files(other, "mine@1")
    before = theirs.payload.read_bytes()
    any_store.save(make_file(3000, seed=2), "b")
    for src in (theirs.payload, tmp_path / "other" / "ftstore-store.json"):
        res = run_cli("save", str(src), "--name", "taken", "--move", store=any_store, check_rc=2)
        assert "inside the ftstore store at" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert src.exists()
    res = run_cli("load", "b", "-o", str(theirs.payload), store=any_store, check_rc=2)
    assert "inside the ftstore store at" in res.stderr, res.stderr
    assert theirs.payload.read_bytes() == before and "taken" not in any_store.names()
    run_cli("verify", store=other, check_rc=0)
    run_cli("save", str(theirs.payload), "--name", "copied", store=any_store, check_rc=0)
    assert theirs.payload.read_bytes() == before and any_store.load_bytes("copied")[0].getvalue() == before
    with other.scratch() as scratch:  # a scratch folder's files stay their writer's to move
        (scratch / "ckpt").write_bytes(b"y" * 4000)
        any_store.save(scratch / "ckpt", "from-scratch", move=True)
        assert not (scratch / "ckpt").exists()


def test_an_output_with_the_longest_name_the_file_system_allows_is_written(store, make_file, tmp_path):
    """The temporary file beside ``-o`` took the name plus a suffix, past 255 bytes."""
    src = make_file(3000)
    store.save(src, "a")
    outs = tmp_path / "outs"
    outs.mkdir()
    for name in ("x" * 255, "é" * 127):  # 255 and 254 bytes
        run_cli("load", "a", "-o", str(outs / name), store=store, check_rc=0)
        assert (outs / name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in outs.iterdir()) == sorted(["x" * 255, "é" * 127])  # no temporary file left


def test_a_refused_command_creates_no_store(store, make_file, tmp_path):
    """Every check of a save or a copy runs before the store it names is created."""
    src = make_file(3000)
    store.save(src, "a")
    not_json = tmp_path / "baseline.txt"
    not_json.write_text("not json")
    cases = [
        ["save", str(src), "--name", "bad!"],
        ["save", str(src), "--name", "ok", "--overhead", "5"],
        ["save", str(not_json), "--name", "b", "--type", "benchmark_baseline"],
        ["save", str(src), "--name", "m", "--meta", "k=" + "v" * 70000],
        ["save", str(files(store, "a@1").payload), "--name", "m", "--move"],  # another store's payload
        ["copy", store.url, "DEST", "a@0"],
        ["copy", store.url, "DEST", "nope"],
        ["copy", store.url, "DEST", "bad!"],
    ]
    for i, args in enumerate(cases):
        dest = tmp_path / f"new{i}"
        args = [str(dest) if a == "DEST" else a for a in args]
        if args[0] == "save":
            args += ["--store", str(dest)]
        res = run_cli(*args, check_rc=2)
        assert len(res.stderr.strip().splitlines()) == 1 and not dest.exists(), (args, res.stderr)
    run_cli("save", str(src), "--name", "fine", "--store", str(tmp_path / "made"), check_rc=0)
    run_cli("copy", store.url, str(tmp_path / "copied"), "a", check_rc=0)
    assert (tmp_path / "made" / "ftstore-store.json").exists() and (tmp_path / "copied" / "ftstore-store.json").exists()
