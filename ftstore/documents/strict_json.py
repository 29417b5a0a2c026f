"""Duplicate JSON keys are errors in every document ftstore reads.

JSON (RFC 8259) only says keys "SHOULD" be unique, and parsers disagree on a repeated key:
msgspec and Python's ``json`` keep the last value, others keep the first or refuse. Two
readers that see different documents in the same bytes are an opening for confusion
attacks, so ftstore refuses such documents, as strict parsers (safetensors' header
among them) do. msgspec does not report duplicates, so each parser of an on-disk
document runs :func:`reject_duplicate_keys` on the bytes its strict decode accepted.

The check is a second, standard-library parse that keeps no values: each object is
reduced to ``None`` as soon as its keys are checked (or to the path of a repeated key), so
it holds little more than the text, and documents are size-capped before they get here.
It fails closed: bytes it cannot parse are refused too, never accepted unchecked.
"""

from __future__ import annotations

import json
import re

import msgspec

from ftstore.errors import BadInputError

DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError)
"""What a strict decode of untrusted JSON can raise: msgspec raises ``RecursionError``, not
a ``DecodeError``, for nesting deeper than it follows (about 1000 levels, a 2 KB document)."""

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_KEY_SHOWN = 80
_MAX_PATH_SHOWN = 200


class _Repeat:
    """A repeated key, and the keys and indices that lead to it, innermost first."""

    __slots__ = ("key", "steps")

    def __init__(self, key: str):
        self.key = key
        self.steps: list[str | int] = [key]

    def path(self) -> str:
        out = "$" + "".join(f"[{s}]" if isinstance(s, int) else _segment(s) for s in reversed(self.steps))
        return out if len(out) <= _MAX_PATH_SHOWN else "$..." + out[-_MAX_PATH_SHOWN:]


def _ignore(_text: str) -> None:
    return None


def _short(key: str) -> str:
    return key if len(key) <= _MAX_KEY_SHOWN else key[:_MAX_KEY_SHOWN] + "..."


def _segment(key: str) -> str:
    return f".{_short(key)}" if _IDENT.fullmatch(key) else f"[{json.dumps(_short(key))}]"


def _in_value(value: object) -> _Repeat | None:
    """The repeat inside an already checked value: objects are None or a _Repeat by now,
    so only lists (and lists in lists) need looking into."""
    if isinstance(value, _Repeat):
        return value
    if not isinstance(value, list):
        return None
    stack: list[tuple[list, list[int]]] = [(value, [])]
    while stack:
        items, at = stack.pop()
        for i, v in enumerate(items):
            if isinstance(v, _Repeat):
                v.steps.extend(reversed(at + [i]))
                return v
            if isinstance(v, list):
                stack.append((v, at + [i]))
    return None


def _object(pairs: list[tuple[str, object]]) -> _Repeat | None:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            return _Repeat(k)
        seen.add(k)
    for k, v in pairs:
        found = _in_value(v)
        if found is not None:
            found.steps.append(k)
            return found
    return None


def reject_duplicate_keys(data: bytes | str, source: str, error: type[Exception] = BadInputError) -> None:
    """Raise ``error`` with a one-line message naming the repeated key and where it is, if
    any JSON object in ``data`` gives a key twice. Numbers are not converted (their values
    do not matter here), and any text the parse cannot follow is refused as well."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "surrogateescape")
    try:
        root = json.loads(
            text, object_pairs_hook=_object, parse_int=_ignore, parse_float=_ignore, parse_constant=_ignore, strict=False
        )
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply to check for duplicate keys") from None
    except ValueError as e:
        raise error(f"{source}: JSON that cannot be checked for duplicate keys: {e}") from None
    found = _in_value(root)
    if found is not None:
        raise error(f"{source}: duplicate key {_short(found.key)!r} at `{found.path()}`: each key may appear only once")


__all__ = ["DECODE_ERRORS", "reject_duplicate_keys"]
