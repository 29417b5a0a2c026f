"""Whether this process was forked from one that had imported ftstore.

A training process forks (a fork-based DataLoader worker, ``multiprocessing`` with the fork
start method). The child must know it is one from the fork on, whatever ftstore had
imported by then: it does its codec work in-process instead of starting a worker pool of
its own (one per child), and hashes on one thread (it inherits BLAKE3's thread pool without
its threads). A hook registered here, imported with the first ftstore module, tells it;
hooks registered by modules imported later would miss a fork made before them.

(What a fork must not catch half done, an import made on first use, is kept from it by
importing those at the first :class:`~ftstore.engine.store.Store`: see
:func:`ftstore.lazy.preload`.)
"""

from __future__ import annotations

import os

_forked = False


def in_forked_child() -> bool:
    return _forked


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


__all__ = ["in_forked_child"]
