"""Temporary folders do not outlive a killed process: the next ftstore process that makes
one removes those whose process is gone, and nothing else (a live process's, another
tool's, a link, what a link points to)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import ftstore.tempdirs as tempdirs
from ftstore.engine.store import Store
from ftstore.errors import StorageError
from ftstore.tempdirs import PREFIX, UNHELD_PREFIX, HeldTempDir, boot_id, held_temp_dir, remove_dead

BOOT = boot_id()
pytestmark = pytest.mark.skipif(BOOT is None, reason="no kernel boot id: folders are never swept here")

HOLDER = (
    "import sys, time\n"
    "from ftstore.tempdirs import HeldTempDir\n"
    "d = HeldTempDir(sys.argv[1])\n"
    "(d.path / 'weights.bin').write_bytes(bytes(1 << 20))\n"
    "print(d.path, flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def tmp_root(tmp_path, monkeypatch) -> Path:
    """This test's own temporary directory, for this process and the ones it starts."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _holder(kind: str = "work") -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip())


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


def test_the_folder_of_a_killed_process_is_removed_by_the_next_one_and_a_live_one_is_kept(tmp_root):
    live, live_dir = _holder("bundle")
    dead, dead_dir = _holder("work")
    try:
        _kill(dead)
        assert (dead_dir / "weights.bin").stat().st_size == 1 << 20  # the kill left it behind
        assert dead_dir.parent == tmp_root and dead_dir.name.startswith(PREFIX + "work-")
        with held_temp_dir("load") as mine:
            assert not dead_dir.exists()
            assert (live_dir / "weights.bin").exists() and mine.is_dir()
            assert oct(mine.stat().st_mode & 0o777) == "0o700"
            assert remove_dead(tmp_root, BOOT) == []  # neither this one nor the live one
        assert not mine.exists()
    finally:
        _kill(live)
    assert remove_dead(tmp_root, BOOT) == [live_dir.name]
    assert sorted(os.listdir(tmp_root)) == []


def test_links_files_and_other_tools_folders_are_never_touched(tmp_root, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.bin").write_bytes(b"x")
    (tmp_root / f"{PREFIX}work-{BOOT}-{uuid.uuid4().hex}").symlink_to(victim)  # a link with a held name
    (tmp_root / f"{PREFIX}work-{BOOT}-{uuid.uuid4().hex}").write_bytes(b"a file")
    (tmp_root / f"{PREFIX}work-{BOOT}-{uuid.uuid4().hex.upper()}").mkdir()  # not a name ftstore makes
    (tmp_root / f"{PREFIX}work-{'0' * 16}-{uuid.uuid4().hex}").mkdir()  # another machine's (or boot's), unlocked
    (tmp_root / f"{UNHELD_PREFIX}work-{uuid.uuid4().hex}").mkdir()  # made where no lock could be taken
    (tmp_root / "ftstore-bench-abc").mkdir()  # another tool's (ftstore's own benchmark's)
    (tmp_root / "ftstore-s3-stage-abc").mkdir()  # the old unheld names are not guessed at
    before = sorted(os.listdir(tmp_root))
    assert remove_dead(tmp_root, BOOT) == []
    assert sorted(os.listdir(tmp_root)) == before
    assert (victim / "keep.bin").read_bytes() == b"x"


def test_a_folder_killed_before_its_rename_is_removed_once_stale(tmp_root):
    new = Path(tempfile.mkdtemp(prefix=".ftstore-held-new-", dir=tmp_root))
    assert remove_dead(tmp_root, BOOT) == []  # it may be a folder being made right now
    hour_ago = time.time() - 3700
    os.utime(new, (hour_ago, hour_ago))
    assert remove_dead(tmp_root, BOOT) == [new.name]
    assert not new.exists()


def test_remove_is_idempotent_and_a_bad_kind_is_refused(tmp_root):
    held = HeldTempDir("drill")
    (held.path / "sub").mkdir()
    (held.path / "sub" / "f").write_bytes(b"1")
    held.remove()
    held.remove()
    assert os.listdir(tmp_root) == []
    with pytest.raises(ValueError, match="lower-case letters and digits"):
        HeldTempDir("../escape")


def test_a_save_to_s3_killed_mid_upload_leaves_its_folder_only_until_the_next_command(seaweed, make_file, tmp_root):
    """The real case: ``ftstore save`` to object storage builds its sidecar in a local
    folder; SIGKILL it mid-upload, and the next command that needs a folder removes it."""
    store = f"s3://ftstore-tests/killed-stage-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, FTSTORE_STORE=store, TMPDIR=str(tmp_root))
    big = make_file(96 * 1024 * 1024, seed=3)
    proc = subprocess.Popen([sys.executable, "-m", "ftstore.cli", "save", str(big), "--name", "big"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    staged: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        staged = [p for p in tmp_root.iterdir() if p.name.startswith(PREFIX + "s3stage-") and (p / "sidecar.ftrq").exists()]
        if staged:
            break
        time.sleep(0.01)
    assert staged and proc.poll() is None, "the save ended before its sidecar was being built"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert staged[0].exists()
    small = make_file(1000, seed=4)
    subprocess.run([sys.executable, "-m", "ftstore.cli", "save", str(small), "--name", "small"], env=env, check=True,
                   capture_output=True)
    assert not staged[0].exists()
    assert os.listdir(tmp_root) == []


def test_without_a_boot_id_a_folder_is_never_swept(tmp_root, tmp_path, monkeypatch):
    """Where the kernel says nothing of which machine and boot it is, no folder can be told
    dead for sure: folders are made unheld and nothing is removed."""
    dead, dead_dir = _holder("work")
    _kill(dead)
    monkeypatch.setattr(tempdirs, "_BOOT_ID_FILE", str(tmp_path / "absent"))
    with held_temp_dir("load") as mine:
        assert mine.name.startswith(UNHELD_PREFIX + "load-")
        assert dead_dir.exists()
    assert not mine.exists()


def test_a_working_copy_removed_while_in_use_writes_nothing_back(seaweed, make_file):
    """Every leaf of a vanished working copy of an S3 version would look deleted: the
    write-back is refused and the stored version stays as it was."""
    store = Store.open(f"s3://ftstore-tests/vanished-{os.getpid()}-{uuid.uuid4().hex[:8]}", create=True)
    env = store.save(make_file(5000, seed=5), "w")
    key = store.resolve("w@1")
    with pytest.raises(StorageError, match="removed while in use; nothing was written back"):
        with store.backend.working_copy(key) as folder:
            shutil.rmtree(folder)
    with pytest.raises(StorageError, match="removed while in use; nothing was written back"):
        with store.backend.working_copy(key) as folder:  # the folder kept, its files removed
            for leaf in folder.iterdir():
                leaf.unlink()
    assert store.check("w@1").intact and store.read_envelope(key).source_hash == env.source_hash
