"""PtychoPINN archives as PtychoPINN itself writes them (tests/fixtures/ptychopinn; its
README says how they were made): imported, loaded into the dict PtychoPINN's model code
reads, and compared with what PtychoPINN's own loader restored and with the models'
outputs at save time."""

import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ftstore import params as ftstore_params
from ftstore.bundles import load_bundle
from ftstore.bundles.bundle import ParamsTargetError, PlaceholderModelError

from .conftest import run_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
FIXTURES = Path(__file__).parent / "fixtures" / "ptychopinn"
TF_ARCHIVES = ["tf-keras3-head", "tf-savedmodel-2025-07"]
TORCH_ARCHIVE = "torch-workflow-head"
ALL_ARCHIVES = [*TF_ARCHIVES, TORCH_ARCHIVE]


def expected(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())


def saved_outputs(name: str) -> dict:
    with np.load(FIXTURES / f"{name}.outputs.npz") as f:
        return dict(f)


def describe(v):
    """The fixture drivers' description of a value: type name, and the value, or an
    array's dtype, shape and SHA-256 of its bytes."""
    t = type(v).__name__
    if "tensorflow" in type(v).__module__ and hasattr(v, "numpy"):
        a = v.numpy()
        return {"type": t, "dtype": str(a.dtype), "shape": list(a.shape), "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
    if isinstance(v, np.ndarray):
        return {"type": t, "dtype": str(v.dtype), "shape": list(v.shape), "sha256": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()}
    if isinstance(v, (list, tuple)):
        return {"type": t, "items": [describe(x) for x in v]}
    if isinstance(v, dict):
        return {"type": t, "items": {str(k): describe(x) for k, x in v.items()}}
    assert v is None or isinstance(v, (bool, int, float, str)), t
    return {"type": t, "value": v}


# -- the tiny architectures the fixtures were saved from (the README gives the drivers') --
def tiny_keras(cfg, kind):
    keras = pytest.importorskip("keras")
    n, g, f = cfg["N"], cfg["gridsize"], int(cfg["n_filters_scale"])
    inp = keras.Input((n, n, g * g))
    x = keras.layers.Conv2D(2 * f, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(2, 3, padding="same")(x)
    if kind == "diffraction_to_obj":
        x = keras.layers.Dense(1)(x)
    return keras.Model(inp, x)


def tiny_torch(cfg):
    torch = pytest.importorskip("torch")
    g, f = cfg["gridsize"] ** 2, int(cfg["n_filters_scale"])
    return torch.nn.Sequential(torch.nn.Conv2d(g, 2 * f, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(2 * f, 2, 3, padding=1))


def ptycho_cfg() -> dict:
    return sys.modules["ptycho.params"].cfg


def reads_ptycho_params(build):
    """A builder that reads ``ptycho.params.cfg``, as PtychoPINN's model builders do; the
    dict ftstore hands it is ignored. Without the restore there, intensity_scale is missing."""

    def builder(_ignored):
        cfg = ptycho_cfg()
        assert cfg["intensity_scale"] > 0
        return build(cfg)

    return builder


TF_BUILDERS = {k: reads_ptycho_params(lambda cfg, k=k: tiny_keras(cfg, k)) for k in ("autoencoder", "diffraction_to_obj")}
TORCH_BUILDERS = {"diffraction_to_obj": reads_ptycho_params(tiny_torch)}


@pytest.fixture(autouse=True)
def ptycho_params(tmp_path, monkeypatch, clean_params_cfg):
    """A ``ptycho.params`` module holding ``cfg``, where PtychoPINN keeps it (PtychoPINN is
    not installed here; its model code reads only this dict)."""
    pkg = tmp_path / "site" / "ptycho"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "params.py").write_text("cfg = {'N': 128, 'gridsize': 1, 'label': 'before the load'}\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("FTSTORE_PARAMS_TARGET", raising=False)
    saved = {m: sys.modules.pop(m) for m in ("ptycho", "ptycho.params") if m in sys.modules}
    __import__("ptycho.params")
    yield
    for m in ("ptycho", "ptycho.params"):
        sys.modules.pop(m, None)
    sys.modules.update(saved)


def _import(store, name):
    run_cli("import-legacy", str(FIXTURES / f"{name}.zip"), "--name", name, store=store, check_rc=0)


@pytest.mark.parametrize("name", TF_ARCHIVES)
def test_tensorflow_archives_load_with_ptychopinns_params_and_outputs(store, name):
    pytest.importorskip("tensorflow")
    _import(store, name)
    res = load_bundle(store, name, "tensorflow", builders=TF_BUILDERS, params="ptycho.params:cfg")
    want = expected(name)["params"]
    assert sorted(res.params) == sorted(want)  # PtychoPINN's loader drops _version too
    cfg = ptycho_cfg()
    assert {k: describe(cfg[k]) for k in want} == want  # keys, types (the probe an EagerTensor), values
    assert ftstore_params.cfg == {}
    x = np.random.default_rng(0).random((1, 64, 64, 4)).astype("float32")
    for model, out in saved_outputs(name).items():
        np.testing.assert_allclose(np.asarray(res.models[model](x)), out, rtol=1e-5, atol=1e-6)


def test_savedmodel_weights_are_read_from_the_checkpoint_in_model_order(store):
    pytest.importorskip("tensorflow")
    _import(store, "tf-savedmodel-2025-07")
    res = load_bundle(store, "tf-savedmodel-2025-07", "tensorflow", builders=TF_BUILDERS, params="ptycho.params:cfg")
    entry = {m.name: m for m in res.manifest.models}["diffraction_to_obj"]
    assert entry.weights_format == "ftstore-h5"
    assert [(t.name.split("/")[0], t.shape) for t in entry.tensors] == [
        ("layer_with_weights-0", [3, 3, 4, 2]), ("layer_with_weights-0", [2]),
        ("layer_with_weights-1", [3, 3, 2, 2]), ("layer_with_weights-1", [2]),
        ("layer_with_weights-2", [2, 1]), ("layer_with_weights-2", [1])]


def test_tensors_numpy_restores_the_probe_as_a_numpy_array(store):
    pytest.importorskip("tensorflow")
    _import(store, "tf-keras3-head")
    load_bundle(store, "tf-keras3-head", "tensorflow", builders=TF_BUILDERS, params="ptycho.params:cfg", tensors="numpy")
    probe, want = ptycho_cfg()["probe"], expected("tf-keras3-head")["params"]["probe"]
    assert type(probe) is np.ndarray and describe(probe) == {**want, "type": "ndarray"}


def test_pytorch_workflow_archive_keeps_the_placeholder_and_the_scaling_metadata(store):
    pytest.importorskip("torch")
    res = run_cli("import-legacy", str(FIXTURES / f"{TORCH_ARCHIVE}.zip"), "--name", "t", store=store, check_rc=0)
    assert "diffraction_to_obj; no weights for: autoencoder" in res.stdout
    loaded = load_bundle(store, "t", "pytorch", builders=TORCH_BUILDERS, params="ptycho.params:cfg")
    want = expected(TORCH_ARCHIVE)
    # load_torch_bundle also leaves _version in params.cfg; the bundle records it in its manifest.
    assert want["params"].pop("_version") == {"type": "str", "value": "2.0-pytorch"}
    assert loaded.manifest.legacy.archive_version == "2.0-pytorch"
    assert sorted(loaded.params) == sorted(want["params"])
    assert {k: describe(ptycho_cfg()[k]) for k in want["params"]} == want["params"]
    assert describe(loaded.legacy_metadata["torch_scaling_metadata.pt"]) == want["scaling_metadata"]
    assert loaded.manifest.legacy.placeholders == ["autoencoder"] and list(loaded.models) == ["diffraction_to_obj"]
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(np.random.default_rng(0).random((1, 4, 64, 64)).astype("float32"))
    with torch.no_grad():
        got = loaded.models["diffraction_to_obj"](x).numpy()
    np.testing.assert_allclose(got, saved_outputs(TORCH_ARCHIVE)["diffraction_to_obj"], rtol=1e-5, atol=1e-6)


def test_the_params_target_can_come_from_the_environment(store, monkeypatch):
    pytest.importorskip("torch")
    _import(store, TORCH_ARCHIVE)
    monkeypatch.setenv("FTSTORE_PARAMS_TARGET", "ptycho.params:cfg")
    load_bundle(store, TORCH_ARCHIVE, "pytorch", builders=TORCH_BUILDERS)
    assert ptycho_cfg()["intensity_scale"] == 987.25 and ftstore_params.cfg == {}
    monkeypatch.delenv("FTSTORE_PARAMS_TARGET")
    load_bundle(store, TORCH_ARCHIVE, "pytorch", builders={"diffraction_to_obj": tiny_torch})  # the default
    assert ftstore_params.cfg["intensity_scale"] == 987.25


def _failing_loads(name):
    """(description, keyword arguments of load_bundle) that must each fail."""
    backend = "pytorch" if name == TORCH_ARCHIVE else "tensorflow"
    builders = TORCH_BUILDERS if backend == "pytorch" else TF_BUILDERS

    def boom(cfg):
        raise RuntimeError("builder failed")

    def too_wide(_):
        cfg = {**ptycho_cfg(), "n_filters_scale": 3}
        return tiny_torch(cfg) if backend == "pytorch" else tiny_keras(cfg, "diffraction_to_obj")

    cases = [
        ("a builder raising", dict(builders={k: boom for k in builders}), RuntimeError),
        ("another architecture", dict(builders={k: too_wide for k in builders}), ValueError),
        ("an unknown params target", dict(builders=builders, params="ptycho.nowhere:cfg"), ParamsTargetError),
        ("a target that is not a dict", dict(builders=builders, params="ptycho.params:__name__"), ParamsTargetError),
        ("the wrong backend", dict(builders=builders, backend="tensorflow" if backend == "pytorch" else "pytorch"), ValueError),
    ]
    if name == TORCH_ARCHIVE:
        cases.append(("a placeholder model", dict(builders=builders, models=["autoencoder"]), PlaceholderModelError))
    return [(what, {"backend": backend, "params": "ptycho.params:cfg", **kw}, exc) for what, kw, exc in cases]


@pytest.mark.parametrize("name", ALL_ARCHIVES)
def test_every_failing_load_leaves_both_params_dicts_untouched(store, name, monkeypatch):
    pytest.importorskip("torch" if name == TORCH_ARCHIVE else "tensorflow")
    _import(store, name)
    ftstore_params.cfg.update(N=32, gridsize=3)
    before_ptycho, before_ftstore = dict(ptycho_cfg()), dict(ftstore_params.cfg)
    for what, kw, exc in _failing_loads(name):
        backend = kw.pop("backend")
        with pytest.raises(exc):
            load_bundle(store, name, backend, **kw)
        assert ptycho_cfg() == before_ptycho, what
        assert ftstore_params.cfg == before_ftstore, what
    monkeypatch.setenv("FTSTORE_PARAMS_TARGET", "not-a-module-path")
    with pytest.raises(ParamsTargetError, match="expected MODULE:ATTRIBUTE"):
        load_bundle(store, name, "tensorflow")
    assert ptycho_cfg() == before_ptycho and ftstore_params.cfg == before_ftstore


# -- hostile variants of each kind: refused with one line, exit 2, nothing written ---------
class Evil:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite(src: Path, dest: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            if info.filename not in replace:
                zout.writestr(info, zin.read(info))
        for member, data in replace.items():
            zout.writestr(member, data)
    return dest


def _hostile_cases():
    cases = []
    for name in ALL_ARCHIVES:
        cases += [(name, "diffraction_to_obj/params.dill", "refusing to unpickle posix.system"),
                  (name, "autoencoder/custom_objects.dill", "would run code when unpickled")]
    cases += [(TORCH_ARCHIVE, "diffraction_to_obj/model.pth", "not a plain state_dict"),
              (TORCH_ARCHIVE, "torch_scaling_metadata.pt", "not plain data")]
    return cases


@pytest.mark.parametrize("name,member,message", _hostile_cases(), ids=lambda v: str(v).replace("/", "-"))
def test_a_code_running_pickle_anywhere_is_refused_and_nothing_is_written(tmp_path, name, member, message):
    dill = pytest.importorskip("dill")
    marker = tmp_path / "pwned"
    if member.endswith((".pth", ".pt")):
        torch = pytest.importorskip("torch")
        buf = io.BytesIO()
        torch.save(Evil(marker), buf)
        payload = buf.getvalue()
    else:
        payload = dill.dumps(Evil(marker))
    arch = _rewrite(FIXTURES / f"{name}.zip", tmp_path / "wts.h5.zip", {member: payload})
    fresh = tmp_path / "fresh-store"
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(fresh), check_rc=2)
    assert message in res.stderr and res.stderr.count("\n") == 1
    assert not fresh.exists() and not marker.exists()
    existing = tmp_path / "store"
    run_cli("import-legacy", str(FIXTURES / f"{name}.zip"), "--name", "good", "--store", str(existing), check_rc=0)
    before = sorted(p.relative_to(existing) for p in existing.rglob("*"))
    run_cli("import-legacy", str(arch), "--name", "x", "--store", str(existing), check_rc=2)
    assert sorted(p.relative_to(existing) for p in existing.rglob("*")) == before and not marker.exists()


def test_an_attribute_only_model_h5_is_refused_not_imported_without_weights(tmp_path):
    """Since mid-2025 model.h5 holds only the intensity_scale attribute; without the
    model.keras beside it there are no weights, and the import says so."""
    with zipfile.ZipFile(FIXTURES / "tf-keras3-head.zip") as z:
        members = {n: z.read(n) for n in z.namelist() if not n.endswith("model.keras")}
    arch = tmp_path / "wts.h5.zip"
    with zipfile.ZipFile(arch, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "s"), check_rc=2)
    assert "model.h5 holds no weights" in res.stderr and not (tmp_path / "s").exists()


def test_a_savedmodel_archive_without_tensorflow_is_refused_with_what_would_work(tmp_path):
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "from ftstore.cli.main import main\n"
            "main(sys.argv[1:])\n")
    import subprocess

    res = subprocess.run([sys.executable, "-c", code, "import-legacy", str(FIXTURES / "tf-savedmodel-2025-07.zip"),
                          "--name", "x", "--store", str(tmp_path / "s")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "is a TensorFlow SavedModel" in res.stderr and "needs TensorFlow" in res.stderr and "model.keras" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "s").exists()


@pytest.mark.parametrize("member,damage", [
    ("autoencoder/variables/variables.index", lambda d: d[:100]),
    ("autoencoder/variables/variables.data-00000-of-00001", lambda d: bytes(b ^ 0xFF for b in d)),
    ("autoencoder/variables/variables.data-00000-of-00001", lambda d: d[:50]),
], ids=["index-truncated", "data-flipped", "data-truncated"])
def test_a_damaged_savedmodel_checkpoint_is_refused_in_one_line(tmp_path, member, damage):
    pytest.importorskip("tensorflow")
    with zipfile.ZipFile(FIXTURES / "tf-savedmodel-2025-07.zip") as z:
        data = damage(z.read(member))
    arch = _rewrite(FIXTURES / "tf-savedmodel-2025-07.zip", tmp_path / "wts.h5.zip", {member: data})
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "s"), check_rc=2)
    assert "autoencoder/variables: not a readable TensorFlow checkpoint" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_models_whose_params_disagree_are_refused_not_imported_with_one_of_them(tmp_path):
    """A bundle keeps one params.cfg; an archive whose models carry different ones would
    have one of them built with the other's configuration (silently, with wrong shapes)."""
    dill = pytest.importorskip("dill")
    src = FIXTURES / "tf-keras3-head.zip"
    with zipfile.ZipFile(src) as z:
        cfg = dill.loads(z.read("autoencoder/params.dill"))
    changed = dict(cfg, N=cfg["N"] * 2)
    arch = _rewrite(src, tmp_path / "wts.h5.zip", {"autoencoder/params.dill": dill.dumps(changed)})
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "s"), check_rc=2)
    assert "params.dill disagrees with" in res.stderr and "params.dill on N:" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "s").exists()
    same = _rewrite(src, tmp_path / "same.zip", {"autoencoder/params.dill": dill.dumps(dict(cfg))})
    run_cli("import-legacy", str(same), "--name", "x", "--store", str(tmp_path / "s"), check_rc=0)


def _torch_archive_with(tmp_path, member, change):
    """The PyTorch archive with ``member`` (a torch.save'd dict) changed by ``change``."""
    torch = pytest.importorskip("torch")
    with zipfile.ZipFile(FIXTURES / f"{TORCH_ARCHIVE}.zip") as z:
        value = torch.load(io.BytesIO(z.read(member)), weights_only=True)
    buf = io.BytesIO()
    torch.save(change(value, torch), buf)
    return _rewrite(FIXTURES / f"{TORCH_ARCHIVE}.zip", tmp_path / "wts.h5.zip", {member: buf.getvalue()})


def _params_archive_with(tmp_path, key, value):
    """The PyTorch archive with ``params.dill`` of both models holding ``key: value``."""
    import pickle

    from ftstore.bundles.restricted_pickle import loads_plain

    with zipfile.ZipFile(FIXTURES / f"{TORCH_ARCHIVE}.zip") as z:
        cfg = loads_plain(z.read("diffraction_to_obj/params.dill"), "params")
    data = pickle.dumps({**cfg, key: value}, protocol=4)
    return _rewrite(FIXTURES / f"{TORCH_ARCHIVE}.zip", tmp_path / "wts.h5.zip",
                    {"diffraction_to_obj/params.dill": data, "autoencoder/params.dill": data})


@pytest.mark.parametrize("case,message", [
    ("complex128 weight", "diffraction_to_obj/model.pth: weight 'extra' is complex128, a type safetensors cannot store"),
    ("sparse weight", "diffraction_to_obj/model.pth: weight 'extra' is a torch.sparse_coo tensor"),
    ("lone surrogate", "params[output_prefix]: a string that is not valid Unicode (a lone surrogate)"),
    ("5000-digit int", "params[npseed]: an int of more than 4300 digits cannot be written as JSON"),
    ("metadata surrogate", "params[schema_version]: a string that is not valid Unicode"),
    ("version as a list", "manifest.dill: unknown archive version ['2.0-pytorch']"),
])
def test_values_an_archive_cannot_carry_into_a_bundle_are_refused_in_one_line(tmp_path, case, message):
    """Each of these passed the unpickler and then escaped as an internal error (exit 3)."""
    import pickle

    if case.endswith("weight"):
        extra = (lambda t: t.tensor([1 + 1j], dtype=t.complex128)) if "complex" in case else (lambda t: t.eye(2).to_sparse())
        arch = _torch_archive_with(tmp_path, "diffraction_to_obj/model.pth", lambda sd, t: {**sd, "extra": extra(t)})
    elif case == "lone surrogate":
        arch = _params_archive_with(tmp_path, "output_prefix", "run\udcff")
    elif case == "5000-digit int":
        arch = _params_archive_with(tmp_path, "npseed", 10 ** 5000)
    elif case == "metadata surrogate":
        arch = _torch_archive_with(tmp_path, "torch_scaling_metadata.pt", lambda m, t: {**m, "schema_version": "v1\udcff"})
    else:
        manifest = pickle.dumps({"models": ["diffraction_to_obj", "autoencoder"], "version": ["2.0-pytorch"]})
        arch = _rewrite(FIXTURES / f"{TORCH_ARCHIVE}.zip", tmp_path / "wts.h5.zip", {"manifest.dill": manifest})
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "s"), check_rc=2)
    assert message in res.stderr and res.stderr.count("\n") == 1 and "internal error" not in res.stderr
    assert not (tmp_path / "s").exists()


def test_identical_params_with_a_complex_nan_do_not_disagree(tmp_path):
    """Two byte-identical params.dill holding complex('nan+1j') were said to disagree
    (NaN was equal to itself only as a float); now the value itself is what is refused."""
    arch = _params_archive_with(tmp_path, "c", complex(float("nan"), 1.0))
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "s"), check_rc=2)
    assert "disagrees" not in res.stderr and "params[c]: (nan+1j) has a part that is not finite" in res.stderr


@pytest.mark.parametrize("what", ["weights not HDF5", "model.keras not a zip"])
def test_a_keras_archive_whose_weights_cannot_be_read_is_refused_naming_its_member(tmp_path, what):
    """A model.keras whose model.weights.h5 is not HDF5 was imported (only the zip's CRC
    was read back) and every load then raised h5py's raw OSError; errors about the inner
    zip named ftstore's temporary copy of it."""
    src = FIXTURES / "tf-keras3-head.zip"
    with zipfile.ZipFile(src) as z:
        inner = zipfile.ZipFile(io.BytesIO(z.read("autoencoder/model.keras")))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for n in inner.namelist():
            out.writestr(n, b"this is not an HDF5 file" if n == "model.weights.h5" else inner.read(n))
    data = buf.getvalue() if what == "weights not HDF5" else b"not a zip at all"
    arch = _rewrite(src, tmp_path / "wts.h5.zip", {"autoencoder/model.keras": data})
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "s"), check_rc=2)
    expected = ("wts.h5.zip: autoencoder/model.keras: model.weights.h5: not an HDF5 file" if what == "weights not HDF5"
                else "wts.h5.zip: autoencoder/model.keras: not a readable zip archive")
    assert expected in res.stderr and res.stderr.count("\n") == 1 and not (tmp_path / "s").exists()


def test_a_refused_name_or_metadata_creates_no_store(tmp_path):
    """import-legacy converted the whole archive and created the store before the name
    (or the metadata) was refused; save creates nothing then, and neither does this now."""
    arch = FIXTURES / f"{TORCH_ARCHIVE}.zip"
    res = run_cli("import-legacy", str(arch), "--name", "bad/name", "--store", str(tmp_path / "s"), check_rc=2)
    assert "invalid artifact name 'bad/name'" in res.stderr and not (tmp_path / "s").exists()
    from ftstore.api import import_legacy
    from ftstore.errors import BadInputError

    with pytest.raises(BadInputError, match="invalid metadata"):
        import_legacy(tmp_path / "s", arch, "x", metadata={"k" * 300: "v"})
    assert not (tmp_path / "s").exists()
