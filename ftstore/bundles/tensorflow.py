"""TensorFlow / Keras weights: one HDF5 dataset per variable, in ``model.weights`` order.

Keras names variables after auto-numbered layers (``dense_3``), which differ between two
builds of the same architecture, so weights are matched by position, and count, shape and
dtype must all agree before any variable is assigned: a mismatch is an error, never a model
with random weights.

HDF5 has no bfloat16, float8 or int4: h5py would store such an array as opaque bytes
(``|V2``) that read back as no number type at all. Those are written as the unsigned
integers of their width, with the type's name in the dataset's ``dtype`` attribute, and
read back as the built model's own type (whose name the manifest and the attribute must
both give).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ftstore.errors import BadInputError, MissingDependencyError
from ftstore.payloads.bundle_format import ModelEntry, TensorInfo

NAME = "tensorflow"
WEIGHTS_FORMAT = "ftstore-h5"
SUFFIX = ".h5"
DTYPE_ATTR = "dtype"
"""Set on a dataset holding a type HDF5 lacks, as unsigned integers of its width: the type's name."""


def require() -> Any:
    try:
        import h5py  # noqa: F401
        import keras
    except ImportError:
        raise MissingDependencyError(
            "backend 'tensorflow' was selected but TensorFlow/Keras is not installed: "
            "pip install 'ftstore[tensorflow]'  (or: pip install tensorflow-cpu h5py)"
        ) from None
    return keras


def tensor_index(model: Any) -> list[TensorInfo]:
    return [TensorInfo(name=v.path, dtype=str(v.dtype), shape=[int(d) for d in v.shape]) for v in model.weights]


def write_weights(model: Any, path: Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "w") as f:
        for i, v in enumerate(model.weights):
            arr = np.asarray(v)
            opaque = arr.dtype.kind == "V"  # bfloat16, float8, int4 (ml_dtypes): not HDF5 types
            ds = f.create_dataset(f"w/{i:06d}", data=arr.view(f"u{arr.dtype.itemsize}") if opaque else arr)
            ds.attrs["path"] = v.path
            if opaque:
                ds.attrs[DTYPE_ATTR] = arr.dtype.name


def check_fits(model: Any, entry: ModelEntry) -> None:
    have = tensor_index(model)
    if len(have) != len(entry.tensors):
        raise BadInputError(
            f"model {entry.name!r}: the built model has {len(have)} weight tensors, the bundle {len(entry.tensors)}"
        )
    for i, (h, w) in enumerate(zip(have, entry.tensors)):
        if h.shape != w.shape or h.dtype != w.dtype:
            raise BadInputError(
                f"model {entry.name!r}: weight {i} ({h.name}) is {h.dtype}{h.shape} in the built model "
                f"but {w.dtype}{w.shape} in the bundle ({w.name})"
            )


def _unreadable(entry: ModelEntry, e: OSError) -> BadInputError:
    return BadInputError(f"model {entry.name!r}: the weights are not a readable HDF5 file ({e})")


def load_weights(model: Any, path: Path, entry: ModelEntry) -> None:
    if entry.weights_format != WEIGHTS_FORMAT:
        with warnings.catch_warnings():
            # Keras only warns when parts of a model keep freshly initialised weights.
            warnings.filterwarnings("error", message=r"(?s).*(Skipping|freshly-initialized|could not be loaded|not loaded)")
            try:
                model.load_weights(str(path))
            except UserWarning as w:
                raise BadInputError(f"model {entry.name!r}: weights do not fit the built model: {w}") from None
            except OSError as e:  # a bundle made by hand: its checksum proves nothing
                raise _unreadable(entry, e) from None
        return
    import h5py

    check_fits(model, entry)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise _unreadable(entry, e) from None
    with f:
        arrays = []
        for i, (v, info) in enumerate(zip(model.weights, entry.tensors)):
            ds = f.get(f"w/{i:06d}")
            if not isinstance(ds, h5py.Dataset) or list(ds.shape) != info.shape:
                raise BadInputError(f"model {entry.name!r}: weights file lacks tensor {i} of shape {info.shape}")
            stored_as = ds.attrs.get(DTYPE_ATTR)
            if ds.dtype.name != info.dtype and not _stands_for(ds, stored_as, info.dtype):
                # assigning would cast: 1e300 in float64 becomes inf
                raise BadInputError(f"model {entry.name!r}: weights file holds tensor {i} as "
                                    f"{stored_as or ds.dtype}, the model and manifest say {info.dtype}")
            arrays.append(ds[()] if stored_as is None else ds[()].view(_numpy_dtype(v)))
        if len(f.get("w", {})) != len(arrays):
            raise BadInputError(f"model {entry.name!r}: weights file holds extra tensors")
    for v, arr in zip(model.weights, arrays):
        v.assign(arr)


def _stands_for(ds: Any, stored_as: Any, dtype: str) -> bool:
    """Whether ``ds`` holds a type HDF5 lacks, named ``dtype``, as unsigned integers of its width."""
    return stored_as == dtype and ds.dtype.kind == "u"


def _numpy_dtype(variable: Any) -> Any:
    """The numpy type of ``variable``'s values (bfloat16 is ml_dtypes', which Keras uses)."""
    import numpy as np

    return np.asarray(variable).dtype
