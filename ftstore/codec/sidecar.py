"""The repair sidecar file: two self-checked copies of a small metadata block around the
repair symbols.

    [meta block A][repair symbols][meta block B][u64 LE len(meta block)]["FTSRQEND"]

    meta block = "FTSRQSC1" | u32 LE header_len | header JSON | N x 16 B source-symbol hashes
                 | sum(R) x 16 B repair-symbol hashes | 32 B BLAKE3 of everything before it

Copy A is read first, copy B (found through the trailer) if A is damaged, so a damaged head
or a truncated tail alone never loses the hash tables. The header repeats the envelope's
essential fields so a lost envelope can be rebuilt, and (since ``sidecar_version`` 2) the
artifact version it belongs to, so a sidecar is bound to exactly one artifact version:
artifact id, name and version. Version 1 sidecars (no version) are still read. Everything
is validated and bounded before any table is allocated.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, BinaryIO, Literal, Union

import blake3
import msgspec
from msgspec import Meta

from ftstore.documents.envelope_json import canonical
from ftstore.documents.envelope import ArtifactEssentials, NonNegInt, PosInt, Strict
from ftstore.documents.strict_json import DECODE_ERRORS, reject_duplicate_keys
from ftstore.fileio import must_open_regular, open_regular
from ftstore.errors import BadInputError
from ftstore.hashing import SYMBOL_HASH_BYTES
from ftstore.codec.layout import MAX_OVERHEAD, SAFETY_SYMBOLS, Layout, repair_count, stripes_allowed

BLOCK_MAGIC = b"FTSRQSC1"
TRAILER_MAGIC = b"FTSRQEND"
TRAILER_LEN = 16
MAX_HEADER_BYTES = 1024 * 1024
MAX_PAYLOAD_BYTES = 1 << 50


class SidecarError(BadInputError):
    """A sidecar that cannot be used: both metadata copies damaged, or a header that lies."""


class SidecarHeader(Strict, kw_only=True):
    """The header ftstore writes (``sidecar_version`` 2): ``artifact_version`` binds the
    sidecar to one artifact version, with ``artifact.artifact_id`` and ``artifact.name``."""

    format: Literal["ftstore-sidecar"] = "ftstore-sidecar"
    sidecar_version: Literal[2] = 2
    library: Literal["raptorq"] = "raptorq"
    library_version: Annotated[str, Meta(max_length=64)]
    symbol_hash: Literal["blake3-128"] = "blake3-128"
    payload_size: Annotated[int, Meta(ge=0, le=MAX_PAYLOAD_BYTES)]
    symbol_size: Annotated[int, Meta(ge=8, le=65528, multiple_of=8)]
    stripes: NonNegInt
    source_symbols: NonNegInt
    overhead: Annotated[float, Meta(ge=0.0, le=MAX_OVERHEAD)]
    repair_symbols_per_stripe: list[NonNegInt]
    artifact: ArtifactEssentials
    artifact_version: PosInt

    def layout(self) -> Layout:
        return Layout(self.payload_size, self.symbol_size, self.stripes, tuple(self.repair_symbols_per_stripe))


class SidecarHeaderV1(Strict, kw_only=True):
    """The first header (``sidecar_version`` 1), still read: no artifact version, so only
    the artifact id and name say whose it is."""

    format: Literal["ftstore-sidecar"] = "ftstore-sidecar"
    sidecar_version: Literal[1] = 1
    library: Literal["raptorq"] = "raptorq"
    library_version: Annotated[str, Meta(max_length=64)]
    symbol_hash: Literal["blake3-128"] = "blake3-128"
    payload_size: Annotated[int, Meta(ge=0, le=MAX_PAYLOAD_BYTES)]
    symbol_size: Annotated[int, Meta(ge=8, le=65528, multiple_of=8)]
    stripes: NonNegInt
    source_symbols: NonNegInt
    overhead: Annotated[float, Meta(ge=0.0, le=MAX_OVERHEAD)]
    repair_symbols_per_stripe: list[NonNegInt]
    artifact: ArtifactEssentials

    @property
    def artifact_version(self) -> int | None:
        return None

    def layout(self) -> Layout:
        return Layout(self.payload_size, self.symbol_size, self.stripes, tuple(self.repair_symbols_per_stripe))


AnySidecarHeader = Union[SidecarHeader, SidecarHeaderV1]
HEADERS: dict[int, type] = {1: SidecarHeaderV1, 2: SidecarHeader}


class _VersionProbe(msgspec.Struct):
    sidecar_version: object = None


def decode_header(header_json: bytes) -> AnySidecarHeader:
    """A header of any sidecar version this ftstore reads; :class:`SidecarError` otherwise."""
    try:
        version = msgspec.json.decode(header_json, type=_VersionProbe).sidecar_version
    except DECODE_ERRORS as e:
        raise SidecarError(f"invalid header: {e}") from None
    kind = HEADERS.get(version) if type(version) is int else None  # type: ignore[call-overload]
    if kind is None:
        raise SidecarError(f"unsupported `sidecar_version` {version!r}: this ftstore reads {', '.join(map(str, HEADERS))}")
    try:
        return msgspec.json.decode(header_json, type=kind)
    except DECODE_ERRORS as e:
        raise SidecarError(f"invalid header: {e}") from None


@dataclass(frozen=True)
class SidecarMeta:
    header: AnySidecarHeader
    source_hashes: bytes
    repair_hashes: bytes
    block_len: int
    copies_ok: int

    @cached_property
    def layout(self) -> Layout:
        """Built once: a repair asks for it per symbol (a new layout copies the header's list
        of repair counts, 512 entries for 512 MiB)."""
        return self.header.layout()

    def repair_hash_of(self, k: int) -> bytes:
        return self.repair_hashes[k * SYMBOL_HASH_BYTES : (k + 1) * SYMBOL_HASH_BYTES]

    def repair_offset(self, s: int, i: int) -> int:
        lay = self.layout
        return self.block_len + (lay.repair_starts[s] + i) * lay.symbol_size


def damaged_repair_symbols(path: str | os.PathLike, meta: SidecarMeta) -> int:
    """How many repair symbols fail their hash (or are missing). Needed when no envelope
    vouches for the sidecar's whole-file hash."""
    lay, t = meta.layout, meta.layout.symbol_size
    bad = 0
    with must_open_regular(path) as f:
        f.seek(meta.block_len)
        for k in range(lay.total_repair):
            sym = f.read(t)
            if len(sym) != t or blake3.blake3(sym).digest(length=SYMBOL_HASH_BYTES) != meta.repair_hash_of(k):
                bad += 1
    return bad


def block_length(header_json: bytes, layout: Layout) -> int:
    return 8 + 4 + len(header_json) + (layout.source_symbols + layout.total_repair) * SYMBOL_HASH_BYTES + 32


def sidecar_size(block_len: int, layout: Layout) -> int:
    return 2 * block_len + layout.total_repair * layout.symbol_size + TRAILER_LEN


def build_block(header_json: bytes, source_hashes: bytes, repair_hashes: bytes) -> bytes:
    body = BLOCK_MAGIC + struct.pack("<I", len(header_json)) + header_json + source_hashes + repair_hashes
    return body + blake3.blake3(body).digest()


def write_meta(f: BinaryIO, block: bytes, layout: Layout) -> None:
    """Write both metadata copies and the trailer around an already written repair region."""
    f.seek(0)
    f.write(block)
    f.seek(len(block) + layout.total_repair * layout.symbol_size)
    f.write(block)
    f.write(struct.pack("<Q", len(block)) + TRAILER_MAGIC)


def read_meta(path: str | os.PathLike) -> SidecarMeta:
    """Read the first intact metadata copy; :class:`SidecarError` if neither is usable (or
    the sidecar is missing, or not a regular file: a link is never followed)."""
    try:
        f = open_regular(path)
    except BadInputError as e:
        raise SidecarError(str(e)) from None
    if f is None:
        raise SidecarError(f"{path}: sidecar is missing")
    with io.BufferedReader(f) as f:  # whole reads of large tables
        size = os.fstat(f.fileno()).st_size
        errors = []
        found = []
        try:
            found.append(_parse_block(f, 0, size))
        except SidecarError as e:
            errors.append(f"copy A: {e}")
        except OSError as e:  # a bad sector: this copy is lost, the other may not be
            errors.append(f"copy A: unreadable ({e.strerror or e})")
        try:
            start = _tail_block_start(f, size)
            meta_b = _parse_block(f, start, size)
            if found and found[0].block_len != meta_b.block_len:
                raise SidecarError("copy B disagrees with copy A in length")
            found.append(meta_b)
        except SidecarError as e:
            errors.append(f"copy B: {e}")
        except OSError as e:
            errors.append(f"copy B: unreadable ({e.strerror or e})")
    if not found:
        raise SidecarError(f"{path}: no intact metadata copy ({'; '.join(errors)})")
    m = found[0]
    return SidecarMeta(m.header, m.source_hashes, m.repair_hashes, m.block_len, copies_ok=len(found))


def _tail_block_start(f: BinaryIO, size: int) -> int:
    if size < TRAILER_LEN:
        raise SidecarError("file too short for a trailer")
    f.seek(size - TRAILER_LEN)
    trailer = f.read(TRAILER_LEN)
    if trailer[8:] != TRAILER_MAGIC:
        raise SidecarError("trailer magic missing")
    (block_len,) = struct.unpack("<Q", trailer[:8])
    if block_len > size - TRAILER_LEN:
        raise SidecarError("trailer claims a block longer than the file")
    return size - TRAILER_LEN - block_len


def _parse_block(f: BinaryIO, start: int, file_size: int) -> SidecarMeta:
    f.seek(start)
    head = f.read(12)
    if len(head) < 12 or head[:8] != BLOCK_MAGIC:
        raise SidecarError("bad magic")
    (hlen,) = struct.unpack("<I", head[8:])
    if hlen > MAX_HEADER_BYTES or start + 12 + hlen > file_size:
        raise SidecarError(f"header length {hlen} is out of bounds")
    header_json = f.read(hlen)
    header = decode_header(header_json)
    reject_duplicate_keys(header_json, "header", SidecarError)
    layout = _checked_layout(header, file_size)
    n_src = layout.source_symbols * SYMBOL_HASH_BYTES
    n_rep = layout.total_repair * SYMBOL_HASH_BYTES
    block_len = block_length(header_json, layout)
    if start + block_len > file_size:
        raise SidecarError("tables run past the end of the file")
    rest = f.read(n_src + n_rep + 32)
    if len(rest) != n_src + n_rep + 32:
        raise SidecarError("tables are truncated")
    body_hash = blake3.blake3(head)
    body_hash.update(header_json)
    body_hash.update(memoryview(rest)[: n_src + n_rep])
    if body_hash.digest() != rest[n_src + n_rep :]:
        raise SidecarError("block checksum mismatch")
    return SidecarMeta(header, rest[:n_src], rest[n_src : n_src + n_rep], block_len, copies_ok=1)


def _checked_layout(h: AnySidecarHeader, file_size: int) -> Layout:
    """Refuse headers whose counts disagree with the layout rules or with the file's size,
    before allocating anything in proportion to what they claim."""
    if len(h.repair_symbols_per_stripe) != h.stripes:
        raise SidecarError("`repair_symbols_per_stripe` does not have one entry per stripe")
    if not stripes_allowed(h.payload_size, h.symbol_size, h.stripes):
        raise SidecarError(f"`stripes` {h.stripes} does not fit the payload size")
    if h.stripes * SAFETY_SYMBOLS * h.symbol_size > file_size:
        raise SidecarError(f"`stripes` {h.stripes} claims more repair data than the file holds")
    expected = Layout.plan(h.payload_size, h.overhead, h.symbol_size, h.stripes)
    if h.source_symbols != expected.source_symbols:
        raise SidecarError(f"`source_symbols` {h.source_symbols} does not match the payload size")
    if tuple(h.repair_symbols_per_stripe) != expected.repair_counts:
        raise SidecarError("`repair_symbols_per_stripe` does not match the overhead")
    if h.artifact.size != h.payload_size:
        raise SidecarError("`artifact.size` does not match `payload_size`")
    return expected


def header_bytes(header: SidecarHeader) -> bytes:
    return canonical(header)


__all__ = [
    "AnySidecarHeader",
    "SidecarError",
    "SidecarHeader",
    "SidecarHeaderV1",
    "SidecarMeta",
    "block_length",
    "build_block",
    "damaged_repair_symbols",
    "decode_header",
    "read_meta",
    "repair_count",
    "sidecar_size",
    "write_meta",
]
