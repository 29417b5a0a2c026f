"""The checked-in JSON Schemas are generated from the code, and the sync check catches every
real change to a document while ignoring how a msgspec release renders docstrings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

import msgspec
import pytest
from msgspec import Meta

from ftstore.documents import Envelope
from ftstore.documents.envelope import Strict
from ftstore.schemas import DOCUMENTS, render, stale

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def test_checked_in_schemas_match_the_code():
    assert stale(SCHEMAS) == []


def _envelope_like(change: dict[str, object] | None = None, drop: str | None = None) -> type:
    """A struct named Envelope with the real one's fields, one of them changed or dropped."""
    fields = []
    for f in msgspec.structs.fields(Envelope):
        if f.name == drop:
            continue
        typ = (change or {}).get(f.name, f.type)
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, typ, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, typ, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, typ))
    return msgspec.defstruct("Envelope", fields, bases=(Strict,), kw_only=True, module=Envelope.__module__)


def _check_with(tmp_path: Path, envelope: type) -> list[str]:
    for name in DOCUMENTS:
        (tmp_path / name).write_text((SCHEMAS / name).read_text())
    return stale(tmp_path, {**DOCUMENTS, "envelope.schema.json": envelope})


def test_a_faithful_copy_of_the_envelope_is_not_stale(tmp_path):
    # Shows the rebuilt struct below is the real one, so each change is what the check sees.
    assert render(_envelope_like()) == render(Envelope)
    assert _check_with(tmp_path, _envelope_like()) == []


@pytest.mark.parametrize(
    "envelope",
    [
        pytest.param(lambda: _envelope_like(drop="created_unix_ms"), id="field-removed"),
        pytest.param(lambda: _envelope_like({"size": str}), id="type-changed"),
        pytest.param(lambda: _envelope_like({"version": Annotated[int, Meta(ge=0)]}), id="constraint-changed"),
        pytest.param(lambda: _envelope_like({"raptorq": Optional[int]}), id="nested-type-changed"),
        pytest.param(lambda: _envelope_like({"schema_version": Literal[1, 2]}), id="enum-value-added"),
    ],
)
def test_a_changed_envelope_field_makes_the_check_fail(tmp_path, envelope):
    assert _check_with(tmp_path, envelope()) == ["envelope.schema.json is stale: run python -m ftstore.schemas"]


def test_a_field_that_becomes_required_makes_the_check_fail(tmp_path):
    fields = [(f.name, f.type) if f.name == "metadata" else
              (f.name, f.type, f.default) if f.default is not msgspec.NODEFAULT else
              (f.name, f.type, msgspec.field(default_factory=f.default_factory))
              if f.default_factory is not msgspec.NODEFAULT else (f.name, f.type)
              for f in msgspec.structs.fields(Envelope)]
    required = msgspec.defstruct("Envelope", fields, bases=(Strict,), kw_only=True, module=Envelope.__module__)
    assert "metadata" in msgspec.json.schema(required)["$defs"]["Envelope"]["required"]
    assert _check_with(tmp_path, required) == ["envelope.schema.json is stale: run python -m ftstore.schemas"]


def test_docstring_indentation_does_not_matter(tmp_path):
    # How msgspec 0.18 and 0.23 differ: the continuation lines of a multi-line docstring.
    for name in DOCUMENTS:
        doc = json.loads((SCHEMAS / name).read_text())
        text = json.dumps(doc, indent=2, sort_keys=True).replace("\\n", "\\n    ")
        (tmp_path / name).write_text(text)
    assert stale(tmp_path) == []


def test_missing_and_unexpected_files_are_named(tmp_path):
    (tmp_path / "extra.schema.json").write_text("{}")
    problems = stale(tmp_path)
    assert "envelope.schema.json is missing: run python -m ftstore.schemas" in problems
    assert problems[-1] == "extra.schema.json is not generated from any document"
