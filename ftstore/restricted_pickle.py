"""Reading legacy ``.dill`` / pickle files that may be hostile.

Unpickling can run arbitrary code, so only plain data is admitted: dict, list, tuple,
set, str, bytes, numbers, bool, None, and numpy arrays and scalars of non-object dtypes.
Any other global the stream asks for is refused with an error that names it, before it is
imported or called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

from .errors import BadInputError

_ALLOWED = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}  # fmt: skip


class UnsafePickleError(BadInputError):
    """A pickle stream that asks for something other than plain data."""


def _dill_create_array(f: Any, args: Any, state: Any, npdict: Any = None) -> np.ndarray:
    """What dill emits for a numpy array, admitted only with numpy's own reconstructor."""
    if getattr(f, "__name__", None) != "_reconstruct" or not getattr(f, "__module__", "").startswith("numpy"):
        raise UnsafePickleError("dill array with an unexpected constructor")
    if npdict:
        raise UnsafePickleError("dill array carrying instance attributes")
    array = f(*args)
    array.__setstate__(state)
    return array


class _Restricted(pickle._Unpickler):  # type: ignore[name-defined]
    """The pure-Python unpickler: its memo is a dict, so a memo index in the stream cannot
    make it allocate (the C unpickler sizes an array by the largest index: a 222-byte
    stream asked it for gigabytes; found by fuzz/fuzz_parsers.py)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("dill._dill", "_create_array"):
            return _dill_create_array
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "numpy.dtypes" and name.endswith("DType") and name != "ObjectDType":
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to unpickle {module}.{name}: only plain data is allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def loads_plain(data: bytes, source: str) -> Any:
    """Unpickle ``data`` admitting plain data only; the result is checked again after."""
    try:
        obj = _Restricted(io.BytesIO(data)).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{source}: {e}") from None
    except MemoryError:
        raise  # never mistake resource exhaustion for a bad file: that would be a bug here
    except Exception as e:  # a malformed stream raises anything from the pickle machinery
        raise BadInputError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None
    _check_plain(obj, source)
    return obj


def _check_plain(obj: Any, source: str, depth: int = 0) -> None:
    if depth > 64:
        raise BadInputError(f"{source}: data nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, np.generic)):
        if isinstance(obj, np.generic) and obj.dtype == object:
            raise UnsafePickleError(f"{source}: object-dtype numpy scalar")
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise UnsafePickleError(f"{source}: object-dtype numpy array")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, source, depth + 1)
            _check_plain(v, source, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            _check_plain(v, source, depth + 1)
        return
    raise UnsafePickleError(f"{source}: {type(obj).__name__} is not plain data")
