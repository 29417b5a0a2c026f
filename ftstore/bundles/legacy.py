"""Importing PtychoPINN ``wts.h5.zip`` archives as ftstore bundles.

A legacy archive holds ``manifest.dill`` (``{'models': [...], 'version': '1.0' |
'2.0-pytorch'}``) and, per model, ``<model>/params.dill`` (a ``params.cfg`` snapshot) and
``<model>/model.keras`` or ``<model>/model.h5`` (TensorFlow) or ``<model>/model.pth``
(PyTorch state_dict). The ``.dill`` files are read with the restricted unpickler (plain
data only); ``custom_objects.dill`` is never unpickled; ``model.pth`` is read with
``torch.load(weights_only=True)`` and converted to safetensors.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ftstore.payloads.archive import SafeZip
from ftstore.documents import Envelope
from ftstore.errors import BadInputError
from ftstore.bundles.restricted_pickle import loads_plain
from ftstore.engine.store import Store
from ftstore.bundles.bundle import _check_architecture_params, backend_module
from ftstore.payloads.bundle_format import LegacySource, ModelEntry, TensorInfo, write_bundle

VERSIONS = {"1.0": "tensorflow", "2.0-pytorch": "pytorch"}
MAX_PICKLE_BYTES = 64 * 1024 * 1024


def _root(z: SafeZip) -> str:
    """The folder holding manifest.dill: archives are sometimes zipped with a top folder."""
    cands = sorted((n for n in z.names() if n == "manifest.dill" or n.endswith("/manifest.dill")), key=len)
    if not cands:
        raise BadInputError(f"{z.path}: no manifest.dill: not a PtychoPINN model archive")
    return cands[0][: -len("manifest.dill")]


def import_legacy(store: Store, archive: str | Path, name: str, metadata: dict[str, str] | None = None) -> Envelope:
    archive = Path(archive)
    with SafeZip(archive) as z, tempfile.TemporaryDirectory(prefix="ftstore-legacy-") as tmp:
        root = _root(z)
        manifest = loads_plain(z.read(root + "manifest.dill", MAX_PICKLE_BYTES), "manifest.dill")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), (list, tuple)):
            raise BadInputError("manifest.dill: expected a dict with a 'models' list")
        version = manifest.get("version", "1.0")
        if version not in VERSIONS:
            raise BadInputError(f"manifest.dill: unknown archive version {version!r} (known: {', '.join(VERSIONS)})")
        backend = VERSIONS[version]
        models = [str(m) for m in manifest["models"]]
        params: dict[str, Any] | None = None
        weights = []
        for i, model in enumerate(models):
            p = loads_plain(z.read(f"{root}{model}/params.dill", MAX_PICKLE_BYTES), f"{model}/params.dill")
            if not isinstance(p, dict) or not all(isinstance(k, str) for k in p):
                raise BadInputError(f"{model}/params.dill: expected a dict with string keys")
            params = params if params is not None else {k: v for k, v in p.items() if k != "_version"}
            weights.append(_convert_weights(z, root, model, backend, Path(tmp) / f"w{i}"))
        if params is None:
            raise BadInputError("manifest.dill lists no models")
        _check_architecture_params(params, f"{archive}")
        out = Path(tmp) / "bundle.zip"
        write_bundle(out, backend, weights, params, LegacySource(archive_version=version, models=models))
        meta = {"backend": backend, "models": ",".join(models), "imported_from": archive.name, **(metadata or {})}
        return store.save(out, name, "model_bundle", meta)


def _convert_weights(z: SafeZip, root: str, model: str, backend: str, dest: Path) -> tuple[ModelEntry, Path]:
    names = set(z.names())
    if backend == "pytorch":
        member = f"{root}{model}/model.pth"
        if member not in names:
            raise BadInputError(f"{z.path}: {model} has no model.pth")
        torch_mod = backend_module("pytorch")
        torch = torch_mod.require()
        raw = dest.with_suffix(".pth")
        z.extract(member, raw)
        try:
            sd = torch.load(raw, map_location="cpu", weights_only=True)
        except Exception as e:  # torch's restricted unpickler refuses anything but tensors and plain data
            raise BadInputError(f"{model}/model.pth: not a plain state_dict ({type(e).__name__}: {e})") from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise BadInputError(f"{model}/model.pth: expected a state_dict of tensors")
        from safetensors.torch import save_file

        save_file(torch_mod.state_dict_for_saving(sd), str(dest))
        tensors = [TensorInfo(name=k, dtype=str(v.dtype).removeprefix("torch."), shape=list(v.shape)) for k, v in sd.items()]
        return ModelEntry(name=model, weights=f"weights/{model}.safetensors", weights_format="safetensors", tensors=tensors), dest
    if f"{root}{model}/model.keras" in names:
        inner = dest.with_suffix(".keras")
        z.extract(f"{root}{model}/model.keras", inner)
        with SafeZip(inner) as kz:
            kz.extract("model.weights.h5", dest)
        return ModelEntry(name=model, weights=f"legacy/{model}.weights.h5", weights_format="keras-weights-h5", tensors=[]), dest
    if f"{root}{model}/model.h5" in names:
        z.extract(f"{root}{model}/model.h5", dest)
        return ModelEntry(name=model, weights=f"legacy/{model}.h5", weights_format="keras-legacy-h5", tensors=[]), dest
    raise BadInputError(f"{z.path}: {model} has neither model.keras nor model.h5")
