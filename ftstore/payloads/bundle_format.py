"""The typed documents inside a model bundle: ``manifest.json`` and ``params.json``.

A bundle is a zip:

    manifest.json                 BundleManifest
    params.json                   ParamsSnapshot (typed values; arrays point at .npy members)
    params/<index>.npy            numpy arrays of the params snapshot (allow_pickle=False)
    weights/<model>.h5            TensorFlow: one dataset per variable, in model.weights order
    weights/<model>.safetensors   PyTorch: the state_dict
    legacy/<model>.<ext>          Keras weights of an imported legacy archive
    legacy/<name>.json            ParamsSnapshot of an imported archive's other metadata
                                  (PtychoPINN's torch_scaling_metadata.pt)

Format version 2 of the manifest and of the params snapshot adds fields (``placeholders``
and ``metadata`` of ``legacy``; ``framework`` of a tensor value); a document that uses
none of them is still written as version 1, so older readers keep reading it.
"""

from __future__ import annotations

import io
import math
import re
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

import msgspec
from msgspec import Meta

if TYPE_CHECKING:
    import numpy as np

from ftstore.documents.envelope import NonNegInt, Strict
from ftstore.errors import BadInputError
from ftstore.payloads.archive import SafeZip
from ftstore.payloads.strict_docs import MAX_DOC_BYTES, decode_doc


@dataclass(frozen=True, eq=False)
class TensorflowTensor:
    """A TensorFlow tensor as a pickle stream described it: the plain array it was made
    from (what ``tensor.numpy()`` returned when it was pickled). Recorded in a params
    snapshot as a tensor (``framework: tensorflow``) without TensorFlow installed."""

    value: np.ndarray | np.generic

BACKENDS = ("tensorflow", "pytorch")
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
MemberName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", max_length=512)]
ModelName = Annotated[str, Meta(pattern=MODEL_NAME_PATTERN)]


class TensorInfo(Strict):
    name: Annotated[str, Meta(max_length=1024)]
    dtype: Annotated[str, Meta(max_length=32)]
    shape: list[NonNegInt]


class ModelEntry(Strict):
    name: ModelName
    weights: MemberName
    weights_format: Literal["ftstore-h5", "safetensors", "keras-weights-h5", "keras-legacy-h5"]
    tensors: list[TensorInfo]


class LegacySource(Strict, omit_defaults=True):
    """Where an imported bundle came from. ``models`` are all the models the archive
    listed; ``placeholders`` those it held no weights for (PtychoPINN's PyTorch workflow
    saves ``{'_sentinel': 'autoencoder'}``), which the bundle therefore does not contain;
    ``metadata`` maps an archive member kept as data to its bundle member."""

    archive_version: Annotated[str, Meta(max_length=64)]
    models: list[ModelName]
    placeholders: list[ModelName] = []
    metadata: dict[Annotated[str, Meta(max_length=512)], MemberName] = {}


class BundleManifest(Strict, kw_only=True):
    format: Literal["ftstore-bundle"] = "ftstore-bundle"
    format_version: Literal[1, 2] = 1
    backend: Literal["tensorflow", "pytorch"]
    models: list[ModelEntry]
    params: MemberName = "params.json"
    legacy: Optional[LegacySource] = None


# -- params snapshot: every value tagged with its type, so int stays int ------------------
class IntV(Strict, tag="int"):
    value: int


class FloatV(Strict, tag="float"):
    value: Optional[float]  # None with `special` for nan / inf
    special: Optional[Literal["nan", "inf", "-inf"]] = None


class BoolV(Strict, tag="bool"):
    value: bool


class StrV(Strict, tag="str"):
    value: str


class NoneV(Strict, tag="none"):
    pass


class ComplexV(Strict, tag="complex"):
    real: float
    imag: float


class ListV(Strict, tag="list"):
    items: list["Value"]


class TupleV(Strict, tag="tuple"):
    items: list["Value"]


class DictV(Strict, tag="dict"):
    items: dict[str, "Value"]


class TensorV(Strict, tag="tensor", omit_defaults=True):
    """A numpy array (``scalar``: a numpy scalar such as ``np.float32(1.5)``) in a .npy
    member; ``framework: "tensorflow"`` when the value was a TensorFlow tensor."""

    member: MemberName
    dtype: Annotated[str, Meta(max_length=32)]
    shape: list[NonNegInt]
    scalar: bool = False
    framework: Optional[Literal["tensorflow"]] = None


Value = Union[IntV, FloatV, BoolV, StrV, NoneV, ComplexV, ListV, TupleV, DictV, TensorV]


class ParamsSnapshot(Strict, kw_only=True):
    format: Literal["ftstore-params"] = "ftstore-params"
    format_version: Literal[1, 2] = 1
    values: dict[str, Value]


def _tensorflow_value(v: Any) -> np.ndarray | np.generic | None:
    """The array of a TensorFlow tensor: an EagerTensor (``params.cfg['probe']`` in
    PtychoPINN) or the restricted unpickler's record of one. None for anything else.
    Recognised by type name, so TensorFlow is never imported here."""
    if isinstance(v, TensorflowTensor):
        return v.value
    if type(v).__name__ == "EagerTensor" and type(v).__module__.startswith("tensorflow."):
        return v.numpy()
    return None


MAX_SNAPSHOT_VALUES = 1_000_000
"""Values one params snapshot may hold once written out. The snapshot is a tree, so a
value referenced from several places is written at each: a dict sharing each level twice,
40 levels deep (a 2 KB pickle), would be 2**40 values."""


_EXACT = frozenset({int, float, complex, str, list, tuple})
"""Types stored as themselves, with numpy's arrays and scalars; their subclasses are refused,
not narrowed (dicts, whose subclasses come back as plain dicts with the same items, aside)."""
_INT_BITS = 14_000  # below 10**4214: printable under Python's default 4300-digit limit


def _printable_int(v: int) -> bool:
    try:
        str(v)
    except ValueError:  # Python's limit on int-to-text conversion (CVE-2020-10735)
        return False
    return True


def _check_unicode(s: str, where: str) -> None:
    """A string must be Unicode that JSON can carry: pickle lets a lone surrogate through."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInputError(f"params[{where}]: a string that is not valid Unicode (a lone surrogate) cannot be "
                            "stored") from None


def to_snapshot(params: dict[str, Any], prefix: str = "params") -> tuple[ParamsSnapshot, dict[str, np.ndarray]]:
    """Typed snapshot of a params dict, plus the arrays to store as .npy members
    (``<prefix>/<i>.npy``). An array referenced from several places is stored once."""
    import numpy as np
    arrays: dict[str, np.ndarray] = {}
    members: dict[int, tuple[Any, str]] = {}  # id of an array seen -> (it, kept alive; its member)
    version = 1
    count = 0

    def conv(v: Any, where: str) -> Value:
        nonlocal version, count
        count += 1
        if count > MAX_SNAPSHOT_VALUES:
            raise BadInputError(f"params: more than {MAX_SNAPSHOT_VALUES} values once shared references are "
                                "written out; refusing")
        if isinstance(v, bool):
            return BoolV(value=v)
        tf_value = _tensorflow_value(v)
        if tf_value is not None:
            version = 2
            t = conv(tf_value, where)
            assert isinstance(t, TensorV)
            return TensorV(member=t.member, dtype=t.dtype, shape=t.shape, scalar=t.scalar, framework="tensorflow")
        if (type(v) not in _EXACT and type(v) is not np.ndarray and not isinstance(v, np.generic)
                and isinstance(v, (np.ndarray, int, float, complex, str, list, tuple))):
            # a masked array would come back without its mask, an IntEnum or namedtuple as its base
            raise BadInputError(f"params[{where}]: a {type(v).__module__}.{type(v).__qualname__} would come back as "
                                "its base type (and a masked array without its mask); store plain values")
        if isinstance(v, (np.ndarray, np.generic)):
            arr = np.asarray(v)
            if arr.dtype.hasobject:
                raise BadInputError(f"params[{where}]: object arrays cannot be stored")
            if id(v) in members:
                member = members[id(v)][1]
            else:
                member = f"{prefix}/{len(arrays)}.npy"
                arrays[member] = arr
                members[id(v)] = (v, member)
            return TensorV(member=member, dtype=arr.dtype.str, shape=list(arr.shape), scalar=isinstance(v, np.generic))
        if isinstance(v, int):
            if v.bit_length() > _INT_BITS and not _printable_int(v):
                raise BadInputError(f"params[{where}]: an int of more than {sys.get_int_max_str_digits()} digits "
                                    "cannot be written as JSON")
            return IntV(value=v)
        if isinstance(v, float):
            if math.isfinite(v):
                return FloatV(value=v)
            return FloatV(value=None, special="nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
        if isinstance(v, complex):
            if not (math.isfinite(v.real) and math.isfinite(v.imag)):
                raise BadInputError(f"params[{where}]: {v!r} has a part that is not finite; only a complex of two "
                                    "finite parts can be stored (a numpy complex scalar or array holds any)")
            return ComplexV(real=v.real, imag=v.imag)
        if isinstance(v, str):
            _check_unicode(v, where)
            return StrV(value=v)
        if v is None:
            return NoneV()
        if isinstance(v, list):
            return ListV(items=[conv(x, f"{where}[{i}]") for i, x in enumerate(v)])
        if isinstance(v, tuple):
            return TupleV(items=[conv(x, f"{where}[{i}]") for i, x in enumerate(v)])
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise BadInputError(f"params[{where}]: dict keys must be strings")
            for k in v:
                _check_unicode(k, f"{where} key {k!r}")
            return DictV(items={k: conv(x, f"{where}.{k}") for k, x in v.items()})
        raise BadInputError(f"params[{where}]: {type(v).__name__} is not storable (plain data and numpy arrays only)")

    if not all(isinstance(k, str) for k in params):
        raise BadInputError("params keys must be strings")
    for k in params:
        _check_unicode(k, f"key {k!r}")
    values = {k: conv(v, k) for k, v in params.items()}
    return ParamsSnapshot(format_version=version, values=values), arrays


def from_snapshot(snap: ParamsSnapshot, load_array, as_tensor: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Python values of a snapshot; ``load_array(TensorV)`` reads one .npy member, once
    however often the snapshot refers to it (a member referenced 2000 times was read, and
    held in memory, 2000 times). Values saved as TensorFlow tensors go through
    ``as_tensor`` (default: left numpy)."""
    loaded: dict[str, Any] = {}

    def array(t: TensorV) -> Any:
        if t.member not in loaded:
            loaded[t.member] = load_array(t)
        return loaded[t.member]

    def conv(v: Value) -> Any:
        if isinstance(v, (IntV, BoolV, StrV)):
            return v.value
        if isinstance(v, FloatV):
            return v.value if v.special is None else float(v.special)
        if isinstance(v, NoneV):
            return None
        if isinstance(v, ComplexV):
            return complex(v.real, v.imag)
        if isinstance(v, ListV):
            return [conv(x) for x in v.items]
        if isinstance(v, TupleV):
            return tuple(conv(x) for x in v.items)
        if isinstance(v, DictV):
            return {k: conv(x) for k, x in v.items.items()}
        arr = array(v)
        if arr.dtype.str != v.dtype or list(arr.shape) != v.shape:
            raise BadInputError(f"{v.member}: array is {arr.dtype.str}{list(arr.shape)}, params.json says {v.dtype}{v.shape}")
        value = arr[()] if v.scalar else arr
        if v.framework is not None:
            if snap.format_version < 2:
                raise BadInputError(f"{v.member}: 'framework' needs params snapshot format_version 2")
            return as_tensor(value) if as_tensor is not None else value
        return value

    return {k: conv(v) for k, v in snap.values.items()}


def write_bundle(
    path: Path,
    backend: str,
    weights: list[tuple[ModelEntry, Path]],
    params: dict[str, Any],
    legacy: LegacySource | None = None,
    documents: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Write a bundle zip: weights files, the params snapshot and its arrays, the manifest;
    ``documents`` maps further members (``legacy/<name>.json``) to dicts stored the way
    params are. Refused (nothing written) if the result could not be read back: a model
    name outside the grammar, or two members of one name."""
    import numpy as np
    version = 2 if legacy is not None and (legacy.placeholders or legacy.metadata) else 1
    manifest = BundleManifest(format_version=version, backend=backend, models=[e for e, _ in weights], legacy=legacy)  # type: ignore[arg-type]
    try:  # structs built in code skip their constraints: check them as a reader will
        msgspec.json.decode(msgspec.json.encode(manifest), type=BundleManifest)
    except msgspec.ValidationError as e:
        raise BadInputError(f"the bundle's manifest would not be readable: {e}") from None
    members = [e.weights for e, _ in weights] + ["params.json", *(documents or {}), "manifest.json"]
    repeated = sorted({m for m in members if members.count(m) > 1})
    if repeated:
        raise BadInputError(f"the bundle would hold {', '.join(map(repr, repeated))} more than once (model names repeat?)")
    with zipfile.ZipFile(path, "x", compression=zipfile.ZIP_STORED) as zf:
        for entry, wfile in weights:
            zf.write(wfile, entry.weights)
        for member, values in [("params.json", params), *(documents or {}).items()]:
            snapshot, arrays = to_snapshot(values, prefix=member.removesuffix(".json"))
            for array_member, arr in arrays.items():
                buf = io.BytesIO()
                np.save(buf, arr, allow_pickle=False)
                zf.writestr(array_member, buf.getvalue())
            zf.writestr(member, msgspec.json.encode(snapshot))
        zf.writestr("manifest.json", msgspec.json.encode(manifest))


def read_bundle(path: Path, as_tensor: Callable[[Any], Any] | None = None) -> tuple[BundleManifest, dict[str, Any], SafeZip]:
    """Parse a bundle file: manifest and params, strictly. The caller closes the SafeZip.
    Params saved as TensorFlow tensors go through ``as_tensor`` (default: numpy)."""
    z = SafeZip(path)
    try:
        manifest = decode_doc(z.read("manifest.json", MAX_DOC_BYTES), BundleManifest, "manifest.json")
        names = [m.name for m in manifest.models]
        if len(set(names)) != len(names):
            raise BadInputError("manifest.json: duplicate model names")
        if manifest.legacy is not None and (manifest.legacy.placeholders or manifest.legacy.metadata):
            if manifest.format_version < 2:
                raise BadInputError("manifest.json: legacy placeholders and metadata need format_version 2")
            if set(manifest.legacy.placeholders) & set(names):
                raise BadInputError("manifest.json: a model is listed both with weights and as a placeholder")
        for m in manifest.models:
            z._info(m.weights)
        snap = decode_doc(z.read(manifest.params, MAX_DOC_BYTES), ParamsSnapshot, manifest.params)
        params = from_snapshot(snap, lambda t: _read_npy(z, t), as_tensor)
    except BaseException:
        z.__exit__(None, None, None)
        raise
    return manifest, params, z


def read_legacy_metadata(z: SafeZip, manifest: BundleManifest) -> dict[str, dict[str, Any]]:
    """The other metadata an imported archive carried, by its archive member name."""
    if manifest.legacy is None:
        return {}
    out = {}
    for original, member in manifest.legacy.metadata.items():
        snap = decode_doc(z.read(member, MAX_DOC_BYTES), ParamsSnapshot, member)
        out[original] = from_snapshot(snap, lambda t: _read_npy(z, t))
    return out


def _read_npy(z: SafeZip, t: TensorV) -> np.ndarray:
    return read_plain_npy(z.read_into_buffer(t.member), t.member)


_NPY_HEADER_BYTES = 1 << 20  # far more than any plain array's header (numpy pads it to 64 bytes)


def read_plain_npy(data: bytearray, source: str) -> np.ndarray:
    """A ``.npy`` file's array, only if its header describes exactly the bytes that follow:
    numpy allocates what the header claims before it reads (a 100-byte file claiming
    terabytes), and ``np.load`` of anything else (an ``.npz`` zip) is not an array. The
    array is laid over ``data`` itself (writable, as a loaded array is), not copied out of
    it: a params array costs its own size once, not twice."""
    import numpy as np
    f = io.BytesIO(bytes(memoryview(data)[:_NPY_HEADER_BYTES]))
    try:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:  # 3.0 is for structured dtypes with non-Latin-1 names: never plain
            raise ValueError(f".npy format version {version[0]}.{version[1]}")
        shape, fortran_order, dtype = readers[version](f)
        if dtype.hasobject:
            raise ValueError("an array of Python objects")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data) - f.tell():
            raise ValueError(f"its header describes {count * dtype.itemsize} bytes of data, "
                             f"the file has {len(data) - f.tell()}")
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=f.tell()) if count else np.empty(0, dtype)
        return flat.reshape(shape, order="F" if fortran_order else "C")
    except (ValueError, OSError, EOFError, TypeError) as e:
        raise BadInputError(f"{source}: not a plain .npy array ({e})") from None
