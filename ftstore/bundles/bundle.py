"""Saving and loading model bundles.

Load order, always: verify (repairing if needed) -> parse the manifest -> check the backend
-> restore params into the target dict -> build each model with its registered builder
(which reads the restored params) -> load weights strictly. If any step fails the target
dict is put back exactly as it was.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from ftstore import params as params_module
from ftstore.documents import Envelope
from ftstore.engine.store import Store
from ftstore.errors import BadInputError
from ftstore.payloads.bundle_format import BACKENDS, BundleManifest, ModelEntry, read_bundle, write_bundle

REQUIRED_PARAMS = ("N", "gridsize")
# Keras picks its reader by file name, so extracted weights keep the suffix of their format.
WEIGHT_SUFFIXES = {"ftstore-h5": ".h5", "safetensors": ".safetensors", "keras-weights-h5": ".weights.h5", "keras-legacy-h5": ".h5"}
Builder = Callable[[dict[str, Any]], Any]
_BUILDERS: dict[tuple[str, str], Builder] = {}


class BackendMismatchError(BadInputError):
    """A bundle of one backend asked for as another."""


@dataclass
class LoadedBundle:
    models: dict[str, Any]
    params: dict[str, Any]
    backend: str
    manifest: BundleManifest
    envelope: Envelope


def backend_module(backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: allowed values are {', '.join(repr(b) for b in BACKENDS)}")
    return importlib.import_module(f"ftstore.bundles.{backend}")


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
    params: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    overhead: float = 0.10,
) -> Envelope:
    """Store ``models`` and the params they were built from (default ``ftstore.params.cfg``)
    as a ``model_bundle`` artifact."""
    with tempfile.TemporaryDirectory(prefix="ftstore-bundle-") as tmp:
        path = bundle_file(models, backend, params, Path(tmp))
        meta = {"backend": backend, "models": ",".join(models), **(metadata or {})}
        return store.save(path, name, "model_bundle", meta, overhead)


def bundle_file(models: dict[str, Any], backend: str, params: dict[str, Any] | None, tmp: Path) -> Path:
    """Write a bundle zip for ``models`` into ``tmp`` and return its path."""
    mod = backend_module(backend)
    mod.require()
    p = params_module.cfg if params is None else params
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


def load_bundle(
    store: Store,
    ref: str,
    backend: str,
    *,
    builders: dict[str, Builder] | None = None,
    target: dict[str, Any] | None = None,
    models: Iterable[str] | None = None,
    jobs: int | None = None,
) -> LoadedBundle:
    """Load a bundle in the documented order; ``target`` (default ``ftstore.params.cfg``)
    receives the archived params and is left untouched if anything fails."""
    mod = backend_module(backend)
    cfg = params_module.cfg if target is None else target
    with tempfile.TemporaryDirectory(prefix="ftstore-bundle-") as tmp:
        local = Path(tmp) / "bundle.zip"
        res = store.load(ref, local, jobs=jobs)  # verifies; repairs if needed
        if res.envelope.artifact_type != "model_bundle":
            raise BadInputError(f"{res.ref} is a {res.envelope.artifact_type}, not a model_bundle")
        manifest, saved_params, z = read_bundle(local)
        with z:
            if manifest.backend != backend:
                raise BackendMismatchError(
                    f"{res.ref} is a {manifest.backend!r} bundle; it cannot be loaded with backend {backend!r}"
                )
            _check_architecture_params(saved_params, res.ref)
            available = {m.name: m for m in manifest.models}
            wanted = list(models) if models is not None else list(available)
            absent = [w for w in wanted if w not in available]
            if absent:
                raise KeyError(f"model(s) {absent} not in {res.ref}; it holds: {sorted(available)}")
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
    return LoadedBundle(built, dict(saved_params), backend, manifest, res.envelope)
