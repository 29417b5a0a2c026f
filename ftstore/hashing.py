"""BLAKE3 helpers: streaming whole-file hashes and short per-symbol hashes.

Whole-file hashes stream through a fixed buffer so files larger than RAM hash in bounded
memory, and use BLAKE3's multithreaded mode on large chunks, where it pays for itself.
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO, Callable

import blake3

PREFIX = "blake3:"
HASH_RE = re.compile(r"^blake3:[0-9a-f]{64}$")
CHUNK = 16 * 1024 * 1024
SYMBOL_HASH_BYTES = 16
_MT_THRESHOLD = 1 * 1024 * 1024


def format_hash(digest: bytes) -> str:
    return PREFIX + digest.hex()


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    return format_hash(blake3.blake3(data).digest())


def symbol_hash(data: bytes | bytearray | memoryview) -> bytes:
    """128-bit BLAKE3 of one symbol: enough to locate accidental damage; the whole-payload
    hash, checked after every decode, is what guards against forgery."""
    return blake3.blake3(data).digest(length=SYMBOL_HASH_BYTES)


def new_hasher() -> blake3.blake3:
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def hash_stream(
    f: BinaryIO,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    sink: Callable[[memoryview], object] | None = None,
) -> tuple[str, int]:
    """Hash up to ``limit`` bytes (all, if None) of an open file, passing each chunk to
    ``sink`` too (a copy that hashes what it writes). Returns (hash, bytes read)."""
    h = new_hasher()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while limit is None or total < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - total)
        n = f.readinto(view[:want])
        if not n:
            break
        h.update(view[:n])
        if sink:
            sink(view[:n])
        total += n
        if progress:
            progress(n)
    return format_hash(h.digest()), total


def hash_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    with open(path, "rb", buffering=0) as f:
        return hash_stream(f, progress=progress)
