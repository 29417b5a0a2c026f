"""Whether this process was forked from one that had put ftstore to use.

A training process forks (a fork-based DataLoader worker, ``multiprocessing`` with the fork
start method). The child must know it is one from the fork on, whatever ftstore had
imported by then: it does its codec work in-process instead of starting a worker pool of
its own (one per child), and hashes on one thread (it inherits BLAKE3's thread pool without
its threads). The hook is registered with :mod:`ftstore.hashing`, which every use of
ftstore imports (the API, the CLI, the engine, the checkpoint manager); a flag kept by the
worker pool's module was missed by a child forked before the pool's first use. A process
that only imported the bare ``ftstore`` package (a launcher) is not counted: a trainer it
forks keeps its parallel encoding, as a spawned one does.

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
