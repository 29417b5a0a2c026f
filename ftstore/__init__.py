"""ftstore keeps ML artifacts alive: typed envelopes, BLAKE3 hashes and RaptorQ repair
sidecars that rebuild damaged payloads, a scrubber, and drills that prove recovery.

Subpackages: ``envelopes`` (typed documents), ``codec`` (symbol hashes, RaptorQ repair,
sidecar format), ``storage`` (crash-safe file primitives), ``scrub`` (scrubber, drills),
``cli`` (the ``ftstore`` command). ``store`` holds the store layout and commit protocol,
``integrity`` checking and repairing one artifact, ``api`` the calls the CLI makes.

The public names below are imported on first use: codec worker processes import
``ftstore.codec`` and must not pay for numpy, the checkpoint manager and the API every
time one starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "LoadResult": "api",
    "heal": "api",
    "load": "api",
    "verify": "api",
    "BundleSpec": "checkpoints",
    "Checkpoint": "checkpoints",
    "CheckpointManager": "checkpoints",
    "BadInputError": "errors",
    "DamageError": "errors",
    "EnvelopeError": "errors",
    "FtstoreError": "errors",
    "NotFoundError": "errors",
    "StorageFullError": "errors",
    "UnrecoverableError": "errors",
    "Ref": "store",
    "Store": "store",
    "parse_ref": "store",
}

__all__ = [
    "BadInputError",
    "BundleSpec",
    "Checkpoint",
    "CheckpointManager",
    "DamageError",
    "EnvelopeError",
    "FtstoreError",
    "LoadResult",
    "NotFoundError",
    "Ref",
    "StorageFullError",
    "Store",
    "UnrecoverableError",
    "heal",
    "load",
    "parse_ref",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ftstore' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
    from .api import LoadResult, heal, load, verify
    from .checkpoints import BundleSpec, Checkpoint, CheckpointManager
    from .errors import (
        BadInputError,
        DamageError,
        EnvelopeError,
        FtstoreError,
        NotFoundError,
        StorageFullError,
        UnrecoverableError,
    )
    from .store import Ref, Store, parse_ref
