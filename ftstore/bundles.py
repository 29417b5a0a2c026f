"""Typed payload hooks for ``save --type`` and ``show``: validation of typed artifact types
and a short description of their content. Plain files pass through untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def validate_typed_payload(path: Path, artifact_type: str) -> None:
    """Raise :class:`~ftstore.errors.BadInputError` if a typed payload is malformed."""
    return None


def describe_payload(path: Path, artifact_type: str) -> Any:
    return None
