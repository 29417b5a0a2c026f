"""Importing PtychoPINN ``wts.h5.zip`` archives as ftstore bundles, without running their code.

A legacy archive holds ``manifest.dill`` (``{'models': [...], 'version': '1.0' |
'2.0-pytorch'}``) and, per model, ``<model>/params.dill`` (a ``params.cfg`` snapshot) and
its weights, in one of the forms PtychoPINN has written:

- TensorFlow, since mid-2025: ``model.keras`` (Keras 3 zip; its ``model.weights.h5`` is kept)
  next to an attribute-only ``model.h5``.
- TensorFlow, before: a SavedModel directory (``saved_model.pb``, ``variables/``); the
  weights are read from its checkpoint as data (see ``saved_model``).
- TensorFlow, early 2024: a full-model ``model.h5`` (kept as is, if it holds weights).
- PyTorch (``2.0-pytorch``): ``model.pth``, a state_dict read with
  ``torch.load(weights_only=True)`` into safetensors, or the training workflow's
  placeholder ``{'_sentinel': name}``, recorded as a model without weights; the workflow's
  ``torch_scaling_metadata.pt`` (plain data, read the same way) is kept as a document.

The ``.dill`` files are read with the restricted unpickler (plain data only; PtychoPINN's
probe, a pickled TensorFlow tensor, is recorded as one); ``custom_objects.dill`` is never
unpickled, but an archive whose ``custom_objects.dill`` would call code when PtychoPINN's
loader unpickles it is refused (its opcodes are read, not run). This module touches no
store: ``api.import_legacy`` converts the whole archive first and opens the store after.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ftstore.bundles import saved_model
from ftstore.bundles.bundle import _check_architecture_params, backend_module
from ftstore.bundles.restricted_pickle import loads_plain, refuse_calls
from ftstore.errors import BadInputError
from ftstore.payloads.archive import SafeZip
from ftstore.payloads.bundle_format import (
    MODEL_NAME_RE,
    LegacySource,
    ModelEntry,
    TensorInfo,
    read_bundle,
    read_legacy_metadata,
    write_bundle,
)

VERSIONS = {"1.0": "tensorflow", "2.0-pytorch": "pytorch"}
MAX_PICKLE_BYTES = 64 * 1024 * 1024
TORCH_METADATA = "torch_scaling_metadata.pt"
Converted = tuple[ModelEntry, Path] | None  # None: a placeholder without weights


def _root(z: SafeZip) -> str:
    """The folder holding manifest.dill: archives are sometimes zipped with a top folder."""
    cands = sorted((n for n in z.names() if n == "manifest.dill" or n.endswith("/manifest.dill")), key=len)
    if not cands:
        raise BadInputError(f"{z.path}: no manifest.dill: not a PtychoPINN model archive")
    return cands[0][: -len("manifest.dill")]


def convert_legacy(archive: str | Path, tmp: Path, metadata: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """Read and check the whole archive and write the bundle zip into ``tmp``; return the
    zip and the artifact metadata to save it with. Touches no store."""
    archive = Path(archive)
    with SafeZip(archive) as z:
        root = _root(z)
        manifest = loads_plain(z.read(root + "manifest.dill", MAX_PICKLE_BYTES), "manifest.dill")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), (list, tuple)):
            raise BadInputError("manifest.dill: expected a dict with a 'models' list")
        version = manifest.get("version", "1.0")
        if not isinstance(version, str) or version not in VERSIONS:
            raise BadInputError(f"manifest.dill: unknown archive version {version!r} (known: {', '.join(VERSIONS)})")
        backend = VERSIONS[version]
        models = [str(m) for m in manifest["models"]]
        if not models:
            raise BadInputError("manifest.dill lists no models")
        _check_model_names(models)
        for member in z.names():
            if member.startswith(root) and member.rsplit("/", 1)[-1] == "custom_objects.dill":
                refuse_calls(z.read(member, MAX_PICKLE_BYTES), member[len(root):])
        params: dict[str, Any] | None = None
        for model in models:  # every pickle is checked before any weights are read
            p = loads_plain(z.read(f"{root}{model}/params.dill", MAX_PICKLE_BYTES), f"{model}/params.dill", tensors="keep")
            if not isinstance(p, dict) or not all(isinstance(k, str) for k in p):
                raise BadInputError(f"{model}/params.dill: expected a dict with string keys")
            p = {k: v for k, v in p.items() if k != "_version"}
            if params is None:
                params = p
            elif differ := _differing_keys(params, p):
                raise BadInputError(
                    f"{model}/params.dill disagrees with {models[0]}/params.dill on {', '.join(differ[:8])}"
                    f"{' and more' if len(differ) > 8 else ''}: a bundle keeps one params.cfg for all its models, "
                    "and building a model with another's would be wrong; nothing was stored")
        assert params is not None
        weights, placeholders = [], []
        for i, model in enumerate(models):
            converted = _convert_weights(z, root, model, backend, tmp / f"w{i}")
            if converted is None:
                placeholders.append(model)
            else:
                weights.append(converted)
        _check_architecture_params(params, f"{archive}")
        if not weights:
            raise BadInputError(f"{archive}: no model in it has weights ({', '.join(placeholders)}: placeholders only)")
        documents = {}
        if backend == "pytorch" and root + TORCH_METADATA in z.names():
            documents["legacy/torch_scaling_metadata.json"] = _torch_metadata(z, root + TORCH_METADATA, tmp)
        source = LegacySource(archive_version=version, models=models, placeholders=placeholders,
                              metadata={TORCH_METADATA: m for m in documents})
        out = tmp / "bundle.zip"
        write_bundle(out, backend, weights, params, source, documents)
    read_back(out, archive)
    meta = {"backend": backend, "models": ",".join(e.name for e, _ in weights), "imported_from": archive.name,
            **({"placeholders": ",".join(placeholders)} if placeholders else {}), **(metadata or {})}
    return out, meta


def _differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values two ``params.dill`` snapshots do not share. PtychoPINN writes
    one snapshot of ``params.cfg`` per model at the same moment, so a genuine archive's
    agree (every fixture's do)."""
    seen: dict[tuple[int, int], bool] = {}
    return sorted(k for k in a.keys() | b.keys() if k not in a or k not in b or not _same(a[k], b[k], seen))


def _same(a: Any, b: Any, seen: dict[tuple[int, int], bool]) -> bool:
    """Equal as configuration values: containers item by item, NaN equal to NaN, arrays
    element by element, a recorded tensor by its array. Each pair of objects is compared
    once (``seen``): a pickle that shares its containers (2 KB can describe 2**40 values)
    is compared in time linear in its size."""
    if a is b:
        return True
    pair = (id(a), id(b))
    if pair not in seen:
        seen[pair] = True  # a cycle back to this pair adds no difference of its own
        seen[pair] = _compare(a, b, seen)
    return seen[pair]


def _compare(a: Any, b: Any, seen: dict[tuple[int, int], bool]) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], seen) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y, seen) for x, y in zip(a, b))
    if isinstance(a, (float, complex)) and a != a:  # NaN (a complex one: either part) is itself
        return repr(a) == repr(b) if isinstance(a, complex) else b != b
    if dataclasses.is_dataclass(a):  # a recorded tensor: by its value
        return all(_same(getattr(a, f.name), getattr(b, f.name), seen) for f in dataclasses.fields(a))
    try:
        equal = a == b
        if isinstance(equal, bool):
            return equal
        import numpy as np  # an array (or anything comparing element-wise)

        return bool(np.shape(a) == np.shape(b) and np.all(equal | ((a != a) & (b != b))))
    except Exception:  # noqa: BLE001 - values that cannot be compared are not known to agree
        return False


def _check_model_names(models: list[str]) -> None:
    """Every model the archive lists must be storable in a bundle under its own name, once."""
    seen = set()
    for m in models:
        if not MODEL_NAME_RE.fullmatch(m):
            raise BadInputError(f"manifest.dill: model name {m!r} cannot be kept in a bundle "
                                "(letters, digits, '_', '.', '-'; at most 128)")
        if m in seen:
            raise BadInputError(f"manifest.dill lists model {m!r} twice")
        seen.add(m)


def read_back(bundle: Path, archive: Path) -> None:
    """The validation pass before anything is committed: the bundle made from ``archive``
    is read back as a load would read it (manifest, params and every document, every
    model's weights member), so a bundle ftstore could not load is never stored."""
    try:
        manifest, _, z = read_bundle(bundle)
        with z:
            read_legacy_metadata(z, manifest)
            for m in manifest.models:
                z.check_member(m.weights)
    except BadInputError as e:
        raise BadInputError(f"{archive}: the bundle made from it could not be read back, so nothing was stored "
                            f"({str(e).replace(str(bundle), 'bundle')})") from None


def _convert_weights(z: SafeZip, root: str, model: str, backend: str, dest: Path) -> Converted:
    names = set(z.names())
    base = f"{root}{model}/"
    if backend == "pytorch":
        return _convert_torch(z, base, model, dest)
    if base + "model.keras" in names:
        inner = dest.with_suffix(".keras")
        z.extract(base + "model.keras", inner)
        label = f"{z.path.name}: {base}model.keras"
        try:
            with SafeZip(inner) as kz:
                kz.extract("model.weights.h5", dest)
        except BadInputError as e:  # named by the archive's member, not the temporary copy
            raise BadInputError(str(e).replace(str(inner), label)) from None
        if not _h5_has_datasets(dest, f"{label}: model.weights.h5"):
            raise BadInputError(f"{label}: model.weights.h5 holds no weights")
        return ModelEntry(name=model, weights=f"legacy/{model}.weights.h5", weights_format="keras-weights-h5", tensors=[]), dest
    if base + "saved_model.pb" in names:
        return _convert_saved_model(z, base, model, names, dest)
    if base + "model.h5" in names:
        z.extract(base + "model.h5", dest)
        if not _h5_has_datasets(dest, f"{z.path.name}: {base}model.h5"):
            raise BadInputError(
                f"{z.path}: {model}/model.h5 holds no weights (only attributes such as intensity_scale), "
                "and there is no model.keras or SavedModel beside it"
            )
        return ModelEntry(name=model, weights=f"legacy/{model}.h5", weights_format="keras-legacy-h5", tensors=[]), dest
    present = sorted(n[len(base):] for n in names if n.startswith(base))
    raise BadInputError(f"{z.path}: {model} has no model.keras, SavedModel or model.h5 (it holds: {', '.join(present) or 'nothing'})")


def _convert_saved_model(z: SafeZip, base: str, model: str, names: set[str], dest: Path) -> Converted:
    var_dir = dest.with_suffix(".variables")
    var_dir.mkdir()
    members = [n for n in names if n.startswith(base + "variables/variables.")]
    if base + "variables/variables.index" not in members:
        raise BadInputError(f"{z.path}: {model}'s SavedModel has no variables/variables.index: its weights are missing")
    data_bytes = 0
    for member in members:
        target = var_dir / member[len(base + "variables/"):]
        z.extract(member, target)
        data_bytes += target.stat().st_size if ".data-" in member else 0
    weights = saved_model.read_weights(var_dir / "variables", data_bytes, f"{model}/variables")
    tensors = saved_model.write_ftstore_h5(weights, dest)
    return ModelEntry(name=model, weights=f"weights/{model}.h5", weights_format="ftstore-h5", tensors=tensors), dest


def _h5_has_datasets(path: Path, label: str) -> bool:
    """Whether the HDF5 file at ``path`` (``label`` in messages) holds any dataset."""
    import h5py

    found = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, obj: found.append(1) if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise BadInputError(f"{label}: not an HDF5 file ({e})") from None
    return bool(found)


def _torch_load(z: SafeZip, member: str, dest: Path, what: str) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain data only, no code."""
    torch = backend_module("pytorch").require()
    z.extract(member, dest)
    try:
        return torch.load(dest, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's restricted unpickler refuses anything but tensors and plain data
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        reason = f"refusing to unpickle {refused.group(1)}" if refused else f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise BadInputError(f"{member}: not {what} ({reason})") from None


def _convert_torch(z: SafeZip, base: str, model: str, dest: Path) -> Converted:
    member = base + "model.pth"
    if member not in z.names():
        raise BadInputError(f"{z.path}: {model} has no model.pth")
    torch_mod = backend_module("pytorch")
    torch = torch_mod.require()
    sd = _torch_load(z, member, dest.with_suffix(".pth"), "a plain state_dict")
    if isinstance(sd, dict) and set(sd) == {"_sentinel"} and isinstance(sd["_sentinel"], str):
        return None  # PtychoPINN's placeholder: the archive has no weights for this model
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise BadInputError(f"{model}/model.pth: expected a state_dict of tensors or PtychoPINN's {{'_sentinel': name}} placeholder")
    try:
        torch_mod.save_weights(sd, dest)
    except BadInputError as e:
        raise BadInputError(f"{member}: {e}") from None
    tensors = [TensorInfo(name=k, dtype=str(v.dtype).removeprefix("torch."), shape=list(v.shape)) for k, v in sd.items()]
    return ModelEntry(name=model, weights=f"weights/{model}.safetensors", weights_format="safetensors", tensors=tensors), dest


def _torch_metadata(z: SafeZip, member: str, tmp: Path) -> dict[str, Any]:
    meta = _torch_load(z, member, tmp / "torch-metadata.pt", "plain data")
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise BadInputError(f"{member}: expected a dict with string keys")
    return meta
