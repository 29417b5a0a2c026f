"""File names that are not UTF-8, in text and JSON that must be.

Python keeps each byte of a file name that is not UTF-8 as a lone surrogate
(``\\udc80``-``\\udcff``), which no UTF-8 document or terminal takes: printing one, or
encoding a report that holds one, raises. The ``ftstore-bytes`` error handler writes such a
byte as ``\\xNN`` instead, so a store path or an orphan's name is shown, never the end of a
command.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

import msgspec

ERRORS = "ftstore-bytes"


def _escape_bytes(e: UnicodeError) -> tuple[str, int]:
    if not isinstance(e, UnicodeEncodeError):
        raise e
    bad = e.object[e.start : e.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}"
                   for c in bad), e.end


codecs.register_error(ERRORS, _escape_bytes)


def printable(text: str) -> str:
    """``text`` with each undecodable byte of a file name written as ``\\xNN``."""
    return text.encode("utf-8", ERRORS).decode("utf-8")


def _printable_tree(obj: object) -> object:
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {_printable_tree(k): _printable_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_printable_tree(v) for v in obj]
    return obj


def encode_printable(encode: Callable[[object], bytes], doc: object) -> bytes:
    """``encode(doc)``; where ``doc`` holds such a file name, the same with every string of
    its builtins made :func:`printable`."""
    try:
        return encode(doc)
    except UnicodeEncodeError:
        return encode(_printable_tree(msgspec.to_builtins(doc)))


__all__ = ["ERRORS", "encode_printable", "printable"]
