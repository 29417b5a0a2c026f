"""Typed payloads: formats ftstore parses strictly before storing them, and describes.

- ``bundle_format`` — the model bundle zip: manifest, typed params snapshot, reading and
  writing (no framework needed).
- ``archive`` — a zip reader with limits, for untrusted archives.
- ``reports`` — conformance snapshots and benchmark baselines, and baseline comparison.
- ``typed`` — detect, validate and describe a payload by artifact type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftstore.lazy import lazy_exports

_EXPORTS = {
    "TYPED_DOC_LIMIT": "typed",
    "describe_payload": "typed",
    "detect_type": "typed",
    "read_capped": "typed",
    "validate_typed_payload": "typed",
    "BenchmarkBaseline": "reports",
    "MetricComparison": "reports",
    "compare": "reports",
    "parse_typed": "reports",
}

__all__ = sorted(_EXPORTS)
# Imported on first use (see ftstore.lazy): the bundle format and the typed payloads bring in zipfile.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), submodules=(
    "archive", "bundle_format", "reports", "strict_docs", "typed"))


if TYPE_CHECKING:
    from ftstore.payloads.reports import BenchmarkBaseline, MetricComparison, compare, parse_typed
    from ftstore.payloads.typed import (TYPED_DOC_LIMIT, describe_payload, detect_type, read_capped,
                                        validate_typed_payload)
