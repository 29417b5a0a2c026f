"""Package attributes that are imported on first use (PEP 562).

``ftstore`` and ``ftstore.codec`` export names from their submodules without importing
them: a codec worker process imports both packages on its way to the encoder, and must not
pay for the API, the checkpoint manager, the sidecar builder or msgspec each time one
starts. ``ftstore.bundles``, ``ftstore.scrub`` and ``ftstore.payloads`` do the same, and
``ftstore.engine`` imports its save modules on first use: a CLI command or a training
script pays at start-up only for the work it does (a verify never imports the encoder,
its worker pool, zipfile or pickle), and the layers stay visible at the top of each module
(``from ftstore import engine``, then ``engine.save.save(...)``).

An import made on first use is made in whichever thread first needs it, and a process that
forks while another thread is in the middle of one leaves the child waiting forever on that
module (Python's lock on a module being imported belongs to a thread the child does not
have). So a library process imports them all at its first :class:`~ftstore.engine.store.Store`
(:func:`preload`), in the thread that opens it; only a process that has said it never forks
like that (:func:`on_first_use_only`: a CLI command, the background protector) imports each
when its work first needs it.
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
    _deferred.extend([*(f"{base}.{m}" for m in exports.values()), *(f"{package}.{m}" for m in submodules)])

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


_deferred: list[str] = []  # every module a package here imports on first use
_preload = True


def on_first_use_only() -> None:
    """Import each module when the work first needs it, from now on, never all at once: for
    a short process that never forks while another of its threads imports (a CLI command,
    whose start-up every command pays)."""
    global _preload
    _preload = False


def preload() -> None:
    """Import now, in this thread, every module the packages imported so far would import on
    first use (unless :func:`on_first_use_only` was called): the first ``Store`` does, so
    that no later save, load or repair imports one in a thread while the process forks."""
    if _preload:
        for module in list(_deferred):
            importlib.import_module(module)


__all__ = ["lazy_exports", "on_first_use_only", "preload"]
