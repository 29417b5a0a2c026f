"""Reading zip archives that ftstore did not write, safely.

Every member is vetted from the central directory before a single byte is read or
written: names (no absolute paths, ``..``, backslashes, drive letters or NULs), no
symlinks, no duplicates, no encryption, bounded member count, bounded sizes and
compression ratios (zip bombs). Reads are capped at the declared size, so a header that
lies about a size is caught, never trusted.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from ftstore.errors import BadInputError


@dataclass(frozen=True)
class ArchiveLimits:
    """Configurable through ``FTSTORE_ZIP_MAX_MEMBERS``, ``FTSTORE_ZIP_MAX_BYTES`` (total
    uncompressed) and ``FTSTORE_ZIP_MAX_RATIO``."""

    max_members: int = 4096
    max_total_bytes: int = 256 * 1024**3
    max_ratio: int = 200  # uncompressed/compressed, checked for members over 1 MiB
    max_name_length: int = 1024

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        d = cls()
        return cls(
            max_members=int(os.environ.get("FTSTORE_ZIP_MAX_MEMBERS", d.max_members)),
            max_total_bytes=int(os.environ.get("FTSTORE_ZIP_MAX_BYTES", d.max_total_bytes)),
            max_ratio=int(os.environ.get("FTSTORE_ZIP_MAX_RATIO", d.max_ratio)),
        )


_READ_CHUNK = 1 << 20


class ArchiveError(BadInputError):
    """A hostile or broken archive."""


ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, ValueError, KeyError,
              RuntimeError)  # RuntimeError: an encrypted member
"""What :mod:`zipfile` raises for a broken, encrypted or unsupported archive or member."""


class SafeZip:
    def __init__(self, path: str | os.PathLike, limits: ArchiveLimits | None = None):
        self.path = Path(path)
        self.limits = limits or ArchiveLimits.from_env()
        try:
            self._zf = zipfile.ZipFile(self.path)
        except (OSError, *ZIP_ERRORS) as e:
            raise ArchiveError(f"{self.path}: not a readable zip archive ({e})") from None
        try:
            self.members = self._vet(self._zf.infolist())
        except ArchiveError:
            self._zf.close()
            raise

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc) -> None:
        self._zf.close()

    def _vet(self, infos: list[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
        lim = self.limits
        if len(infos) > lim.max_members:
            raise ArchiveError(f"{self.path}: {len(infos)} members, over the limit of {lim.max_members}")
        out: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            self._check_name(name)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveError(f"{self.path}: member {name!r} is a symlink")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{self.path}: member {name!r} is encrypted")
            key = name.rstrip("/")
            if key in out:
                raise ArchiveError(f"{self.path}: duplicate member {name!r}")
            if info.is_dir():
                continue
            total += info.file_size
            if total > lim.max_total_bytes:
                raise ArchiveError(f"{self.path}: members expand to over {lim.max_total_bytes} bytes")
            if info.file_size > (1 << 20) and info.file_size > lim.max_ratio * max(info.compress_size, 1):
                raise ArchiveError(
                    f"{self.path}: member {name!r} expands {info.file_size // max(info.compress_size, 1)}x "
                    f"(limit {lim.max_ratio}x): refusing a likely zip bomb"
                )
            out[key] = info
        self._check_no_overlap(infos)
        return out

    def _check_no_overlap(self, infos: list[zipfile.ZipInfo]) -> None:
        """Members whose data overlap (several central entries pointing into one compressed
        stream, the "overlapping" zip bomb) are refused: each would pass the ratio check
        while the archive expands far past what its size allows."""
        spans = sorted((i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437"))
                        + i.compress_size, i.filename) for i in infos)
        for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
            if start < end:
                raise ArchiveError(f"{self.path}: members {name!r} and {other!r} overlap: refusing a likely zip bomb")

    def _check_name(self, name: str) -> None:
        bad = (
            not name
            or len(name) > self.limits.max_name_length
            or "\0" in name
            or "\\" in name
            or name.startswith("/")
            or (len(name) > 1 and name[1] == ":")
            or any(part in ("..", ".", "") for part in name.rstrip("/").split("/"))
        )
        if bad:
            raise ArchiveError(f"{self.path}: unsafe member name {name!r}")

    def names(self) -> list[str]:
        return list(self.members)

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        return bytes(self.read_into_buffer(name, max_bytes))

    def read_into_buffer(self, name: str, max_bytes: int | None = None) -> bytearray:
        """The member's bytes in a buffer of the size its header declares, filled as they
        inflate: no second copy of a large member (a params array) is ever made."""
        info = self._info(name)
        if max_bytes is not None and info.file_size > max_bytes:
            raise ArchiveError(f"{self.path}: member {name!r} is {info.file_size} bytes, over the {max_bytes} byte limit")
        buf = bytearray(info.file_size)
        view, got = memoryview(buf), 0
        try:
            with self._zf.open(info) as f:
                while got < len(buf) and (n := f.readinto(view[got : got + _READ_CHUNK])):  # zipfile reads
                    got += n  # what readinto asks for into a bytes of its own first: a chunk at a time
                extra = f.read(1)
        except (OSError, *ZIP_ERRORS) as e:  # a corrupt offset makes zipfile seek before the file start
            raise ArchiveError(f"{self.path}: member {name!r} is damaged or lies about its size ({e})") from None
        if got != info.file_size or extra:
            raise ArchiveError(f"{self.path}: member {name!r} does not hold the {info.file_size} bytes its header claims")
        return buf

    def check_member(self, name: str) -> None:
        """Read one member through (CRC and declared size checked), keeping nothing."""
        info = self._info(name)
        try:
            with self._zf.open(info) as f:
                n = 0
                while chunk := f.read(1 << 20):
                    n += len(chunk)
        except (OSError, *ZIP_ERRORS) as e:
            raise ArchiveError(f"{self.path}: member {name!r} is damaged or lies about its size ({e})") from None
        if n != info.file_size:
            raise ArchiveError(f"{self.path}: member {name!r} does not hold the {info.file_size} bytes its header claims")

    def extract(self, name: str, dest: Path) -> None:
        """Stream one member to a new file ``dest``, capped at its declared size."""
        info = self._info(name)
        try:
            with self._zf.open(info) as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
                if out.tell() != info.file_size:
                    raise ArchiveError(f"{self.path}: member {name!r} does not hold the bytes its header claims")
        except (OSError, *ZIP_ERRORS) as e:
            dest.unlink(missing_ok=True)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise ArchiveError(f"{self.path}: member {name!r} is damaged or lies about its size ({e})") from None

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            return self.members[name]
        except KeyError:
            raise ArchiveError(f"{self.path}: no member {name!r}") from None
