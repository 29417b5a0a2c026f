"""The thin layer over the ``raptorq`` binding: packet ids, and panics turned into errors.

Every stripe is encoded as one RaptorQ object, one source block (SBN 0); ESI ``i < K`` is
source symbol ``i`` and ESI ``K + k`` is repair symbol ``k``. The binding's decoder trusts
its input, so callers feed it only symbols whose hashes were checked.
"""

from __future__ import annotations

import functools
import os

import raptorq


def _is_dist_info(name: str) -> bool:
    """``raptorq-<version>.dist-info``: the package's, not a ``raptorq_*`` sibling's. (No
    regular expression: this module is imported at every codec worker's start.)"""
    version = name.removeprefix("raptorq-").removesuffix(".dist-info")
    return name == f"raptorq-{version}.dist-info" and version[:1].isdigit() and "-" not in version


@functools.cache
def library_version() -> str:
    """The ``raptorq`` release encoding this process's sidecars (recorded in each): the
    ``Version`` of the one ``raptorq-*.dist-info`` beside the package, which is what
    ``importlib.metadata`` reads too. That module is the fallback only: importing it and
    scanning the path costs every save 15 ms before its encoding can start."""
    try:
        site = os.path.dirname(os.path.dirname(os.path.abspath(raptorq.__file__)))
        infos = [e.path for e in os.scandir(site) if _is_dist_info(e.name)]
        if len(infos) == 1:
            with open(os.path.join(infos[0], "METADATA"), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
                    if not line.strip():
                        break  # the headers end at the first blank line
    except (OSError, TypeError, UnicodeDecodeError):  # unreadable, or a package without a file
        pass
    from importlib.metadata import version

    return version("raptorq")


class CodecFailure(Exception):
    """The binding panicked or returned a layout ftstore does not expect."""


def packet(esi: int, symbol: bytes | bytearray | memoryview) -> bytes:
    return b"".join((bytes((0, (esi >> 16) & 0xFF, (esi >> 8) & 0xFF, esi & 0xFF)), symbol))


def encode_repair(obj: bytes, symbol_size: int, k: int, repair: int) -> list[memoryview]:
    """Repair symbols ``0..repair-1`` of an object of ``k`` symbols (``len(obj) == k * T``)."""
    try:
        packets = raptorq.Encoder.with_defaults(obj, symbol_size).get_encoded_packets(repair)
    except BaseException as e:  # pyo3 PanicException derives from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CodecFailure(f"raptorq encoder failed: {e}") from None
    if len(packets) != k + repair:
        raise CodecFailure(f"raptorq returned {len(packets)} packets, expected {k + repair}")
    out = []
    for idx, p in enumerate(packets[k:]):
        if p[0] != 0 or int.from_bytes(p[1:4], "big") != k + idx:
            raise CodecFailure("raptorq split the object into several source blocks")
        out.append(memoryview(p)[4:])
    return out


def decode(length: int, symbol_size: int, packets: list[bytes]) -> tuple[bytes | None, int]:
    """Feed packets until the object decodes. Returns (object or None, packets consumed)."""
    try:
        dec = raptorq.Decoder.with_defaults(length, symbol_size)
        for n, p in enumerate(packets, 1):
            out = dec.decode(p)
            if out is not None:
                return bytes(out), n
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise CodecFailure(f"raptorq decoder failed: {e}") from None
    return None, len(packets)
