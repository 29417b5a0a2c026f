"""The JSON documents of typed payloads (a bundle's manifest and params snapshot, a
conformance snapshot, a benchmark baseline), read strictly: size-capped, decoded into their
type, and refused with a repeated key. A module of its own so that reading a report does
not import the bundle format and its zip reader."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from ftstore.documents.strict_json import DECODE_ERRORS, reject_duplicate_keys
from ftstore.errors import BadInputError

MAX_DOC_BYTES = 16 * 1024 * 1024

T = TypeVar("T")


def decode_doc(data: bytes, kind: type[T], source: str) -> T:
    if len(data) > MAX_DOC_BYTES:
        raise BadInputError(f"{source}: {len(data)} bytes, over the {MAX_DOC_BYTES} byte limit")
    try:
        doc = msgspec.json.decode(data, type=kind)
    except DECODE_ERRORS as e:
        raise BadInputError(f"{source}: invalid {kind.__name__}: {e}") from None
    reject_duplicate_keys(data, source)
    return doc


__all__ = ["MAX_DOC_BYTES", "decode_doc"]
