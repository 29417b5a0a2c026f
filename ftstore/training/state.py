"""Training state as a checkpoint payload: nested dicts, lists and tuples of torch tensors,
numpy arrays, numbers, strings, bytes and None (a model's and an optimizer's
``state_dict``, the step, the RNG state...).

Written with ``torch.save``, whose zip format is streamed front to back, so it goes straight
into the store while it is hashed (:meth:`~ftstore.engine.store.Store.save_written`); a
tensor on a GPU is copied to host once, storage by storage, as it is written. Read back with
``torch.load(weights_only=True)``, which builds tensors, containers and plain values and
calls nothing else; numpy arrays and scalars of plain dtypes are let in by name. Anything
``weights_only`` could not read back (an object array, a class instance, a function) is
refused when saving, with the key that holds it, rather than found out at restore time.
"""

from __future__ import annotations

import codecs
import collections
import importlib.util
import io
import pickle
import types
from typing import Any, BinaryIO

from ftstore.errors import BadInputError

FORMAT_KEY = "ftstore.format"
TORCH_STATE = "torch-state"
MAX_DEPTH = 64

_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_KEYS = (str, int, float, bool, type(None))
# numpy dtypes whose arrays torch's weights_only unpickler may rebuild (no objects inside)
_NUMPY_KINDS = set("biufcSUmM")


def check_state(state: Any) -> None:
    """Refuse, in one line naming the key, anything that is not a checkpoint state."""
    if not isinstance(state, (dict, list, tuple)):
        raise BadInputError(f"a checkpoint state is a dict, list or tuple, not a {type(state).__name__}")
    import numpy as np

    _Walk(_tensor_types(), np).check(state, "state", 0)


def _tensor_types() -> tuple[type, ...]:
    import torch

    # and what torch.load(weights_only=True) reads besides: shapes (ints only), dtypes, devices
    return (torch.Tensor, torch.nn.Parameter, torch.Size, torch.dtype, torch.device)


class _Walk:
    """One walk of a state. ``tensors`` and ``np`` (numpy) are looked up once, not at every
    element of a large state. A container met again through another reference is walked
    again only if met deeper than it was walked before (``done``: the depth it was walked
    at): a state that shares sub-dicts would otherwise cost a walk per path, 2**depth of
    them, and now costs at most one per depth; met deeper, its nesting might pass the
    limit from there. One that holds itself is not done while it is walked, so a cycle
    still ends at the depth limit."""

    def __init__(self, tensors: tuple[type, ...], np: types.ModuleType):
        self.tensors, self.np = tensors, np
        self.done: dict[int, int] = {}

    def _seen(self, x: Any, depth: int) -> bool:
        return self.done.get(id(x), -1) >= depth

    def check(self, x: Any, where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise BadInputError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        t = type(x)
        if t in _PLAIN:
            return
        if t in self.tensors:
            attributes = getattr(x, "__dict__", None)
            if attributes and not self._seen(x, depth):  # torch.save writes a tensor's attributes too
                for name, v in attributes.items():
                    self.check(v, f"{where}.{name}", depth + 1)
                self.done[id(x)] = depth
            return
        if t is self.np.ndarray or isinstance(x, self.np.generic):
            if x.dtype.kind not in _NUMPY_KINDS:
                raise BadInputError(f"{where}: a numpy {x.dtype} value cannot be checkpointed (it would hold objects)")
            return
        if t in (dict, collections.OrderedDict, list, tuple, set):
            if self._seen(x, depth):
                return
            if t in (dict, collections.OrderedDict):
                for k, v in x.items():
                    if type(k) not in _KEYS:
                        raise BadInputError(f"{where}: key {k!r} is a {type(k).__name__}; keys are strings or numbers")
                    self.check(v, f"{where}[{k!r}]", depth + 1)
            else:
                for i, v in enumerate(x):
                    self.check(v, f"{where}[{i}]", depth + 1)
            self.done[id(x)] = depth
            return
        raise BadInputError(
            f"{where}: a {t.__module__}.{t.__qualname__} cannot be checkpointed as state "
            "(dicts, lists, tuples, sets, tensors, torch shapes, dtypes and devices, numpy arrays, numbers, strings "
            "and None can)"
        )


def _stock_dispatch() -> dict[Any, Any]:
    """The standard library's own table of savers, whatever has been done to it since.

    The table is shared and may be changed in place: importing dill (which PtychoPINN does)
    replaces the savers of dicts, functions and types with dill's and adds its own. A state
    pickled with those names dill's functions, which no ``weights_only`` load accepts, so a
    checkpoint saved after ``import dill`` could not be restored. The table as pickle's source
    defines it is read from a private execution of that source, and each saver taken from
    the real ``pickle._Pickler`` by name."""
    spec = importlib.util.find_spec("pickle")
    if spec is None or spec.loader is None:  # no source to read: the table as it stands
        return dict(pickle._Pickler.dispatch)
    stock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stock)
    return {t: getattr(pickle._Pickler, f.__name__) for t, f in stock._Pickler.dispatch.items()}


class _Pickler(pickle._Pickler):
    """The pickler ``torch.save`` builds on, but for one value: an empty ``bytes`` (an empty
    bytes object, or the data of an empty numpy array) is written as protocol 2 writes every
    other one, ``_codecs.encode("", "latin1")``, which ``weights_only`` reads, rather than as
    a call of ``bytes()``, which it refuses. Python's C pickler cannot be told this (it never
    asks about ``bytes``); this one only pickles the structure, tensors go in by reference."""

    dispatch = _stock_dispatch()

    def _save_bytes(self, obj: bytes) -> None:
        if self.proto < 3 and not obj:
            self.save_reduce(codecs.encode, ("", "latin1"), obj=obj)
        else:
            pickle._Pickler.save_bytes(self, obj)

    dispatch[bytes] = _save_bytes


_PICKLE_MODULE = types.SimpleNamespace(Pickler=_Pickler, __name__="ftstore.training.state")


def write_state(state: Any, f: BinaryIO) -> None:
    """``torch.save`` into ``f``, which is written front to back and never sought."""
    import torch

    torch.save(state, f, pickle_module=_PICKLE_MODULE)


def read_state(f: BinaryIO | io.BytesIO, map_location: Any = None) -> Any:
    """Load a state written by :func:`write_state` without running any code from it."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(f, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(f"not a checkpoint state ftstore can load without running code: {first}") from None


def _numpy_globals() -> list[Any]:
    """What a pickled numpy array or scalar of a plain dtype names: the array and dtype
    classes and numpy's two rebuild functions, which only make arrays from bytes."""
    import numpy as np
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")
              and n not in ("ObjectDType", "VoidDType", "StringDType")]
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar, *dtypes]


__all__ = ["FORMAT_KEY", "TORCH_STATE", "check_state", "read_state", "write_state"]
