"""Putting a params dict back exactly as it was when a bundle load fails.

``load_bundle`` writes the archived params into a live dict (PtychoPINN's ``params.cfg``)
before the builders run, and a builder may change values in place: append to a list,
edit a nested dict, write into an array, reshape it or make it read-only. Restoring the
keys alone would leave those changes behind, so the contents of every mutable value are
copied first and written back into the same object: code that holds a reference to
``cfg['probe']`` still sees the very array, with its old values, shape and flags.

- lists, dicts, sets and bytearrays, their subclasses too (``OrderedDict``,
  ``defaultdict``): their contents; values nested in them come back as equal copies. One
  holding something that cannot be copied (a lock, an open file) gets its items back, the
  very objects, each of them put back by these same rules;
- numpy arrays: their values, shape, dtype and ``writeable`` flag;
- tuples: each item that is one of the above, in place (the tuple cannot change);
- anything else (tensors, user objects): the reference only.

A value that cannot be put back as it was (an array whose memory another array now
shapes, say) is named in a warning: the load is failing already, and its own error, not a
new one, is what the caller gets.

A load holds :func:`params_lock` from its snapshot until it has finished or put the dict
back: two threads loading into one dict would otherwise build from each other's params,
or put back a snapshot that held the other's.
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
from typing import Any

_CONTENTS, _ITEMS, _ARRAY, _TUPLE = "contents", "items", "array", "tuple"
Snapshot = tuple[Any, ...] | None

_lock = threading.RLock()


def _new_lock_in_child() -> None:
    """A child forked while another thread's load held the lock would wait for it forever."""
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def params_lock() -> threading.RLock:
    """The lock a bundle load holds from its params snapshot until it has finished or put
    the params back. One for every params dict (loads into two dicts, each from a builder
    of the other, in two threads, would otherwise wait for each other); re-entrant, so a
    builder may load a bundle itself, in its own thread (one that waits for a load in
    another thread would wait forever)."""
    return _lock


def _is_ndarray(v: Any) -> bool:
    """numpy is never imported here: an array is known by its class (or a base class)."""
    return any(c.__name__ == "ndarray" and c.__module__ == "numpy" for c in type(v).__mro__)


def _snapshot(v: Any, within: frozenset[int] = frozenset()) -> Snapshot:
    """What :func:`_put_back` needs to make ``v`` what it is now; None for a value whose
    reference alone is kept. ``within``: the containers ``v`` is inside (a container that
    holds itself is kept by reference there)."""
    if id(v) in within:
        return None
    try:
        if isinstance(v, (list, dict, set, bytearray)):
            try:
                return (_CONTENTS, copy.deepcopy(v))
            except Exception:  # noqa: BLE001 - it holds something that cannot be copied (a lock, say)
                return (_ITEMS, copy.copy(v), _item_snapshots(v, within | {id(v)}))
        if _is_ndarray(v):
            return (_ARRAY, v.copy(), v.shape, v.dtype, bool(v.flags.writeable))
        if isinstance(v, tuple):
            items = [_snapshot(x, within | {id(v)}) for x in v]
            return (_TUPLE, items) if any(s is not None for s in items) else None
    except Exception:  # noqa: BLE001 - a value that cannot even be copied shallowly: its reference only
        pass
    return None


def _item_snapshots(v: Any, within: frozenset[int]) -> list[Snapshot]:
    """The snapshot of each item of the list or dict ``v`` (in its order); sets hold only
    hashable items, which are put back as they are."""
    if isinstance(v, dict):
        return [_snapshot(x, within) for x in v.values()]
    if isinstance(v, list):
        return [_snapshot(x, within) for x in v]
    return []


def _put_back(v: Any, snap: tuple[Any, ...]) -> None:
    """Make ``v`` what ``snap`` recorded, in place; raises where it cannot."""
    kind = snap[0]
    if kind in (_CONTENTS, _ITEMS):
        if isinstance(v, (list, bytearray)):
            v[:] = snap[1]
        else:
            v.clear()
            v.update(snap[1])
        if kind == _ITEMS:
            for item, item_snap in zip(snap[1].values() if isinstance(snap[1], dict) else snap[1], snap[2]):
                if item_snap is not None:
                    _put_back(item, item_snap)
    elif kind == _ARRAY:
        _, values, shape, dtype, writeable = snap
        if (v.dtype, v.shape, bool(v.flags.writeable)) == (dtype, shape, writeable) and v.tobytes() == values.tobytes():
            return  # untouched (a read-only array over bytes could not even be made writable)
        if v.dtype != dtype:
            v.dtype = dtype
        if v.shape != shape:
            v.shape = shape
        if not v.flags.writeable:
            v.flags.writeable = True
        v[...] = values
        v.flags.writeable = writeable
    else:
        for item, item_snap in zip(v, snap[1]):
            if item_snap is not None:
                _put_back(item, item_snap)


class ParamsRollback:
    """The keys, order, objects and mutable contents of ``cfg`` now; :meth:`restore` puts
    them back."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.items = [(k, v, _snapshot(v)) for k, v in cfg.items()]

    def restore(self) -> None:
        self.cfg.clear()
        failed = []
        for k, v, snap in self.items:
            if snap is not None:
                try:
                    _put_back(v, snap)
                except Exception:  # noqa: BLE001 - said below; every other key is still restored
                    failed.append(k)
            self.cfg[k] = v
        if failed:
            warnings.warn(f"params: {', '.join(map(repr, failed))} could not be put back exactly as before the "
                          "failed load (changed in place in a way that cannot be undone)", stacklevel=3)
