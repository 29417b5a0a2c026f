"""Duplicate JSON keys are errors in every document ftstore reads.

JSON (RFC 8259) only says keys "SHOULD" be unique, and parsers disagree on a repeated key:
msgspec and Python's ``json`` keep the last value, others keep the first or refuse. Two
readers that see different documents in the same bytes are an opening for confusion
attacks, so ftstore refuses such documents, as strict parsers (safetensors' header
among them) do. msgspec does not report duplicates, so each parser of an on-disk
document runs :func:`reject_duplicate_keys` on the bytes its strict decode accepted.

The check is a second, standard-library parse that keeps every key/value pair; documents
are size-capped before they get here. It fails closed: bytes it cannot parse are refused
too, so a document is never accepted unchecked.
"""

from __future__ import annotations

import json
import re

from ..errors import BadInputError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_KEY_SHOWN = 80
_MAX_PATH_SHOWN = 200


class _Dups(dict):
    """An object in which at least one key was repeated (the first repeated key is kept)."""

    repeated: str


def _pairs(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out and not isinstance(out, _Dups):
            out = _Dups(out)
            out.repeated = k
        out[k] = v
    return out


def _ignore(_text: str) -> None:
    return None


def _short(key: str) -> str:
    return key if len(key) <= _MAX_KEY_SHOWN else key[:_MAX_KEY_SHOWN] + "..."


def _segment(key: str) -> str:
    return f".{_short(key)}" if _IDENT.fullmatch(key) else f"[{json.dumps(_short(key))}]"


def _first_repeat(root: object) -> tuple[str, str] | None:
    """(object path, key) of the first object, depth first, that repeats a key."""
    stack: list[tuple[object, str]] = [(root, "$")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            if isinstance(node, _Dups):
                return path, node.repeated
            children = [(v, path + _segment(k)) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))
    return None


def reject_duplicate_keys(data: bytes | str, source: str, error: type[Exception] = BadInputError) -> None:
    """Raise ``error`` with a one-line message naming the repeated key and where it is, if
    any JSON object in ``data`` gives a key twice. Numbers are not converted (their values
    do not matter here), and any text the parse cannot follow is refused as well."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8", "surrogateescape")
    found = False

    def hook(pairs: list[tuple[str, object]]) -> dict:
        nonlocal found
        d = _pairs(pairs)
        found = found or isinstance(d, _Dups)
        return d

    try:
        root = json.loads(
            text, object_pairs_hook=hook, parse_int=_ignore, parse_float=_ignore, parse_constant=_ignore, strict=False
        )
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply to check for duplicate keys") from None
    except ValueError as e:
        raise error(f"{source}: JSON that cannot be checked for duplicate keys: {e}") from None
    if not found:
        return
    where = _first_repeat(root)
    assert where is not None
    path, key = where
    path += _segment(key)
    if len(path) > _MAX_PATH_SHOWN:
        path = "$..." + path[-_MAX_PATH_SHOWN:]
    raise error(f"{source}: duplicate key {_short(key)!r} at `{path}`: each key may appear only once")


def loads_unique(data: bytes | str, source: str, error: type[Exception] = BadInputError) -> object:
    """``json.loads`` for small on-disk documents (the store marker) that refuses repeated keys."""
    reject_duplicate_keys(data, source, error)
    return json.loads(data)


__all__ = ["loads_unique", "reject_duplicate_keys"]
