"""Printing: data to stdout (text or JSON), messages and progress to stderr."""

from __future__ import annotations

import contextlib
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any, Callable

import click
import msgspec

from ftstore.documents.printable import ERRORS, encode_printable


def emit_json(obj: Any) -> None:
    data = encode_printable(msgspec.json.encode, obj)  # a file name that is not UTF-8: \xNN
    sys.stdout.buffer.write(msgspec.json.format(data, indent=2) + b"\n")
    sys.stdout.flush()


def printable_streams() -> None:
    """Text output never fails on a file name that is not UTF-8: its bytes are shown as
    ``\\xNN`` escapes (:func:`printable`) instead of ending the command with an encoding
    error."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors=ERRORS)  # type: ignore[union-attr]


def shown_name(name: str) -> str:
    """A store path as one line of text: a control character or line separator in it (a
    newline in a stray folder's name, U+0085, U+2028) written as ``\\xNN`` or ``\\uNNNN``."""
    return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in name)


def info(msg: str) -> None:
    click.echo(msg, err=True)


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr when stderr is a terminal and the work is large; else nothing."""
    if not sys.stderr.isatty() or total < 64 * 1024 * 1024:
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update
