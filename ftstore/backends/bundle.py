"""Saving and loading model bundles.

Load order, always: verify (repairing if needed) -> parse the manifest -> check the backend
-> restore params into the target dict -> build each model with its registered builder
(which reads the restored params) -> load weights strictly. If any step fails the target
dict is put back exactly as it was.

The target dict is the one the model code reads: ``params=`` a dict or ``"module:attr"``
(PtychoPINN's builders read ``"ptycho.params:cfg"``), else ``$FTSTORE_PARAMS_TARGET``,
else ``ftstore.params:cfg``. Saving reads its params from the same place.
"""

from __future__ import annotations

import importlib
import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from ..api import load as load_artifact
from ..archive import SafeZip
from ..envelopes import Envelope
from ..errors import BadInputError
from ..store import Store
from .documents import (
    BACKENDS,
    BundleManifest,
    LegacySource,
    ModelEntry,
    ParamsSnapshot,
    TensorV,
    decode_doc,
    from_snapshot,
    to_snapshot,
)

REQUIRED_PARAMS = ("N", "gridsize")
# Keras picks its reader by file name, so extracted weights keep the suffix of their format.
WEIGHT_SUFFIXES = {"ftstore-h5": ".h5", "safetensors": ".safetensors", "keras-weights-h5": ".weights.h5", "keras-legacy-h5": ".h5"}
Builder = Callable[[dict[str, Any]], Any]
_BUILDERS: dict[tuple[str, str], Builder] = {}
PARAMS_TARGET_ENV = "FTSTORE_PARAMS_TARGET"
DEFAULT_PARAMS_TARGET = "ftstore.params:cfg"
ParamsTarget = MutableMapping[str, Any] | str | None


class BackendMismatchError(BadInputError):
    """A bundle of one backend asked for as another."""


class ParamsTargetError(BadInputError):
    """A params target that names no importable dict."""


class PlaceholderModelError(BadInputError):
    """A model the source archive listed but held no weights for."""


@dataclass
class LoadedBundle:
    models: dict[str, Any]
    params: dict[str, Any]
    backend: str
    manifest: BundleManifest
    envelope: Envelope
    legacy_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Imported archives only: other metadata the archive carried, by its member name."""


def params_target(target: ParamsTarget = None) -> MutableMapping[str, Any]:
    """The dict params are restored into (or saved from): ``target`` itself, or the
    ``"module:attr"`` it names, or ``$FTSTORE_PARAMS_TARGET``, or ``ftstore.params.cfg``.
    Resolved on every call: the module is imported then, and a dict rebound since is seen."""
    if target is None:
        target = os.environ.get(PARAMS_TARGET_ENV) or DEFAULT_PARAMS_TARGET
    if isinstance(target, str):
        module, sep, attr = target.partition(":")
        if not (sep and module and attr):
            raise ParamsTargetError(f"params target {target!r}: expected MODULE:ATTRIBUTE, e.g. ptycho.params:cfg")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ParamsTargetError(f"params target {target!r} cannot be found: {type(e).__name__}: {e}") from None
        if not isinstance(obj, MutableMapping):
            raise ParamsTargetError(f"params target {target!r} is a {type(obj).__name__}, not a dict")
        return obj
    if not isinstance(target, MutableMapping):
        raise ParamsTargetError(f"params target is a {type(target).__name__}: pass a dict or 'module:attr'")
    return target


def backend_module(backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: allowed values are {', '.join(repr(b) for b in BACKENDS)}")
    return importlib.import_module(f".{backend}_backend", __package__)


def register_builder(backend: str, model_name: str, builder: Builder) -> None:
    """Register how to build ``model_name`` for ``backend`` from the restored params."""
    backend_module(backend)
    _BUILDERS[(backend, model_name)] = builder


def _check_architecture_params(p: dict[str, Any], where: str) -> None:
    missing = [k for k in REQUIRED_PARAMS if k not in p]
    if missing:
        raise ValueError(f"{where}: params lack {', '.join(missing)}; the model architecture cannot be reconstructed")


def save_bundle(
    store: Store,
    name: str,
    models: dict[str, Any],
    backend: str,
    params: ParamsTarget = None,
    metadata: dict[str, str] | None = None,
    overhead: float = 0.10,
) -> Envelope:
    """Store ``models`` and the params they were built from (a dict, or ``"module:attr"``;
    default ``$FTSTORE_PARAMS_TARGET``, else ``ftstore.params.cfg``) as a ``model_bundle``
    artifact."""
    with tempfile.TemporaryDirectory(prefix="ftstore-bundle-") as tmp:
        path = _bundle_file(models, backend, params, Path(tmp))
        meta = {"backend": backend, "models": ",".join(models), **(metadata or {})}
        return store.save(path, name, "model_bundle", meta, overhead)


def _bundle_file(models: dict[str, Any], backend: str, params: ParamsTarget, tmp: Path) -> Path:
    """Write a bundle zip for ``models`` into ``tmp`` and return its path."""
    mod = backend_module(backend)
    mod.require()
    p = params_target(params)
    _check_architecture_params(p, "save_bundle")
    if not models:
        raise ValueError("save_bundle: no models given")
    weights = []
    for i, (model_name, model) in enumerate(models.items()):
        wfile = tmp / f"w{i}"
        mod.write_weights(model, wfile)
        entry = ModelEntry(name=model_name, weights=f"weights/{model_name}{mod.SUFFIX}",
                           weights_format=mod.WEIGHTS_FORMAT, tensors=mod.tensor_index(model))
        weights.append((entry, wfile))
    path = tmp / "bundle.zip"
    write_bundle(path, backend, weights, dict(p))
    return path


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
    params are."""
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
        version = 2 if legacy is not None and (legacy.placeholders or legacy.metadata) else 1
        manifest = BundleManifest(format_version=version, backend=backend, models=[e for e, _ in weights], legacy=legacy)  # type: ignore[arg-type]
        zf.writestr("manifest.json", msgspec.json.encode(manifest))


def read_bundle(path: Path, as_tensor: Callable[[Any], Any] | None = None) -> tuple[BundleManifest, dict[str, Any], SafeZip]:
    """Parse a bundle file: manifest and params, strictly. The caller closes the SafeZip.
    Params saved as TensorFlow tensors go through ``as_tensor`` (default: numpy)."""
    z = SafeZip(path)
    try:
        manifest = decode_doc(z.read("manifest.json"), BundleManifest, "manifest.json")
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
        snap = decode_doc(z.read(manifest.params), ParamsSnapshot, manifest.params)
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
        snap = decode_doc(z.read(member), ParamsSnapshot, member)
        out[original] = from_snapshot(snap, lambda t: _read_npy(z, t))
    return out


def _tensorflow_tensor(value: Any) -> Any:
    """Restore a value saved as a TensorFlow tensor as one (TensorFlow is then needed)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise RuntimeError(
            "this bundle's params hold TensorFlow tensors; restoring them as tensors needs TensorFlow "
            "(pip install 'ftstore[tensorflow]'), or pass tensors='numpy' to get numpy arrays"
        ) from None
    return tf.convert_to_tensor(value)


def _read_npy(z: SafeZip, t: TensorV) -> np.ndarray:
    try:
        return np.load(io.BytesIO(z.read(t.member)), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadInputError(f"{t.member}: not a plain .npy array ({e})") from None


def load_bundle(
    store: Store,
    ref: str,
    backend: str,
    *,
    builders: dict[str, Builder] | None = None,
    params: ParamsTarget = None,
    models: Iterable[str] | None = None,
    jobs: int | None = None,
    tensors: Literal["as_saved", "numpy"] = "as_saved",
    target: ParamsTarget = None,
) -> LoadedBundle:
    """Load a bundle in the documented order. ``params`` (a dict or ``"module:attr"`` such
    as ``"ptycho.params:cfg"``; default ``$FTSTORE_PARAMS_TARGET``, else
    ``ftstore.params.cfg``) receives the archived params before any builder runs and is
    left untouched if anything fails. ``target`` is the older name of ``params``.
    Params saved as TensorFlow tensors come back as tensors, or with ``tensors="numpy"``
    as numpy arrays."""
    if params is not None and target is not None:
        raise ValueError("load_bundle: pass params= or target=, not both")
    mod = backend_module(backend)
    cfg = params_target(params if params is not None else target)
    if tensors not in ("as_saved", "numpy"):
        raise ValueError(f"tensors={tensors!r}: allowed values are 'as_saved', 'numpy'")
    with tempfile.TemporaryDirectory(prefix="ftstore-bundle-") as tmp:
        local = Path(tmp) / "bundle.zip"
        res = load_artifact(store, ref, local, jobs=jobs)  # verifies; repairs if needed
        if res.envelope.artifact_type != "model_bundle":
            raise BadInputError(f"{res.paths.ref} is a {res.envelope.artifact_type}, not a model_bundle")
        manifest, saved_params, z = read_bundle(local, _tensorflow_tensor if tensors == "as_saved" else None)
        with z:
            if manifest.backend != backend:
                raise BackendMismatchError(
                    f"{res.paths.ref} is a {manifest.backend!r} bundle; it cannot be loaded with backend {backend!r}"
                )
            _check_architecture_params(saved_params, res.paths.ref)
            available = {m.name: m for m in manifest.models}
            wanted = list(models) if models is not None else list(available)
            placeholders = [w for w in wanted if manifest.legacy is not None and w in manifest.legacy.placeholders]
            if placeholders:
                raise PlaceholderModelError(
                    f"{res.paths.ref}: {', '.join(placeholders)} has no weights: the imported archive held only a "
                    f"placeholder for it (PtychoPINN's PyTorch workflow saves {{'_sentinel': ...}} there); "
                    f"models with weights: {sorted(available)}"
                )
            legacy_metadata = read_legacy_metadata(z, manifest)
            absent = [w for w in wanted if w not in available]
            if absent:
                raise KeyError(f"model(s) {absent} not in {res.paths.ref}; it holds: {sorted(available)}")
            mod.require()
            snapshot = dict(cfg)
            try:
                cfg.update(saved_params)
                built = {}
                for model_name in wanted:
                    build = (builders or {}).get(model_name) or _BUILDERS.get((backend, model_name))
                    if build is None:
                        raise KeyError(f"no builder registered for {backend} model {model_name!r}")
                    model = build(cfg)
                    entry = available[model_name]
                    wfile = Path(tmp) / f"weights-{len(built)}{WEIGHT_SUFFIXES[entry.weights_format]}"
                    z.extract(entry.weights, wfile)
                    mod.load_weights(model, wfile, entry)
                    built[model_name] = model
            except BaseException:
                cfg.clear()
                cfg.update(snapshot)
                raise
    return LoadedBundle(built, dict(saved_params), backend, manifest, res.envelope, legacy_metadata)
