"""Putting a params dict back exactly as it was when a bundle load fails.

``load_bundle`` writes the archived params into a live dict (PtychoPINN's ``params.cfg``)
before the builders run, and a builder may change values in place: append to a list,
edit a nested dict, write into an array. Restoring the keys alone would leave those
changes behind, so the contents of every mutable plain value (list, dict, set,
bytearray, numpy array) are copied first and written back into the same object: code
that holds a reference to ``cfg['probe']`` still sees the very array, with its old values.
Other values (tensors, user objects) get their reference back only. Values nested in a
container come back as equal copies.
"""

from __future__ import annotations

import copy
from typing import Any

_OPAQUE = object()


def _is_ndarray(v: Any) -> bool:
    return type(v).__name__ == "ndarray" and type(v).__module__ == "numpy"  # numpy is never imported here


def _contents(v: Any) -> Any:
    try:
        if type(v) in (list, dict, set, bytearray):
            return copy.deepcopy(v)
        if _is_ndarray(v):
            return v.copy()
    except Exception:  # a value that cannot be copied (holds a lock, say): its reference only
        pass
    return _OPAQUE


def _put_back(v: Any, contents: Any) -> None:
    if type(v) in (list, bytearray):
        v[:] = contents
    elif type(v) in (dict, set):
        v.clear()
        v.update(contents)
    elif v.shape == contents.shape and v.dtype == contents.dtype and v.flags.writeable:
        v[...] = contents


class ParamsRollback:
    """The keys, order, objects and mutable contents of ``cfg`` now; :meth:`restore` puts
    them back."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.items = [(k, v, _contents(v)) for k, v in cfg.items()]

    def restore(self) -> None:
        self.cfg.clear()
        for k, v, contents in self.items:
            if contents is not _OPAQUE:
                _put_back(v, contents)
            self.cfg[k] = v
