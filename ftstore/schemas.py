"""The published JSON Schemas of every on-disk document, generated from the typed structs.

``python -m ftstore.schemas`` rewrites ``schemas/``; :func:`stale` says which checked-in
files no longer match the code, and a test fails when it names any.

What a schema says must depend on the structs alone, not on how a msgspec release renders
them: descriptions come from docstrings, which releases have indented differently, so
every ``description`` is normalised (``inspect.cleandoc``) and the documents are compared
as parsed JSON, keys sorted. A real change (a field, a type, a constraint, a required
flag, an enum value) still changes the rendered schema.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ftstore.codec.sidecar import SidecarHeader, SidecarHeaderV1
from ftstore.payloads.bundle_format import BundleManifest, ParamsSnapshot
from ftstore.documents import Envelope
from ftstore.payloads.reports import BenchmarkBaseline, ConformanceSnapshot
from ftstore.scrub.report import DrillReport, ScrubReport

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

DOCUMENTS: dict[str, type] = {
    "envelope.schema.json": Envelope,
    "sidecar-header.schema.json": SidecarHeader,
    "sidecar-header-v1.schema.json": SidecarHeaderV1,
    "scrub-report.schema.json": ScrubReport,
    "drill-report.schema.json": DrillReport,
    "bundle-manifest.schema.json": BundleManifest,
    "params-snapshot.schema.json": ParamsSnapshot,
    "conformance-snapshot.schema.json": ConformanceSnapshot,
    "benchmark-baseline.schema.json": BenchmarkBaseline,
}


def _normalised(node: Any) -> Any:
    """``node`` with every ``description`` string cleaned of docstring indentation."""
    if isinstance(node, Mapping):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _normalised(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_normalised(v) for v in node]
    return node


def schema_of(struct: type) -> dict[str, Any]:
    """The JSON Schema of ``struct`` as a plain dict, descriptions normalised."""
    return {"$schema": JSON_SCHEMA_DIALECT, **_normalised(msgspec.json.schema(struct))}


def render(struct: type) -> str:
    return json.dumps(schema_of(struct), indent=2, sort_keys=True) + "\n"


def stale(directory: Path, documents: Mapping[str, type] = DOCUMENTS) -> list[str]:
    """Sentences naming every schema file in ``directory`` that is missing, unexpected,
    unreadable, or different from what the code generates; empty when all match."""
    problems = []
    for name, struct in documents.items():
        path = directory / name
        try:
            on_disk = _normalised(json.loads(path.read_text()))
        except FileNotFoundError:
            problems.append(f"{name} is missing: run python -m ftstore.schemas")
            continue
        except ValueError as e:
            problems.append(f"{name} is not JSON ({e}): run python -m ftstore.schemas")
            continue
        if on_disk != schema_of(struct):
            problems.append(f"{name} is stale: run python -m ftstore.schemas")
    problems += [f"{p.name} is not generated from any document" for p in sorted(directory.glob("*.json"))
                 if p.name not in documents]
    return problems


def write_all(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    for name, struct in DOCUMENTS.items():
        (directory / name).write_text(render(struct))


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas"))
