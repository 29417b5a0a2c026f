"""Package attributes that are imported on first use (PEP 562).

``ftstore`` and ``ftstore.codec`` export names from their submodules without importing
them: a codec worker process imports both packages on its way to the encoder, and must not
pay for the API, the checkpoint manager, the sidecar builder or msgspec each time one
starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package``, whose public ``name`` lives
    in ``package.<exports[name]>``; a name once looked up is kept in ``namespace`` (the
    package's globals), so the next lookup is an ordinary one."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted([*namespace, *exports])

    return getattr_, dir_


__all__ = ["lazy_exports"]
