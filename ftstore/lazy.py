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
(:func:`preload`), in the thread that opens it (open it before starting threads that fork
or save); only a CLI command, a short process that never forks like that, imports each
when its work first needs it (:func:`on_first_use_only`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Collection, Iterator

TYPE_CHECKING = False  # typing's, without importing typing at every codec worker's start (see ftstore.codec.tasks)
if TYPE_CHECKING:
    from typing import Any


def lazy_exports(package: str, exports: dict[str, str], namespace: dict[str, Any], base: str | None = None,
                 submodules: Collection[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package``, whose public ``name`` lives
    in ``<base>.<exports[name]>`` (``base`` is ``package`` unless given); a name once looked
    up is kept in ``namespace`` (the package's globals), so the next lookup is an ordinary
    one. A name in ``submodules`` is the package's submodule of that name, imported on first
    use (the import binds it on the package)."""
    base = base or package
    for module in [*(f"{base}.{m}" for m in exports.values()), *(f"{package}.{m}" for m in submodules)]:
        if module not in _deferred:  # several names come from one module: each Store walks it once
            _deferred.append(module)

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


@contextlib.contextmanager
def on_first_use_only() -> Iterator[None]:
    """Within this block, each module is imported when the work first needs it, never all
    at once: for a CLI command, a short process that never forks while a thread imports,
    and whose start-up every command pays. Outside it (a script that ran a command in-process
    and goes on), a ``Store`` preloads again."""
    global _preload
    before, _preload = _preload, False
    try:
        yield
    finally:
        _preload = before


def preload() -> None:
    """Import now, in this thread, every module the packages imported so far would import on
    first use, and those of the packages these import (unless within
    :func:`on_first_use_only`): the first ``Store`` does, so that no later save, load or
    repair imports one in a thread while the process forks."""
    if not _preload:
        return
    done = 0
    while done < len(_deferred):  # importing one may register a package's own (ftstore.api: bundles, scrub)
        importlib.import_module(_deferred[done])
        done += 1


__all__ = ["lazy_exports", "on_first_use_only", "preload"]
