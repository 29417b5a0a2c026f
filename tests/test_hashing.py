"""Streaming hashes read ahead in a helper thread; they must equal BLAKE3 of the bytes and
surface read errors to the caller."""

import io
import subprocess
import sys

import blake3
import pytest

from ftstore.hashing import READ_CHUNK, format_hash, hash_file, hash_stream


@pytest.mark.parametrize("size", [0, 1, READ_CHUNK - 1, READ_CHUNK, 3 * READ_CHUNK + 5])
def test_hash_file_equals_blake3_of_the_bytes(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert hash_file(p) == (format_hash(blake3.blake3(data).digest()), size)
    with open(p, "rb", buffering=0) as f:
        seen = []
        digest = hash_stream(f, limit=size // 2, sink=lambda v: seen.append(bytes(v)))
    assert digest == (format_hash(blake3.blake3(data[: size // 2]).digest()), size // 2)
    assert b"".join(seen) == data[: size // 2]


def test_a_read_error_reaches_the_caller():
    class FailingDisk(io.RawIOBase):
        calls = 0

        def readable(self):
            return True

        def readinto(self, b):
            self.calls += 1
            if self.calls > 2:
                raise OSError(5, "Input/output error")
            b[:10] = b"0123456789"
            return 10

    with pytest.raises(OSError, match="Input/output error"):
        hash_stream(FailingDisk())


def test_a_codec_worker_imports_neither_the_rest_of_the_package_nor_msgspec():
    """Codec workers import ftstore.codec; the public names of both packages load on first
    use, so a worker starts without the sidecar format, the documents or msgspec."""
    code = (
        "import sys, ftstore.codec.worker, ftstore.codec.encoder, ftstore.codec.decoder;"
        "heavy = [m for m in ('numpy', 'msgspec', 'ftstore.api', 'ftstore.training.checkpoints', 'ftstore.engine',"
        " 'ftstore.stores', 'ftstore.documents', 'ftstore.codec.build', 'ftstore.codec.sidecar') if m in sys.modules];"
        "assert not heavy, heavy;"
        "import ftstore, ftstore.codec as codec;"
        "assert all(getattr(ftstore, n) for n in ftstore.__all__);"
        "assert all(getattr(codec, n) for n in codec.__all__);"
        "assert set(ftstore.__all__) <= set(dir(ftstore)) and set(codec.__all__) <= set(dir(codec))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_codec_worker_starts_with_only_what_its_work_needs():
    """What a worker imports (the worker program and the tasks it preloads) is all every
    worker of every large save and repair pays for as it starts, on every core: no worker
    pool, no copies or temporary files, no dataclasses (with inspect), no typing, no
    regular expressions of its own. Measured: 50 ms to start before, 27 ms after; an
    interpreter importing only blake3 and raptorq takes 11 ms. Modules the interpreter
    imports at its own start (an editable install's finder brings pathlib and re) are not
    the worker's."""
    startup = set(subprocess.run([sys.executable, "-c", "import sys; print(*sys.modules)"], check=True,
                                 capture_output=True, text=True).stdout.split())
    code = (
        "import sys, ftstore.codec.worker as w, importlib;"
        "[importlib.import_module(m) for m in w._PRELOAD];"
        "print(*sys.modules)"
    )
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    not_for_a_worker = {"dataclasses", "inspect", "typing", "shutil", "uuid", "pathlib", "subprocess", "selectors",
                        "tempfile", "ftstore.durable", "ftstore.codec.parallel", "ftstore.codec.encoder",
                        "ftstore.codec.decoder", "ftstore.interpreter"}
    assert (loaded - startup) & not_for_a_worker == set()


def test_a_forked_child_hashes_after_its_parent_used_the_thread_pool():
    """A fork-based DataLoader worker that saves must not hang in BLAKE3's thread pool."""
    code = (
        "import os, sys\n"
        "from ftstore.hashing import hash_stream\n"
        "import io\n"
        "data = os.urandom(64 << 20)\n"
        "hash_stream(io.BytesIO(data))  # the parent's pool is up\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    digest, n = hash_stream(io.BytesIO(data))\n"
        "    os._exit(0 if n == len(data) else 1)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_read_buffers_start_on_a_page_and_read_at_fills_them(tmp_path):
    """Bulk reads go into page-aligned buffers (a misaligned destination made the kernel's
    copy out of the page cache four times slower on the CI machine's CPU)."""
    import ctypes

    from ftstore.hashing import aligned_buffer, read_at

    for size in (0, 1, 16384, 4 << 20):
        buf = aligned_buffer(size)
        assert len(buf) == size and not buf.readonly
        if size:
            assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) % 4096 == 0
    data = bytes(range(256)) * 100
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as f:
        assert bytes(read_at(f.fileno(), aligned_buffer(1000), 300)) == data[300:1300]
        assert bytes(read_at(f.fileno(), aligned_buffer(1000), len(data) - 10)) == data[-10:]  # short at the end


def test_finished_reads_hand_their_buffers_to_the_next_even_across_threads(tmp_path, monkeypatch):
    """Where buffers are kept (the CLI, a codec worker), a read's buffers serve the next
    read (a fresh 4 MiB buffer costs a page fault per page), and only once its reader
    thread is done with them: reads in four threads at once, some ended after their first
    chunk, each get exactly their own file's hash. A program that only imports ftstore
    keeps none."""
    import random
    import threading

    from ftstore import hashing

    rng = random.Random(7)
    files = []
    for i, mib in enumerate((1, 5, 13, 9)):
        p = tmp_path / f"f{i}"
        p.write_bytes(rng.randbytes(mib * 1024 * 1024 + rng.randrange(1000)))
        files.append(p)
    want = {p: format_hash(blake3.blake3(p.read_bytes()).digest()) for p in files}

    monkeypatch.setattr(hashing, "_spare_buffers", [])
    hash_file(files[2])
    assert hashing._spare_buffers == []  # not asked to keep any

    monkeypatch.setattr(hashing, "_MAX_SPARE", 0)
    hashing.keep_read_buffers()
    hash_file(files[2])
    kept = list(hashing._spare_buffers)
    assert len(kept) == hashing.READ_AHEAD_BUFFERS
    again = hashing.take_read_buffers(hashing.READ_AHEAD_BUFFERS)
    assert sorted(map(id, again)) == sorted(map(id, kept))
    hashing.give_back_read_buffers(again)

    wrong: list[str] = []

    def work(k: int) -> None:
        for n in range(30):
            p = files[(k + n) % len(files)]
            if n % 2 == 0:  # ended early: its reader may still be reading ahead into a buffer
                with open(p, "rb", buffering=0) as f:
                    for _ in hashing.read_ahead(f):
                        break
            if hash_file(p)[0] != want[p]:
                wrong.append(p.name)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert len(hashing._spare_buffers) <= hashing.READ_AHEAD_BUFFERS


def test_a_chunk_kept_past_its_turn_fails_instead_of_showing_later_bytes(tmp_path):
    """A read's chunk is released when the next is asked for or the read ends, so a caller
    that kept it gets an error, never the bytes of a later chunk or of another file."""
    from ftstore.durable import copy_hashing
    from ftstore.hashing import read_ahead

    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * (3 * READ_CHUNK // 256))
    with open(p, "rb", buffering=0) as f:
        chunks = list(read_ahead(f))
    assert len(chunks) == 3
    for chunk in chunks:
        with pytest.raises(ValueError):
            bytes(chunk)
    seen: list[memoryview] = []
    copy_hashing(p, tmp_path / "copy", also=seen.append)
    assert seen
    for chunk in seen:
        with pytest.raises(ValueError):
            bytes(chunk)
