"""BLAKE3 helpers: streaming whole-file hashes and short per-symbol hashes.

Whole-file hashes stream through a fixed buffer so files larger than RAM hash in bounded
memory, and use BLAKE3's multithreaded mode on large chunks, where it pays for itself.
"""

from __future__ import annotations

import ctypes
import os
import queue
import threading
from collections.abc import Callable, Iterator

import blake3

from ftstore.forks import in_forked_child

TYPE_CHECKING = False  # typing's, without importing typing at every codec worker's start (see ftstore.codec.tasks)
if TYPE_CHECKING:
    from typing import BinaryIO

PREFIX = "blake3:"
CHUNK = 16 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024  # with 3 buffers: read-ahead stays in cache, BLAKE3 still goes parallel
READ_AHEAD_BUFFERS = 3
SYMBOL_HASH_BYTES = 16


def format_hash(digest: bytes) -> str:
    return PREFIX + digest.hex()


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    return format_hash(blake3.blake3(data).digest())


def symbol_hash(data: bytes | bytearray | memoryview) -> bytes:
    """128-bit BLAKE3 of one symbol: enough to locate accidental damage; the whole-payload
    hash, checked after every decode, is what guards against forgery."""
    return blake3.blake3(data).digest(length=SYMBOL_HASH_BYTES)


_one_thread = False


def hash_on_one_thread() -> None:
    """Make every hasher of this process single-threaded: a codec worker's, one of a worker
    per core. BLAKE3's threads spend CPU to save wall time (on a 2-core VM: 3.6 GB/s for
    1.5x the CPU of one thread's 3.0 GB/s), which only pays where a core is idle; a scrub
    checking two artifacts at once in two workers went from 0.59 s to 0.51 s (8 x 64 MiB)."""
    global _one_thread
    _one_thread = True


def new_hasher(single_thread: bool = False) -> blake3.blake3:
    """Multithreaded unless asked otherwise, in a forked child (a fork-based DataLoader
    worker, say, which inherits the parent's BLAKE3 thread pool without its threads: a
    multithreaded hash there waits forever for them), or in a codec worker
    (:func:`hash_on_one_thread`): beside busy encoder processes one thread finishes sooner
    (measured: a 256 MiB save, 0.33 s vs 0.345 s)."""
    alone = single_thread or in_forked_child() or _one_thread
    return blake3.blake3(max_threads=1 if alone else blake3.blake3.AUTO)


def hash_stream(
    f: BinaryIO,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    sink: Callable[[memoryview], object] | None = None,
    single_thread: bool = False,
) -> tuple[str, int]:
    """Hash up to ``limit`` bytes (all, if None) of an open file, passing each chunk to
    ``sink`` too (a copy that hashes what it writes; it must copy what it keeps: the chunk's
    memory is read into again after the call). Returns (hash, bytes read)."""
    h = new_hasher(single_thread)
    total = 0
    for view in read_ahead(f, limit):
        h.update(view)
        if sink:
            sink(view)
        total += len(view)
        if progress:
            progress(len(view))
    return format_hash(h.digest()), total


_ALIGN = 4096


def aligned_buffer(size: int) -> memoryview:
    """A buffer of ``size`` bytes for ``read`` to fill, starting on a page boundary. Where
    the kernel copies out of the page cache with ``rep movsb`` (AMD EPYC, measured in a VM),
    a destination that is not 64-byte aligned makes the copy four times slower: 0.27 s
    instead of 0.07 s per 512 MiB read. A ``bytearray`` or ``bytes`` of a few MiB starts 16
    bytes (or 48) past a page, so every bulk read goes into one of these instead. It is a
    view into a ``bytearray`` (memory the allocator reuses, where a fresh mapping would
    cost a page fault per page, dear in a VM), from its first page boundary on."""
    raw = bytearray(size + _ALIGN)
    skip = -ctypes.addressof(ctypes.c_char.from_buffer(raw)) % _ALIGN
    return memoryview(raw)[skip : skip + size]


_spare_buffers: list[memoryview] = []
_MAX_SPARE = 0  # see keep_read_buffers


def keep_read_buffers() -> None:
    """Keep one read's buffers (12 MiB) for the next read, for the life of this process.

    For the processes ftstore runs itself, which read file after file: the CLI (a repair
    reads the payload, the sidecar, the patched payload, then every written symbol back) and
    the codec workers. A fresh 4 MiB buffer costs a page fault for each of its pages (4.4 us
    each on the benchmarks' 2-core VM: 5 ms a buffer), and a repair spent 30 ms of one core
    faulting in buffers it had just freed. A program that only imports ftstore (a trainer,
    its forked data loaders) keeps nothing between reads: its memory is its own."""
    global _MAX_SPARE
    _MAX_SPARE = READ_AHEAD_BUFFERS


def take_read_buffers(n: int) -> list[memoryview]:
    """``n`` aligned buffers of ``READ_CHUNK`` bytes: kept ones first (:func:`keep_read_buffers`),
    then fresh ones. Lock-free: the list's ``pop`` and ``append`` are atomic, so threads
    (and a fork at any moment) are safe."""
    out = []
    for _ in range(n):
        try:
            out.append(_spare_buffers.pop())
        except IndexError:
            out.append(aligned_buffer(READ_CHUNK))
    return out


def give_back_read_buffers(buffers: list[memoryview]) -> None:
    """Keep what :func:`keep_read_buffers` allows of ``buffers`` for the next read; the caller
    must hold no view into them any more."""
    for buf in buffers:
        if len(_spare_buffers) < _MAX_SPARE:
            _spare_buffers.append(buf)


def read_at(fd: int, buf: memoryview, offset: int) -> memoryview:
    """Fill ``buf`` from ``fd`` at ``offset``; the part filled, shorter only at end of file."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return buf[:got]


def read_ahead(f: BinaryIO, limit: int | None = None) -> Iterator[memoryview]:
    """The file's bytes (up to ``limit``) in chunks that a helper thread reads one step
    ahead, so the copy out of the page cache (or the wait for the disk) overlaps hashing:
    verify runs at 5.7-6 GB/s instead of 4.3 on two cores. Each view is valid only until
    the next one is asked for, or the iteration ends: it is released then, and its buffer
    read into again (by this read, or by the next one where buffers are kept). A slice of it
    kept by the caller would show those later bytes: copy what must outlive the step.

    Memory-mapping would be faster still, but a bad sector under a mapping kills the
    process with SIGBUS, where ``read`` returns EIO; a tool for damaged storage reads."""
    free: queue.Queue[memoryview | None] = queue.Queue()
    full: queue.Queue[tuple[memoryview | None, int, BaseException | None]] = queue.Queue()
    buffers = take_read_buffers(READ_AHEAD_BUFFERS)
    for buf in buffers:
        free.put(buf)

    def reader() -> None:
        left = limit
        try:
            while (buf := free.get()) is not None:
                want = READ_CHUNK if left is None else min(READ_CHUNK, left)
                n = (f.readinto(buf[:want]) or 0) if want else 0
                full.put((buf, n, None))
                if not n:
                    return
                if left is not None:
                    left -= n
        except BaseException as e:  # handed to the consumer, raised there
            full.put((None, 0, e))

    thread = threading.Thread(target=reader, name="ftstore-read-ahead", daemon=True)
    try:
        thread.start()  # inside: an interrupt right after it still stops the reader
        while True:
            buf, n, err = full.get()
            if err is not None:
                raise err
            if not n or buf is None:
                return
            view = buf[:n]
            try:
                yield view
            finally:
                view.release()  # kept past its turn, it fails loudly instead of showing later bytes
            free.put(buf)
    finally:
        free.put(None)
        if thread.ident is not None:
            thread.join()
        give_back_read_buffers(buffers)  # the reader is gone; the caller is done with the last view


def stream_length(f: BinaryIO) -> int | None:
    """The whole length of an open file without reading it: ``fstat`` for a file, the
    ``length`` its raw stream knows for anything else (an object body); None if neither."""
    try:
        return os.fstat(f.fileno()).st_size
    except (OSError, ValueError):  # no descriptor (io.UnsupportedOperation is both)
        return getattr(getattr(f, "raw", None), "length", None)


def hash_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    with open(path, "rb", buffering=0) as f:
        return hash_stream(f, progress=progress)
