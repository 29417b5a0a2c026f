"""Where artifacts are kept: one small interface, one implementation per medium.

- ``backend`` — :class:`StoreBackend` (list, read and write leaves, stage -> commit,
  delete, orphans) and :class:`Capabilities`, which callers ask instead of a class.
- ``local`` — a directory (commit by rename, links for ``save --move``).
- ``s3`` — S3-compatible object storage (commit by conditional writes).

:func:`open_store` picks the implementation by URL scheme; a scheme's module is imported
only when a store of that kind is opened (S3 needs boto3).
"""

from __future__ import annotations

import importlib
import os

from ftstore.errors import BadInputError
from ftstore.stores.backend import DEFAULT_STORE, Capabilities, Orphan, Staging, StoreBackend
from ftstore.stores.local import LocalStore, local_store_holding

SCHEMES: dict[str, str] = {"s3": "ftstore.stores.s3:S3Store"}


def open_store(location: str | os.PathLike | None = None, create: bool = False) -> StoreBackend:
    """The store at ``location`` (``$FTSTORE_STORE`` or ``./ftstore-store`` when None): a
    ``scheme://`` URL with a registered scheme, or a local directory."""
    if location is not None and not os.fspath(location):
        raise BadInputError("the store location is empty (leave it out for $FTSTORE_STORE or ./ftstore-store)")
    text = str(location or os.environ.get("FTSTORE_STORE") or DEFAULT_STORE)
    scheme, sep, _ = text.partition("://")
    if not sep:
        return LocalStore.open(text, create=create)
    target = SCHEMES.get(scheme)
    if target is None:
        raise BadInputError(f"{text}: unknown store scheme {scheme!r} (known: {', '.join(sorted(SCHEMES))}, or a directory)")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls).open(text, create=create)


__all__ = ["SCHEMES", "Capabilities", "LocalStore", "Orphan", "Staging", "StoreBackend", "local_store_holding", "open_store"]
