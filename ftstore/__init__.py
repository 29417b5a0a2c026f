"""ftstore keeps ML artifacts alive: typed envelopes, BLAKE3 hashes and RaptorQ repair
sidecars that rebuild damaged payloads, a scrubber, and drills that prove recovery.

Layers, each importing only the ones below it (an import-linter contract checks this):

    cli, integrations     the ``ftstore`` command; Lightning and Keras plug-ins
    training              the checkpoint manager
    api, schemas          the public calls; the published JSON Schemas
    bundles               TensorFlow / PyTorch model bundles, legacy import
    scrub                 scrubber, drills, reports
    engine                save, check/repair, load, copy over any store; ``Store``
    stores, codec, payloads  store backends; RaptorQ sidecars; typed payload formats
    tempdirs              private temporary folders that do not outlive a killed process
    documents, durable    envelopes, proofs, names; crash-safe file primitives
    fileio                regular files only: opened without following links, written
    errors, hashing, params, lazy, interpreter
    forks                 whether this process is a forked child

The public names below are imported on first use: codec worker processes import
``ftstore.codec`` and must not pay for numpy, the checkpoint manager and the API every
time one starts.
"""

from __future__ import annotations

from ftstore.lazy import lazy_exports

TYPE_CHECKING = False  # typing's, without importing typing at every codec worker's start (see ftstore.codec.tasks)

__version__ = "0.1.0"

_EXPORTS = {
    "ArtifactKey": "documents",
    "LoadResult": "api",
    "Store": "api",
    "load": "api",
    "open_store": "api",
    "parse_ref": "documents",
    "Ref": "documents",
    "save": "api",
    "verify": "api",
    "BundleSpec": "training.checkpoints",
    "Checkpoint": "training.checkpoints",
    "CheckpointManager": "training.checkpoints",
    "BadInputError": "errors",
    "DamageError": "errors",
    "EnvelopeError": "errors",
    "NewerFormatError": "errors",
    "FtstoreError": "errors",
    "NotFoundError": "errors",
    "StorageError": "errors",
    "StorageFullError": "errors",
    "StoreUnreachableError": "errors",
    "UnrecoverableError": "errors",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from ftstore.api import LoadResult, Store, load, open_store, save, verify
    from ftstore.documents import ArtifactKey, Ref, parse_ref
    from ftstore.errors import (
        BadInputError,
        DamageError,
        EnvelopeError,
        FtstoreError,
        NewerFormatError,
        NotFoundError,
        StorageError,
        StorageFullError,
        StoreUnreachableError,
        UnrecoverableError,
    )
    from ftstore.training.checkpoints import BundleSpec, Checkpoint, CheckpointManager
