"""The published JSON Schemas of every on-disk document, generated from the typed structs.

``python -m ftstore.schemas`` rewrites ``schemas/``; a test fails when the checked-in files
and the code drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from .codec.sidecar import SidecarHeader
from .backends.documents import BundleManifest, ParamsSnapshot
from .envelopes import Envelope
from .reports import BenchmarkBaseline, ConformanceSnapshot
from .scrub.drill import DrillReport
from .scrub.report import ScrubReport

DOCUMENTS = {
    "envelope.schema.json": Envelope,
    "sidecar-header.schema.json": SidecarHeader,
    "scrub-report.schema.json": ScrubReport,
    "drill-report.schema.json": DrillReport,
    "bundle-manifest.schema.json": BundleManifest,
    "params-snapshot.schema.json": ParamsSnapshot,
    "conformance-snapshot.schema.json": ConformanceSnapshot,
    "benchmark-baseline.schema.json": BenchmarkBaseline,
}


def render(struct: type) -> str:
    schema = msgspec.json.schema(struct)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_all(directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    for name, struct in DOCUMENTS.items():
        (directory / name).write_text(render(struct))


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas"))
