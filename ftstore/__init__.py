"""ftstore keeps ML artifacts alive: typed envelopes, BLAKE3 hashes and RaptorQ repair
sidecars that rebuild damaged payloads, a scrubber, and drills that prove recovery.

Subpackages: ``envelopes`` (typed documents), ``codec`` (symbol hashes, RaptorQ repair,
sidecar format), ``storage`` (crash-safe file primitives), ``scrub`` (scrubber, drills),
``cli`` (the ``ftstore`` command). ``store`` holds the store layout and commit protocol,
``integrity`` checking and repairing one artifact, ``api`` the calls the CLI makes.
"""

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

__version__ = "0.1.0"

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
