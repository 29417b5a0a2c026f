"""Typed payloads: what ``save --type`` validates and what ``show`` describes.

Plain files pass through untouched; typed artifact types are parsed strictly before they
are stored, so a malformed bundle or snapshot never becomes an artifact.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import msgspec

from ftstore.errors import BadInputError
from ftstore.payloads.archive import ZIP_ERRORS
from ftstore.payloads.bundle_format import read_bundle
from ftstore.payloads.reports import parse_typed

TYPED_DOC_LIMIT = 16 * 1024 * 1024


def detect_type(path: Path) -> str:
    """``model_bundle`` for an ftstore bundle zip, else ``file``."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("manifest.json") as manifest:
            if b'"ftstore-bundle"' in manifest.read(4096):  # never inflates more than this
                return "model_bundle"
    except (OSError, *ZIP_ERRORS):  # not a zip, no manifest, or one that cannot be read: a file
        pass
    return "file"


def validate_typed_payload(path: Path, artifact_type: str) -> None:
    """Raise :class:`BadInputError` if a typed payload is malformed."""
    if artifact_type == "model_bundle":
        _, _, z = read_bundle(path)
        z.__exit__(None, None, None)
    elif artifact_type in ("conformance_snapshot", "benchmark_baseline"):
        parse_typed(read_capped(path, TYPED_DOC_LIMIT), artifact_type, str(path))


def read_capped(path: Path, limit: int) -> bytes:
    """A typed document's bytes, refused past ``limit`` without reading further."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadInputError(f"{path}: over the {limit} byte limit for a typed document")
    return data


def _jsonable(v: Any) -> Any:
    import numpy as np
    if isinstance(v, (np.ndarray, np.generic)):
        a = np.asarray(v)
        if a.ndim:
            return {"array": {"dtype": a.dtype.str, "shape": list(a.shape)}}
        item = a.item()  # a Python number, or (a long double, say) numpy's own scalar again
        return {"scalar": {"dtype": a.dtype.str, "value": str(a)}} if isinstance(item, np.generic) else _jsonable(item)
    if isinstance(v, complex):
        return {"complex": [v.real, v.imag]}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def describe_payload(path: Path, artifact_type: str) -> Any:
    """A JSON-able summary of a typed payload's content (None for plain files)."""
    if artifact_type in ("conformance_snapshot", "benchmark_baseline"):
        try:
            return msgspec.to_builtins(parse_typed(read_capped(path, TYPED_DOC_LIMIT), artifact_type, str(path)))
        except (BadInputError, OSError) as e:
            return {"error": str(e)}
    if artifact_type != "model_bundle":
        return None
    try:
        manifest, params, z = read_bundle(path)
    except (BadInputError, OSError) as e:
        return {"error": str(e)}
    z.__exit__(None, None, None)
    return {"manifest": msgspec.to_builtins(manifest), "params": _jsonable(params)}
