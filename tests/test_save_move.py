"""Saving by taking a file over (``move=True`` / ``ftstore save --move``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ftstore.engine.save as store_mod
from ftstore import load, verify
from ftstore.stores.local import LocalStaging

from .conftest import change_source_once_encoded, run_cli, files


def test_move_links_the_file_in_and_removes_it_after_the_commit(store, make_file, tmp_path):
    src = make_file(20_000_000)
    orig, ino = src.read_bytes(), src.stat().st_ino
    env = store.save(src, "m", move=True)
    paths = files(store, f"m@{env.version}")
    assert not src.exists()
    assert paths.payload.stat().st_ino == ino  # taken over, not copied
    assert paths.payload.stat().st_nlink == 1
    assert all(h.intact for h in verify(store))
    load(store, "m", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == orig


def test_move_from_another_filesystem_copies_then_removes(store, make_file, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    data = os.urandom(3_000_000)
    src = shm / f"ftstore-test-{os.getpid()}.bin"
    src.write_bytes(data)
    try:
        env = store.save(src, "m", move=True)
        assert not src.exists()
        assert files(store, f"m@{env.version}").payload.read_bytes() == data
    finally:
        src.unlink(missing_ok=True)


def test_a_failed_move_leaves_the_file_where_it_was(store, make_file, monkeypatch):
    src = make_file(20_000_000)
    orig = src.read_bytes()

    def fail(self, essentials):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_mod.SidecarBuild, "finish", fail)
    with pytest.raises(OSError):
        store.save(src, "m", move=True)
    assert src.read_bytes() == orig and src.stat().st_nlink == 1
    assert store.keys() == [] and not any(store.backend.staging_dir.iterdir())


@pytest.mark.parametrize("mtime", ["now", "future", "whole_seconds"])
def test_a_moved_file_written_to_during_the_save_is_refused(store, make_file, monkeypatch, mtime):
    """A file taken over is watched through stat (it was written just now: the save waits
    out the racy tick); one whose mtime is in the future cannot be, and is checked as a copy
    is, by comparing what the encoder read with what was hashed."""
    src = make_file(20_000_000)
    if mtime == "future":
        os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**12))
    if mtime == "whole_seconds":  # ctime, set by the kernel, keeps its nanoseconds: still watchable
        os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns // 10**9 * 10**9))
    change_source_once_encoded(monkeypatch, "hash_durably", src)
    with pytest.raises(store_mod.BadInputError, match="changed while it was being saved"):
        store.save(src, "m", move=True)
    assert src.exists() and store.keys() == []


def test_cli_save_move(store, make_file, tmp_path):
    src = make_file(1_000_000)
    orig = src.read_bytes()
    run_cli("save", str(src), "--name", "m", "--move", store=store, check_rc=0)
    assert not src.exists()
    run_cli("load", "m", "-o", str(tmp_path / "out.bin"), store=store, check_rc=0)
    assert (tmp_path / "out.bin").read_bytes() == orig


def test_scratch_folder_is_on_the_store_and_removed(store):
    with store.scratch() as d:
        assert os.stat(d).st_dev == os.stat(store.backend.root).st_dev
        (d / "f").write_bytes(b"x")
    assert not d.exists()


def test_watch_tells_a_write_from_stat_or_says_it_cannot(tmp_path):
    from ftstore.durable import FileState, watch

    p = tmp_path / "f"
    p.write_bytes(b"a" * 1000)
    state = watch(p)  # written just now: waits out the racy window first
    assert state is not None and FileState.of(p) == state
    with open(p, "r+b") as f:
        f.write(b"b")
    assert FileState.of(p) != state
    os.utime(p, ns=(0, 4 * 10**18))  # an mtime in the future says nothing
    assert watch(p) is None


@pytest.mark.parametrize("size", [3_000, 20_000_000])
def test_a_file_published_at_the_moved_name_meanwhile_is_never_removed(store, make_file, monkeypatch, size):
    """A trainer writes its next ``last.ckpt`` beside the old one and renames it over the
    name while the old one is being saved with ``--move``: only the file saved may go."""
    src = make_file(size)
    orig = src.read_bytes()
    nxt = src.with_name("next.tmp")
    nxt.write_bytes(b"step 2 checkpoint")
    real = store_mod.commit_staged

    def then_published(*args):
        env = real(*args)
        os.replace(nxt, src)  # after the commit, before the source is removed
        return env

    monkeypatch.setattr(store_mod, "commit_staged", then_published)
    env = store.save(src, "m", move=True)
    assert src.read_bytes() == b"step 2 checkpoint"
    assert files(store, f"m@{env.version}").payload.read_bytes() == orig


def test_save_returns_what_it_committed_even_if_the_version_is_deleted_at_once(store, make_file, monkeypatch):
    """Another process deletes the new version and saves again right after the commit:
    the save still reports its own artifact (the new one gets the next number)."""
    src, other = make_file(5_000, seed=1), make_file(6_000, seed=2)
    real = LocalStaging.commit

    def then_replaced(self, envelope_for, version=None):
        v = real(self, envelope_for, version)
        code = ("import sys; from ftstore import Store; s = Store.open(sys.argv[1]); s.delete('m@1'); "
                "print(s.save(sys.argv[2], 'm').version)")
        out = subprocess.run([sys.executable, "-c", code, str(store.url), str(other)], check=True,
                             capture_output=True, text=True).stdout
        assert out.strip() == "2"
        return v

    monkeypatch.setattr(LocalStaging, "commit", then_replaced)
    env = store.save(src, "m")
    assert env.version == 1 and env.size == 5_000
    monkeypatch.undo()
    assert store.versions("m") == [2] and store.read_envelope("m@2").size == 6_000
