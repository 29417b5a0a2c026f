"""Crash-safe file primitives for a local directory store.

Everything durable goes through a temporary file in the same directory, fsync, rename, and
an fsync of the directory, so a crash leaves either the old file or the whole new one.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from ..errors import StorageFullError
from ..hashing import hash_stream

TMP_MARK = ".tmp-"


def tmp_path(final: Path) -> Path:
    return final.with_name(f"{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def replace_durably(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(final: Path, data: bytes) -> None:
    tmp = tmp_path(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_hashing(
    src: Path,
    dst: Path,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
    also: Callable[[memoryview], object] | None = None,
) -> tuple[str, int]:
    """Copy ``src`` to a new file ``dst`` (fsynced) and return (BLAKE3, bytes) of what was
    written; ``also`` sees every chunk too."""
    with open(src, "rb", buffering=0) as fi, open(dst, "xb") as fo:

        def sink(chunk: memoryview) -> None:
            fo.write(chunk)  # buffered: write() never stops short
            if also:
                also(chunk)

        result = hash_stream(fi, limit, progress, sink=sink)
        fo.flush()
        os.fsync(fo.fileno())
    return result


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def is_disk_full(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(e: OSError, what: str) -> StorageFullError:
    return StorageFullError(f"no space left while {what}; the store was left as it was")
