"""TensorFlow/Keras bundles on CPU."""

import os
import sys
import zipfile

import numpy as np
import pytest

from ftstore import params
from ftstore.bundles import load_bundle, save_bundle
from ftstore.api import import_legacy

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")


@pytest.fixture(autouse=True)
def _isolated_params(clean_params_cfg):
    """Every test here starts with an empty ftstore.params.cfg."""


def keras_model(cfg):
    inp = keras.Input((cfg["N"], cfg["N"], cfg["gridsize"] ** 2))
    x = keras.layers.Conv2D(int(4 * cfg.get("n_filters_scale", 1)), 3, padding="same")(inp)
    return keras.Model(inp, keras.layers.Dense(2)(x))


BUILDERS = {"autoencoder": keras_model, "diffraction_to_obj": keras_model}
CFG = {"N": 8, "gridsize": 2, "n_filters_scale": 2, "intensity_scale": 2.5, "probe": np.ones((8, 8), np.complex64)}


def test_tensorflow_round_trip_restores_params_before_building(store):
    params.cfg.update(CFG)
    models = {k: b(params.cfg) for k, b in BUILDERS.items()}
    save_bundle(store, "kb", models, "tensorflow")
    params.cfg.clear()
    params.cfg.update(N=32, gridsize=1)
    res = load_bundle(store, "kb", "tensorflow", builders=BUILDERS)
    assert res.backend == "tensorflow" and params.cfg["N"] == 8 and params.cfg["gridsize"] == 2
    x = np.random.default_rng(0).random((1, 8, 8, 4)).astype("float32")
    for name, m in models.items():
        assert np.array_equal(np.asarray(res.models[name](x)), np.asarray(m(x)))


def test_tensorflow_shape_mismatch_rolls_back(store):
    params.cfg.update(CFG)
    save_bundle(store, "kb", {k: b(params.cfg) for k, b in BUILDERS.items()}, "tensorflow")
    params.cfg.clear()
    params.cfg.update(N=16, gridsize=1)
    before = dict(params.cfg)
    wrong = lambda cfg: keras_model({**cfg, "n_filters_scale": 1})
    with pytest.raises(ValueError, match="in the built model"):
        load_bundle(store, "kb", "tensorflow", builders={"autoencoder": wrong, "diffraction_to_obj": wrong})
    assert params.cfg == before


def test_tensorflow_not_installed_is_a_clear_error(store, monkeypatch):
    params.cfg.update(CFG)
    save_bundle(store, "kb", {k: b(params.cfg) for k, b in BUILDERS.items()}, "tensorflow")
    monkeypatch.setitem(sys.modules, "keras", None)
    with pytest.raises(RuntimeError, match=r"backend 'tensorflow' was selected.*pip install"):
        load_bundle(store, "kb", "tensorflow", builders=BUILDERS)


def _legacy_archive(tmp_path, models, model_file, root="", params=None, extra=None):
    """A PtychoPINN-style wts.h5.zip: manifest.dill, and per model its Keras file
    (``model.keras`` or the legacy full-model ``model.h5``) and params.dill."""
    dill = pytest.importorskip("dill")
    arch = tmp_path / "wts.h5.zip"
    with zipfile.ZipFile(arch, "w") as zf:
        zf.writestr(f"{root}manifest.dill", dill.dumps({"models": list(models), "version": "1.0"}))
        for member, data in (extra or {}).items():
            zf.writestr(f"{root}{member}", data)
        for name, m in models.items():
            p = tmp_path / f"{name}-{model_file}"
            m.save(p)
            zf.write(p, f"{root}{name}/{model_file}")
            zf.writestr(f"{root}{name}/params.dill", dill.dumps(params or CFG))
    return arch


def test_import_legacy_keras_archive(store, tmp_path):
    models = {k: b(CFG) for k, b in BUILDERS.items()}
    arch = _legacy_archive(tmp_path, models, "model.keras", params={**CFG, "_version": "1.0"},
                           extra={"custom_objects.dill": pytest.importorskip("dill").dumps({"Dense": keras.layers.Dense})})
    _, env = import_legacy(store, arch, "legacy-tf")
    assert env.metadata["backend"] == "tensorflow"
    res = load_bundle(store, "legacy-tf", "tensorflow", builders=BUILDERS)
    x = np.random.default_rng(1).random((1, 8, 8, 4)).astype("float32")
    assert np.array_equal(np.asarray(res.models["autoencoder"](x)), np.asarray(models["autoencoder"](x)))


def test_import_legacy_keras_h5_archive(store, tmp_path):
    models = {k: b(CFG) for k, b in BUILDERS.items()}
    arch = _legacy_archive(tmp_path, models, "model.h5", root="wts/")  # the legacy HDF5 full-model format
    import_legacy(store, arch, "legacy-h5")
    res = load_bundle(store, "legacy-h5", "tensorflow", builders=BUILDERS)
    x = np.random.default_rng(2).random((1, 8, 8, 4)).astype("float32")
    assert np.array_equal(np.asarray(res.models["diffraction_to_obj"](x)), np.asarray(models["diffraction_to_obj"](x)))


def test_a_tensorflow_tensor_in_params_is_saved_and_restored_as_one(store):
    """PtychoPINN's params.cfg holds its probe as a tf.Tensor; a bundle saved from it gives
    a tensor back (or a numpy array with tensors='numpy')."""
    tf = pytest.importorskip("tensorflow")
    probe = np.arange(16, dtype=np.complex64).reshape(4, 4, 1)
    params.cfg.update(CFG, probe=tf.convert_to_tensor(probe))
    save_bundle(store, "kb", {k: b(params.cfg) for k, b in BUILDERS.items()}, "tensorflow")
    params.cfg.clear()
    res = load_bundle(store, "kb", "tensorflow", builders=BUILDERS)
    assert isinstance(params.cfg["probe"], tf.Tensor) and params.cfg["probe"].dtype == tf.complex64
    assert np.array_equal(params.cfg["probe"].numpy(), probe) and isinstance(res.params["probe"], tf.Tensor)
    load_bundle(store, "kb", "tensorflow", builders=BUILDERS, tensors="numpy")
    assert type(params.cfg["probe"]) is np.ndarray and np.array_equal(params.cfg["probe"], probe)


def _tiny_dense(cfg):
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])


def _saved_with_weights(store, tmp_path, name, write):
    """A bundle of :func:`_tiny_dense` whose weights file holds what ``write(h5_file)``
    writes, saved as ``name``."""
    import h5py

    from ftstore.bundles.bundle import bundle_file

    bundle = bundle_file({"m": _tiny_dense({})}, "tensorflow", {"N": 8, "gridsize": 1}, tmp_path)
    with zipfile.ZipFile(bundle) as z:
        members = {n: z.read(n) for n in z.namelist()}
    h5 = tmp_path / "w.h5"
    with h5py.File(h5, "w") as f:
        write(f)
    members["weights/m.h5"] = h5.read_bytes()
    with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    store.save(tmp_path / f"{name}.zip", name)


@pytest.mark.parametrize("dtype", ["<f8", "<i8", "<f2"])
def test_weights_stored_in_another_dtype_are_refused_not_cast(store, tmp_path, dtype):
    """The HDF5 datasets' own dtypes must be the model's, like the manifest's: assigning
    float64 weights to a float32 model would cast them (1e300 becomes inf)."""
    from ftstore.errors import BadInputError

    def write(f):
        f.create_dataset("w/000000", data=np.full((2, 2), 1e300 if dtype == "<f8" else 3, dtype))
        f.create_dataset("w/000001", data=np.zeros(2, "f4"))

    _saved_with_weights(store, tmp_path, "recast", write)
    with pytest.raises(BadInputError, match=f"holds tensor 0 as {np.dtype(dtype).name}, the model and manifest say float32"):
        load_bundle(store, "recast", "tensorflow", builders={"m": _tiny_dense}, params={})

def test_bfloat16_weights_round_trip_exactly(store, tmp_path):
    """HDF5 has no bfloat16: h5py stored such weights as opaque bytes that no load could
    take back, though the save committed. They are stored as uint16 with their type named,
    and every bit comes back."""
    import h5py

    from ftstore.bundles.bundle import bundle_file

    def build(cfg):
        inp = keras.Input((4,))
        return keras.Model(inp, keras.layers.Dense(3, dtype="bfloat16")(inp))

    saved = build({})
    values = [np.asarray(w) for w in saved.weights]
    values = [(np.random.default_rng(i).standard_normal(v.shape) * 1e3).astype(v.dtype) for i, v in enumerate(values)]
    for w, v in zip(saved.weights, values):
        w.assign(v)
    save_bundle(store, "bf16", {"m": saved}, "tensorflow", params={"N": 1, "gridsize": 1})
    res = load_bundle(store, "bf16", "tensorflow", builders={"m": build}, params={})
    back = [np.asarray(w) for w in res.models["m"].weights]
    assert [b.dtype.name for b in back] == ["bfloat16", "bfloat16"]
    assert all(b.view("u2").tobytes() == v.view("u2").tobytes() for b, v in zip(back, values))
    with zipfile.ZipFile(bundle_file({"m": saved}, "tensorflow", {"N": 1, "gridsize": 1}, tmp_path)) as z:
        (tmp_path / "w.h5").write_bytes(z.read("weights/m.h5"))
    with h5py.File(tmp_path / "w.h5") as f:
        assert f["w/000000"].dtype == np.uint16 and f["w/000000"].attrs["dtype"] == "bfloat16"


def test_uint16_weights_claiming_bfloat16_are_refused_for_a_float32_model(store, tmp_path):
    """The attribute names the type only where the model's is that type: uint16 weights
    marked bfloat16 are not taken for a float32 model's."""
    from ftstore.errors import BadInputError

    def write(f):
        f.create_dataset("w/000000", data=np.zeros((2, 2), "u2")).attrs["dtype"] = "bfloat16"
        f.create_dataset("w/000001", data=np.zeros(2, "f4"))

    _saved_with_weights(store, tmp_path, "marked", write)
    with pytest.raises(BadInputError, match="holds tensor 0 as bfloat16, the model and manifest say float32"):
        load_bundle(store, "marked", "tensorflow", builders={"m": _tiny_dense}, params={})
