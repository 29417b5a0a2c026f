"""Saving and loading model bundles.

Load order, always: verify (repairing if needed) -> parse the manifest -> check the backend
-> restore params into the target dict -> build each model with its registered builder
(which reads the restored params) -> load weights strictly. If any step fails the target
dict is put back exactly as it was. Loads from several threads take turns, from the
snapshot on (:func:`~ftstore.bundles.rollback.params_lock`).

The target dict is the one the model code reads: ``params=`` a dict or ``"module:attr"``
(PtychoPINN's builders read ``"ptycho.params:cfg"``), else ``$FTSTORE_PARAMS_TARGET``,
else ``ftstore.params:cfg``. Saving reads its params from the same place.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ftstore.documents import Envelope
from ftstore.engine.store import Store
from ftstore.bundles.rollback import ParamsRollback, params_lock
from ftstore.errors import BadInputError, MissingDependencyError, NotFoundError
from ftstore.payloads.bundle_format import (
    BACKENDS,
    BundleManifest,
    ModelEntry,
    read_bundle,
    read_legacy_metadata,
    write_bundle,
)
from ftstore.tempdirs import held_temp_dir

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


class ModelNotFoundError(NotFoundError, KeyError):
    """A model the bundle does not hold, or one no builder is registered for (a KeyError,
    as it always was, and a documented ftstore error: exit 2, one line)."""

    def __str__(self) -> str:  # a KeyError quotes its message; this is a sentence
        return Exception.__str__(self)


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
        raise BadInputError(f"unknown backend {backend!r}: allowed values are {', '.join(repr(b) for b in BACKENDS)}")
    return importlib.import_module(f"ftstore.bundles.{backend}")


def register_builder(backend: str, model_name: str, builder: Builder) -> None:
    """Register how to build ``model_name`` for ``backend`` from the restored params."""
    backend_module(backend)
    _BUILDERS[(backend, model_name)] = builder


def _check_architecture_params(p: dict[str, Any], where: str) -> None:
    missing = [k for k in REQUIRED_PARAMS if k not in p]
    if missing:
        raise BadInputError(f"{where}: params lack {', '.join(missing)}; the model architecture cannot be reconstructed")


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
    with held_temp_dir("bundle") as tmp:
        path = bundle_file(models, backend, params, Path(tmp))
        meta = {"backend": backend, "models": ",".join(models), **(metadata or {})}
        return store.save(path, name, "model_bundle", meta, overhead)


def bundle_file(models: dict[str, Any], backend: str, params: ParamsTarget, tmp: Path) -> Path:
    """Write a bundle zip for ``models`` into ``tmp`` and return its path."""
    mod = backend_module(backend)
    mod.require()
    p = params_target(params)
    _check_architecture_params(p, "save_bundle")
    if not models:
        raise BadInputError("save_bundle: no models given")
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


def _tensorflow_tensor(value: Any) -> Any:
    """Restore a value saved as a TensorFlow tensor as one (TensorFlow is then needed)."""
    try:
        import tensorflow as tf
    except ImportError:
        raise MissingDependencyError(
            "this bundle's params hold TensorFlow tensors; restoring them as tensors needs TensorFlow "
            "(pip install 'ftstore[tensorflow]'), or pass tensors='numpy' to get numpy arrays"
        ) from None
    return tf.convert_to_tensor(value)


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
        raise BadInputError("load_bundle: pass params= or target=, not both")
    mod = backend_module(backend)
    cfg = params_target(params if params is not None else target)
    if tensors not in ("as_saved", "numpy"):
        raise BadInputError(f"tensors={tensors!r}: allowed values are 'as_saved', 'numpy'")
    lock = params_lock()
    locked = False
    before: ParamsRollback | None = None
    try:  # a failure up to the last step, the temporary folder's removal included, puts cfg back
        with held_temp_dir("bundle") as tmp:
            local = Path(tmp) / "bundle.zip"
            res = store.load(ref, local, jobs=jobs)  # verifies; repairs if needed
            if res.envelope.artifact_type != "model_bundle":
                raise BadInputError(f"{res.ref} is a {res.envelope.artifact_type}, not a model_bundle")
            manifest, saved_params, z = read_bundle(local, _tensorflow_tensor if tensors == "as_saved" else None)
            with z:
                if manifest.backend != backend:
                    raise BackendMismatchError(
                        f"{res.ref} is a {manifest.backend!r} bundle; it cannot be loaded with backend {backend!r}"
                    )
                _check_architecture_params(saved_params, res.ref)
                available = {m.name: m for m in manifest.models}
                wanted = list(models) if models is not None else list(available)
                placeholders = [w for w in wanted if manifest.legacy is not None and w in manifest.legacy.placeholders]
                if placeholders:
                    raise PlaceholderModelError(
                        f"{res.ref}: {', '.join(placeholders)} has no weights: the imported archive held only a "
                        f"placeholder for it (PtychoPINN's PyTorch workflow saves {{'_sentinel': ...}} there); "
                        f"models with weights: {sorted(available)}"
                    )
                legacy_metadata = read_legacy_metadata(z, manifest)
                absent = [w for w in wanted if w not in available]
                if absent:
                    raise ModelNotFoundError(f"model(s) {absent} not in {res.ref}; it holds: {sorted(available)}")
                mod.require()
                locked = lock.acquire()
                before = ParamsRollback(cfg)
                cfg.update(saved_params)
                built = {}
                for model_name in wanted:
                    build = (builders or {}).get(model_name) or _BUILDERS.get((backend, model_name))
                    if build is None:
                        raise ModelNotFoundError(f"no builder registered for {backend} model {model_name!r}")
                    model = build(cfg)
                    entry = available[model_name]
                    wfile = Path(tmp) / f"weights-{len(built)}{WEIGHT_SUFFIXES[entry.weights_format]}"
                    z.extract(entry.weights, wfile)
                    mod.load_weights(model, wfile, entry)
                    built[model_name] = model
    except BaseException:
        if before is not None:
            before.restore()
        raise
    finally:
        if locked:
            lock.release()
    return LoadedBundle(built, dict(saved_params), backend, manifest, res.envelope, legacy_metadata)
