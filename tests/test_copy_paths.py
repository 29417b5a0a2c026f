"""Copying a file into a local store: the kernel copies (copy_file_range within a filesystem,
sendfile across, read/write where it allows neither), the copy is hashed as it lands, and
what is hashed is what was stored; a source written to during a save is refused whichever
way it was copied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from ftstore.codec import write_sidecar
from ftstore.documents.envelope import essentials_of
from ftstore.durable import COPY_CHUNK, COPY_METHODS, KernelCopy, copy_hashing
from ftstore.errors import BadInputError
from ftstore.hashing import READ_CHUNK, format_hash

from .conftest import files

PATHS = {
    "kernel first": COPY_METHODS,
    "sendfile": ("sendfile", "read_write"),
    "read/write": ("read_write",),
}


def _copy_all(src: Path | str, dst: Path) -> KernelCopy:
    fd_in, fd_out = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        copier = KernelCopy(fd_in, fd_out)
        while copier.step(1 << 20):
            pass
        return copier
    finally:
        os.close(fd_in)
        os.close(fd_out)


@pytest.mark.parametrize("durable", [True, False])
@pytest.mark.parametrize("methods", PATHS.values(), ids=PATHS.keys())
@pytest.mark.parametrize("size", [0, 1, READ_CHUNK + 7, COPY_CHUNK + READ_CHUNK + 3])
def test_every_copy_path_stores_exactly_the_bytes_it_hashes(tmp_path, methods, size, durable):
    data = os.urandom(size)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    seen, progressed = [], []
    digest = copy_hashing(src, dst, progressed.append, lambda v: seen.append(bytes(v)), durable, methods)
    assert digest == (format_hash(blake3.blake3(data).digest()), size)
    assert dst.read_bytes() == data
    assert b"".join(seen) == data and sum(progressed) == size


def test_within_a_filesystem_the_kernel_copies(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 1))
    assert _copy_all(src, tmp_path / "dst").used == ["copy_file_range"]
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_across_filesystems_no_byte_passes_through_python(tmp_path):
    """copy_file_range may refuse another filesystem (EXDEV); sendfile then copies."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own")
    data = os.urandom(2 * 1024 * 1024 + 3)
    src = shm / f"ftstore-test-copy-{os.getpid()}"
    src.write_bytes(data)
    try:
        copier = _copy_all(src, tmp_path / "dst")
    finally:
        src.unlink()
    assert copier.used in (["copy_file_range"], ["sendfile"])
    assert (tmp_path / "dst").read_bytes() == data


def test_a_file_the_kernel_cannot_copy_is_read_and_written(tmp_path):
    """/proc files take neither in-kernel copy (copy_file_range copies 0 bytes of them): the
    last method copies them, and the hash is still that of the bytes stored."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    assert _copy_all("/proc/self/status", tmp_path / "status").used == ["read_write"]
    digest, size = copy_hashing(Path("/proc/self/status"), tmp_path / "copied")
    stored = (tmp_path / "copied").read_bytes()
    assert size == len(stored) > 0 and digest == format_hash(blake3.blake3(stored).digest())


def test_a_failing_sink_stops_the_copy_and_reaches_the_caller(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(4 * COPY_CHUNK))

    def sink(view):
        raise RuntimeError("sink broke")

    with pytest.raises(RuntimeError, match="sink broke"):
        copy_hashing(src, tmp_path / "dst", also=sink)


def test_a_failing_kernel_copy_reaches_the_caller(tmp_path, monkeypatch):
    """An error the copy thread meets (EIO from a bad disk, say) is raised in the caller."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(2 * COPY_CHUNK))
    calls = []

    def failing(self, method, want):
        calls.append(method)
        if len(calls) > 1:
            raise OSError(5, "Input/output error")
        return real(self, method, want)

    real = KernelCopy._move
    monkeypatch.setattr(KernelCopy, "_move", failing)
    with pytest.raises(OSError, match="Input/output error"):
        copy_hashing(src, tmp_path / "dst")


@pytest.mark.parametrize("planted", ["file", "link"])
def test_the_copy_target_must_be_new_and_is_never_followed(tmp_path, planted):
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    src.write_bytes(b"new")
    outside.write_bytes(b"old")
    if planted == "file":
        dst.write_bytes(b"old")
    else:
        dst.symlink_to(outside)
    with pytest.raises(FileExistsError):
        copy_hashing(src, dst)
    assert outside.read_bytes() == b"old" and (dst.is_symlink() or dst.read_bytes() == b"old")


@pytest.mark.parametrize("mtime", ["kept", "future"])
@pytest.mark.parametrize("methods", PATHS.values(), ids=PATHS.keys())
def test_a_source_written_to_mid_copy_is_refused_on_every_copy_path(store, make_file, monkeypatch, mtime, methods):
    """Once the first chunk is copied and hashed, while the rest may still be in flight, the
    source's writer changes bytes already copied. A source whose stat can tell is caught by
    its stat; one whose mtime is in the future (stat tells nothing) by hashing it again."""
    import ftstore.stores.local as local

    src = make_file(2 * COPY_CHUNK + 12345)
    if mtime == "future":
        os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**12))
    written = []

    def write_to_source(n):
        if not written:
            with open(src, "r+b") as f:
                f.seek(10)
                f.write(b"changed")
            written.append(n)

    real_copy = local.copy_hashing
    monkeypatch.setattr(local, "copy_hashing", lambda s, d, progress=None, also=None, durable=True:
                        real_copy(s, d, write_to_source, also, durable, methods))
    with pytest.raises(BadInputError, match="changed while it was being saved"):
        store.save(src, "m")
    assert written and store.keys() == [] and not any(store.backend.staging_dir.iterdir())


WRITER = """
import os, sys, random
rng = random.Random(0)
size = os.path.getsize(sys.argv[1])
with open(sys.argv[1], "r+b", buffering=0) as f:
    open(sys.argv[2], "w").close()
    while True:
        f.seek(rng.randrange(size - 64))
        f.write(os.urandom(64))
"""


def test_a_source_another_process_keeps_writing_is_refused(store, make_file, tmp_path):
    src = make_file(3 * COPY_CHUNK)
    started = tmp_path / "writing"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(src), str(started)])
    try:
        while not started.exists():
            assert writer.poll() is None
        with pytest.raises(BadInputError, match="changed while it was being saved"):
            store.save(src, "m")
    finally:
        writer.kill()
        writer.wait()
    assert store.keys() == []


@pytest.mark.parametrize("protect", [True, False])
def test_a_saved_copy_reads_back_as_the_source(store, make_file, protect):
    """Both save paths that copy (encoded after the copy, or protection pending) store the
    source's bytes under the hash the envelope records."""
    src = make_file(COPY_CHUNK + 99, seed=3)
    env = store.save(src, "m", protect=protect)
    assert env.source_hash == format_hash(blake3.blake3(src.read_bytes()).digest())
    assert store.load_bytes(f"m@{env.version}")[0].getvalue() == src.read_bytes()


@pytest.mark.parametrize("size", [1, 16_385, COPY_CHUNK + 99, 3 * COPY_CHUNK + 12_345])
@pytest.mark.parametrize("methods", ["kernel first", "read/write"])
def test_a_sidecar_whose_source_hashes_were_taken_during_the_copy_is_the_one_the_encoder_alone_writes(
    store, make_file, tmp_path, monkeypatch, size, methods
):
    """A save hashes the source symbols as the copy is read back, and the encoders skip
    them: the sidecar is byte for byte the one the codec writes from the stored payload on
    its own, across copy chunks, read chunks, and a short last symbol."""
    import ftstore.stores.local as local

    monkeypatch.setattr(local, "copy_hashing", lambda *a, **k: copy_hashing(*a, **k, methods=PATHS[methods]))
    env = store.save(make_file(size, seed=size), "m")
    stored = files(store, f"m@{env.version}")
    alone = tmp_path / "alone.sidecar"
    write_sidecar(stored.payload, alone, essentials_of(env), env.raptorq.overhead, None, jobs=2,
                  version=env.version)
    assert alone.read_bytes() == stored.sidecar.read_bytes()
