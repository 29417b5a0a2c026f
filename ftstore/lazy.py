"""Package attributes that are imported on first use (PEP 562).

``ftstore`` and ``ftstore.codec`` export names from their submodules without importing
them: a codec worker process imports both packages on its way to the encoder, and must not
pay for the API, the checkpoint manager, the sidecar builder or msgspec each time one
starts. ``ftstore.bundles``, ``ftstore.scrub`` and ``ftstore.payloads`` do the same, and
``ftstore.engine`` imports its save modules on first use: a CLI command or a training
script pays at start-up only for the work it does (a verify never imports the encoder,
its worker pool, zipfile or pickle), and the layers stay visible at the top of each module
(``from ftstore import engine``, then ``engine.save.save(...)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any], base: str | None = None,
                 submodules: Collection[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package``, whose public ``name`` lives
    in ``<base>.<exports[name]>`` (``base`` is ``package`` unless given); a name once looked
    up is kept in ``namespace`` (the package's globals), so the next lookup is an ordinary
    one. A name in ``submodules`` is the package's submodule of that name, imported on first
    use (the import binds it on the package)."""
    base = base or package

    def getattr_(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{base}.{module}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *exports, *submodules})

    return getattr_, dir_


__all__ = ["lazy_exports"]
