"""Artifact names and references: ``NAME`` (the newest version) or ``NAME@VERSION``.

A name is what a store files an artifact under, so its grammar is strict: it must be a
safe single path segment and object-key part on every backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftstore.errors import BadInputError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_RE = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class Ref:
    """What a user asked for: a name, and a version or None for the newest."""

    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


@dataclass(frozen=True, order=True)
class ArtifactKey:
    """One committed artifact version: how the engine and every store backend address it."""

    name: str
    version: int

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def __str__(self) -> str:
        return self.ref


def is_name(text: str) -> bool:
    """True for a valid artifact name (``fullmatch``: a trailing newline is not allowed)."""
    return NAME_RE.fullmatch(text) is not None


def check_name(name: str) -> str:
    if not is_name(name):
        raise BadInputError(f"invalid artifact name {name!r}: use letters, digits, '.', '_' and '-' (max 128)")
    return name


MAX_VERSION = 2**63 - 1  # what an envelope's integer can hold


def version_of(text: str) -> int | None:
    """The version a folder or key segment names: ASCII digits, no leading zero, 1 to
    :data:`MAX_VERSION` (read without converting thousands of digits, which Python refuses)."""
    if text.isascii() and text.isdigit() and text[0] != "0" and len(text) <= 19 and int(text) <= MAX_VERSION:
        return int(text)
    return None


def parse_ref(text: str) -> Ref:
    name, sep, ver = text.partition("@")
    check_name(name)
    if not sep:
        return Ref(name)
    version = version_of(ver)
    if version is None:
        raise BadInputError(f"invalid version {ver[:40]!r} in {text[:80]!r}: versions are positive integers up to {MAX_VERSION}")
    return Ref(name, version)


__all__ = ["MAX_VERSION", "NAME_PATTERN", "NAME_RE", "ArtifactKey", "Ref", "check_name", "is_name", "parse_ref", "version_of"]
