"""The errors ftstore raises on purpose.

Every failure a user can cause or meet (bad input, damage, missing artifacts) is one of
these; the CLI maps them to exit codes and one-line messages. Anything else escaping the
library is a bug.
"""

from __future__ import annotations


class FtstoreError(Exception):
    """Base of ftstore's documented errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class BadInputError(FtstoreError, ValueError):
    """Input that cannot be used: a malformed document, an invalid name, a missing file."""

    exit_code = 2


class EnvelopeError(BadInputError):
    """An envelope (or another typed document) that fails strict parsing."""


class NewerFormatError(BadInputError):
    """A document written by a newer ftstore, in a format version this one does not know.
    It is neither used nor taken for damage: nothing here rebuilds or rewrites it, since
    that would throw away what the newer release recorded (a team upgrading one machine
    at a time shares its stores with older releases)."""


class NotFoundError(FtstoreError, LookupError):
    """An unknown store, artifact name or version."""

    exit_code = 2


class MissingDependencyError(FtstoreError, RuntimeError):
    """An optional library the request needs is not installed (TensorFlow, PyTorch, boto3)."""

    exit_code = 2


class DamageError(FtstoreError):
    """Stored bytes do not match their recorded hashes."""

    exit_code = 1


class UnrecoverableError(DamageError):
    """Damage beyond what the repair symbols can undo. Never accompanied by wrong bytes."""


class StorageFullError(FtstoreError, OSError):
    """The filesystem ran out of space; the store was left as it was."""

    exit_code = 1


class StorageError(FtstoreError):
    """The store could not be used: a server refused (permissions, credentials, a missing
    bucket), could not be reached, or broke off mid-transfer; or a version changed under an
    operation on it (deleted or saved anew meanwhile). Nothing was committed."""

    exit_code = 2


class StoreUnreachableError(StorageError):
    """The object store failed the request itself (not reachable, broke off mid-transfer,
    refused it). It says nothing about the data: a scrub stops instead of judging a version
    by it."""


class WorkerError(FtstoreError):
    """A codec worker process died (killed, out of memory); the operation changed nothing."""

    exit_code = 1
