"""Model bundles on CPU: round trips, load order, every documented error, legacy import."""

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ftstore import params
from ftstore.bundles import BackendMismatchError, load_bundle, save_bundle
from ftstore.api import import_legacy
from ftstore.errors import BadInputError
from ftstore.engine.integrity import check
from ftstore.bundles.restricted_pickle import UnsafePickleError
from ftstore.engine.leaves import read_envelope

from .conftest import run_cli, files

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _isolated_params(clean_params_cfg):
    """Every test here starts with an empty ftstore.params.cfg."""


def torch_model(cfg):
    g = cfg["gridsize"] ** 2
    return torch.nn.Sequential(
        torch.nn.Conv2d(g, int(4 * cfg.get("n_filters_scale", 1)), 3, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(int(4 * cfg.get("n_filters_scale", 1)) * cfg["N"] ** 2, 8),
    )


TORCH_BUILDERS = {"autoencoder": torch_model, "diffraction_to_obj": torch_model}
TRAIN_CFG = {"N": 8, "gridsize": 2, "n_filters_scale": 2, "object.big": True, "probe.big": False,
             "intensity_scale": np.float32(1.5), "probe": (np.arange(64) * 1j).reshape(8, 8).astype(np.complex64),
             "nphotons": 1e9, "label": "run-7", "offset": None}


def _torch_bundle(store, name="tb"):
    params.cfg.update(TRAIN_CFG)
    models = {k: b(params.cfg) for k, b in TORCH_BUILDERS.items()}
    save_bundle(store, name, models, "pytorch")
    return models


def _same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype
        else:
            assert a[k] == b[k] and type(a[k]) is type(b[k]), k


def test_pytorch_round_trip_restores_params_before_building(store):
    models = _torch_bundle(store)
    params.cfg.clear()
    params.cfg.update(N=64, gridsize=1, n_filters_scale=1, extra="kept")  # conflicting values
    res = load_bundle(store, "tb", "pytorch", builders=TORCH_BUILDERS)
    assert res.backend == "pytorch"
    _same_params({k: params.cfg[k] for k in TRAIN_CFG}, TRAIN_CFG)
    x = torch.rand(2, 4, 8, 8)
    for name, m in models.items():
        assert torch.equal(res.models[name](x), m(x))


def test_caller_supplied_target_dict(store):
    _torch_bundle(store)
    mine = {"N": 3}
    params.cfg.clear()
    load_bundle(store, "tb", "pytorch", builders=TORCH_BUILDERS, target=mine)
    assert mine["N"] == 8 and params.cfg == {}


def test_shape_mismatch_is_an_error_and_params_roll_back(store):
    _torch_bundle(store)
    params.cfg.clear()
    params.cfg.update(N=64, gridsize=1)
    before = dict(params.cfg)

    def wrong(cfg):
        return torch_model({**cfg, "n_filters_scale": 3})

    with pytest.raises(ValueError, match="do not fit"):
        load_bundle(store, "tb", "pytorch", builders={"autoencoder": wrong, "diffraction_to_obj": wrong})
    assert params.cfg == before


def test_a_failing_builder_that_changed_values_in_place_leaves_params_as_they_were(store):
    """Values the bundle does not overwrite, changed in place by a builder that then fails,
    are put back into the same objects: code holding ``cfg['history']`` sees its old list."""
    _torch_bundle(store)
    history, extra, mask = ["run-1"], {"lr": 0.1, "nested": {"a": [1]}}, np.zeros(4)
    params.cfg.clear()
    params.cfg.update(history=history, extra=extra, mask=mask, N=64)

    def meddling(cfg):
        cfg["history"].append("meddled")
        cfg["extra"]["nested"]["a"].append(2)
        cfg["extra"]["lr"] = 5.0
        cfg["mask"][:] = 7
        cfg["added"] = True
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError, match="builder failed"):
        load_bundle(store, "tb", "pytorch", builders={"autoencoder": meddling, "diffraction_to_obj": meddling})
    assert list(params.cfg) == ["history", "extra", "mask", "N"] and params.cfg["N"] == 64
    assert params.cfg["history"] is history and history == ["run-1"]
    assert params.cfg["extra"] is extra and extra == {"lr": 0.1, "nested": {"a": [1]}}
    assert params.cfg["mask"] is mask and not mask.any()


def test_values_changed_in_subtler_ways_are_put_back_too(store):
    """Dict and list subclasses, arrays reshaped, retyped or made read-only, and lists held
    in a tuple used to stay changed (skipped in silence)."""
    import collections

    _torch_bundle(store)
    od, dd = collections.OrderedDict(b=1, a=2), collections.defaultdict(list, k=[1])
    shaped, frozen, typed, inner = np.arange(6.0), np.arange(3.0), np.arange(4, dtype=np.int32), [1]
    held = (inner, "text")
    params.cfg.clear()
    params.cfg.update(od=od, dd=dd, shaped=shaped, frozen=frozen, typed=typed, held=held, N=64)

    def meddling(cfg):
        cfg["od"]["c"] = 3
        cfg["od"].move_to_end("b")
        cfg["dd"]["new"].append(2)
        cfg["shaped"].shape = (2, 3)
        cfg["shaped"][...] = 9
        cfg["frozen"][...] = 7
        cfg["frozen"].flags.writeable = False
        cfg["typed"].dtype = np.float32
        cfg["held"][0].append(2)
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError, match="builder failed"):
        load_bundle(store, "tb", "pytorch", builders={"autoencoder": meddling, "diffraction_to_obj": meddling})
    assert params.cfg["od"] is od and list(od.items()) == [("b", 1), ("a", 2)]
    assert params.cfg["dd"] is dd and dict(dd) == {"k": [1]} and dd.default_factory is list
    assert params.cfg["shaped"] is shaped and shaped.shape == (6,) and (shaped == np.arange(6.0)).all()
    assert params.cfg["frozen"] is frozen and frozen.flags.writeable and (frozen == np.arange(3.0)).all()
    assert params.cfg["typed"] is typed and typed.dtype == np.int32 and (typed == np.arange(4)).all()
    assert params.cfg["held"] is held and inner == [1]



def test_a_dict_holding_something_uncopyable_gets_its_items_back(store):
    """A settings dict holding a lock cannot be deep-copied; it was kept by reference only,
    so a failing builder's edits to it stayed. Its items come back, the same objects, each
    put back in turn (the list inside it too)."""
    import threading

    _torch_bundle(store)
    lock, tags = threading.Lock(), ["a"]
    runtime = {"lock": lock, "device": "cpu", "tags": tags}
    params.cfg.clear()
    params.cfg.update(runtime=runtime, N=64)

    def meddling(cfg):
        cfg["runtime"]["device"] = "cuda"
        cfg["runtime"]["tags"].append("b")
        cfg["runtime"]["new"] = 1
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError, match="builder failed"):
        load_bundle(store, "tb", "pytorch", builders={"autoencoder": meddling, "diffraction_to_obj": meddling})
    assert params.cfg["runtime"] is runtime and list(runtime) == ["lock", "device", "tags"]
    assert runtime["lock"] is lock and runtime["device"] == "cpu" and runtime["tags"] is tags and tags == ["a"]


def test_loads_into_one_dict_from_two_threads_take_turns(store):
    """Two threads loading into one dict: a builder read the other bundle's params, and two
    failing loads left one bundle's params behind (the second snapshot held the first
    load's). Each builder now sees its own bundle's params, and after two failures the dict
    is as it was. The first builder waits (up to 2 s) for the second load's builder to start,
    which, taking turns, it cannot."""
    import threading

    save_bundle(store, "relu", {"m": torch.nn.Linear(2, 2)}, "pytorch", params={"N": 64, "gridsize": 2, "act": "relu"})
    save_bundle(store, "tanh", {"m": torch.nn.Linear(2, 2)}, "pytorch", params={"N": 64, "gridsize": 2, "act": "tanh"})
    cfg = {"N": 128, "gridsize": 1, "act": "none"}
    for fail in (False, True):
        relu_in, tanh_in, relu_done = threading.Event(), threading.Event(), threading.Event()
        seen, results = {}, {}

        def build_relu(c):
            relu_in.set()
            tanh_in.wait(2.0)
            seen["relu"] = c["act"]
            if fail:
                raise RuntimeError("relu failed")
            return torch.nn.Linear(2, 2)

        def build_tanh(c):
            tanh_in.set()
            seen["tanh"] = c["act"]
            if fail:
                relu_done.wait(2.0)  # fail after the first load has failed and put cfg back
                raise RuntimeError("tanh failed")
            return torch.nn.Linear(2, 2)

        def load(ref, build, done=None):
            try:
                load_bundle(store, ref, "pytorch", builders={"m": build}, params=cfg)
                results[ref] = "ok"
            except RuntimeError:
                results[ref] = "failed"
            finally:
                if done is not None:
                    done.set()

        first = threading.Thread(target=load, args=("relu", build_relu, relu_done))
        first.start()
        assert relu_in.wait(30)
        second = threading.Thread(target=load, args=("tanh", build_tanh))
        second.start()
        first.join(60)
        second.join(60)
        assert seen == {"relu": "relu", "tanh": "tanh"}
        assert results == {"relu": "failed" if fail else "ok", "tanh": "failed" if fail else "ok"}
        if fail:
            assert cfg == {"N": 128, "gridsize": 1, "act": "none"}
        cfg.update(N=128, gridsize=1, act="none")

def test_documented_errors(store, monkeypatch):
    _torch_bundle(store)
    params.cfg.clear()
    with pytest.raises(ValueError, match="allowed values are 'tensorflow', 'pytorch'"):
        load_bundle(store, "tb", "jax")
    with pytest.raises(BackendMismatchError, match="'pytorch' bundle.*backend 'tensorflow'"):
        load_bundle(store, "tb", "tensorflow")
    with pytest.raises(KeyError, match="autoencoder"):
        load_bundle(store, "tb", "pytorch", builders=TORCH_BUILDERS, models=["decoder"])
    with pytest.raises(ValueError, match="architecture cannot be reconstructed"):
        save_bundle(store, "x", {"m": torch_model(TRAIN_CFG)}, "pytorch", params={"N": 8})
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(RuntimeError, match=r"backend 'pytorch' was selected.*pip install"):
        load_bundle(store, "tb", "pytorch", builders=TORCH_BUILDERS)
    assert params.cfg == {}


def test_bundle_missing_architecture_params_is_refused_on_load(store, tmp_path):
    from ftstore.payloads.bundle_format import write_bundle
    from ftstore.payloads.bundle_format import ModelEntry

    w = tmp_path / "w"
    w.write_bytes(b"")
    path = tmp_path / "b.zip"
    write_bundle(path, "pytorch", [(ModelEntry(name="m", weights="weights/m.safetensors", weights_format="safetensors", tensors=[]), w)], {"N": 8})
    store.save(path, "nogrid", "model_bundle")
    with pytest.raises(ValueError, match="gridsize.*cannot be reconstructed"):
        load_bundle(store, "nogrid", "pytorch", builders={"m": torch_model})


def test_damaged_bundle_is_repaired_on_load(store):
    models = _torch_bundle(store)
    paths = files(store, "tb")
    data = bytearray(paths.payload.read_bytes())
    for pos in range(100, len(data), len(data) // 5):
        data[pos] ^= 0xFF
    paths.payload.write_bytes(bytes(data))
    res = load_bundle(store, "tb", "pytorch", builders=TORCH_BUILDERS)
    x = torch.rand(1, 4, 8, 8)
    assert torch.equal(res.models["autoencoder"](x), models["autoencoder"](x))
    assert check(paths).intact and read_envelope(paths).decode_proofs[-1].target == "payload"


def test_cli_recognises_bundles_and_shows_manifest_and_params(store, tmp_path):
    _torch_bundle(store)
    out = tmp_path / "b.zip"
    run_cli("load", "tb", "-o", str(out), store=store, check_rc=0)
    res = run_cli("save", str(out), "--name", "again", "--json", store=store, check_rc=0)
    assert json.loads(res.stdout)["envelope"]["artifact_type"] == "model_bundle"
    show = json.loads(run_cli("show", "again", "--json", store=store, check_rc=0).stdout)
    assert show["content"]["manifest"]["backend"] == "pytorch"
    assert show["content"]["params"]["N"] == 8
    assert show["content"]["params"]["probe"] == {"array": {"dtype": "<c8", "shape": [8, 8]}}
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("manifest.json", '{"format": "ftstore-bundle", "format_version": 9}')
    res = run_cli("save", str(bad), "--name", "bad", "--type", "model_bundle", store=store, check_rc=2)
    assert "format_version" in res.stderr


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ftstore-pwned",))


def _legacy_archive(path, version, files):
    dill = pytest.importorskip("dill")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.dill", dill.dumps({"models": ["autoencoder", "diffraction_to_obj"], "version": version}))
        for name, data in files.items():
            zf.writestr(name, data)


def _legacy_params():
    dill = pytest.importorskip("dill")
    return dill.dumps({**TRAIN_CFG, "_version": "1.0"})


def test_import_legacy_pytorch_archive(store, tmp_path):
    models = {k: b(TRAIN_CFG) for k, b in TORCH_BUILDERS.items()}
    files = {"custom_objects.dill": pytest.importorskip("dill").dumps({"ReLU": torch.nn.ReLU})}  # names a class only
    for name, m in models.items():
        buf = io.BytesIO()
        torch.save(m.state_dict(), buf)
        files[f"{name}/model.pth"] = buf.getvalue()
        files[f"{name}/params.dill"] = _legacy_params()
    arch = tmp_path / "wts.h5.zip"
    _legacy_archive(arch, "2.0-pytorch", files)
    if os.path.exists("/tmp/ftstore-pwned"):
        os.unlink("/tmp/ftstore-pwned")
    res = run_cli("import-legacy", str(arch), "--name", "legacy", store=store, check_rc=0)
    assert "pytorch bundle" in res.stdout
    assert not os.path.exists("/tmp/ftstore-pwned")
    out = load_bundle(store, "legacy", "pytorch", builders=TORCH_BUILDERS)
    x = torch.rand(1, 4, 8, 8)
    assert torch.equal(out.models["diffraction_to_obj"](x), models["diffraction_to_obj"](x))
    assert params.cfg["N"] == 8 and "_version" not in params.cfg


def test_import_legacy_refuses_a_hostile_params_pickle(store, tmp_path):
    dill = pytest.importorskip("dill")
    arch = tmp_path / "wts.h5.zip"
    _legacy_archive(arch, "2.0-pytorch", {"autoencoder/params.dill": dill.dumps({"N": Evil()}),
                                           "autoencoder/model.pth": b""})
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        import_legacy(store, arch, "x")
    assert store.keys() == [] and not os.path.exists("/tmp/ftstore-pwned")
    res = run_cli("import-legacy", str(arch), "--name", "x", store=store, check_rc=2)
    assert "refusing to unpickle" in res.stderr


def test_import_legacy_refuses_a_custom_objects_pickle_that_would_run_code(store, tmp_path):
    """ftstore never unpickles custom_objects.dill, but PtychoPINN's loader would: an archive
    whose custom_objects.dill calls code on load is refused, from its opcodes alone."""
    dill = pytest.importorskip("dill")
    arch = tmp_path / "wts.h5.zip"
    files = {"custom_objects.dill": dill.dumps(Evil()), "autoencoder/params.dill": _legacy_params(),
             "diffraction_to_obj/params.dill": _legacy_params()}
    _legacy_archive(arch, "2.0-pytorch", files)
    with pytest.raises(UnsafePickleError, match=r"custom_objects.dill: would run code when unpickled \(REDUCE after posix.system"):
        import_legacy(store, arch, "x")
    res = run_cli("import-legacy", str(arch), "--name", "x", "--store", str(tmp_path / "new-store"), check_rc=2)
    assert res.stderr.count("\n") == 1 and "would run code" in res.stderr
    assert store.keys() == [] and not (tmp_path / "new-store").exists() and not os.path.exists("/tmp/ftstore-pwned")


def test_import_legacy_refuses_a_pickled_module_in_model_pth(store, tmp_path):
    buf = io.BytesIO()
    torch.save(torch_model(TRAIN_CFG), buf)  # a whole pickled module, not a state_dict
    arch = tmp_path / "wts.h5.zip"
    _legacy_archive(arch, "2.0-pytorch", {"autoencoder/params.dill": _legacy_params(), "autoencoder/model.pth": buf.getvalue(),
                                           "diffraction_to_obj/params.dill": _legacy_params()})
    with pytest.raises(BadInputError, match="not a plain state_dict"):
        import_legacy(store, arch, "x")


def test_import_legacy_rejects_unknown_versions(store, tmp_path):
    arch = tmp_path / "wts.h5.zip"
    _legacy_archive(arch, "3.0", {})
    with pytest.raises(BadInputError, match="unknown archive version '3.0'"):
        import_legacy(store, arch, "x")


def test_new_document_fields_need_format_version_2(tmp_path):
    """A reader of version 1 documents never sees fields it does not know: the writer uses
    version 2 only when it needs the new fields, and a version 1 document carrying them is
    refused."""
    import msgspec

    from ftstore.payloads.bundle_format import read_bundle, write_bundle
    from ftstore.payloads.bundle_format import LegacySource, ModelEntry, ParamsSnapshot, from_snapshot, to_snapshot
    from ftstore.bundles.restricted_pickle import TensorflowTensor

    plain, _ = to_snapshot({"N": 8, "probe": np.ones(2, np.complex64)})
    assert plain.format_version == 1 and b"framework" not in msgspec.json.encode(plain)
    tensor, arrays = to_snapshot({"N": 8, "probe": TensorflowTensor(np.ones(2, np.complex64))})
    assert tensor.format_version == 2 and tensor.values["probe"].framework == "tensorflow"
    assert from_snapshot(tensor, lambda t: arrays[t.member], as_tensor=lambda a: ("tensor", a.shape))["probe"] == ("tensor", (2,))
    downgraded = msgspec.json.decode(msgspec.json.encode(tensor).replace(b'"format_version":2', b'"format_version":1'), type=ParamsSnapshot)
    with pytest.raises(BadInputError, match="needs params snapshot format_version 2"):
        from_snapshot(downgraded, lambda t: arrays[t.member])

    w = tmp_path / "w"
    w.write_bytes(b"")
    entry = ModelEntry(name="m", weights="weights/m.safetensors", weights_format="safetensors", tensors=[])
    path = tmp_path / "b.zip"
    write_bundle(path, "pytorch", [(entry, w)], {"N": 8, "gridsize": 1},
                 LegacySource(archive_version="2.0-pytorch", models=["m", "ae"], placeholders=["ae"]))
    manifest, _, z = read_bundle(path)
    z.__exit__(None, None, None)
    assert manifest.format_version == 2 and manifest.legacy.placeholders == ["ae"]
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp_path / "v1.zip", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data.replace(b'"format_version":2', b'"format_version":1') if info.filename == "manifest.json" else data)
    with pytest.raises(BadInputError, match="need format_version 2"):
        read_bundle(tmp_path / "v1.zip")


def test_save_and_load_name_the_params_dict_by_module_path(store, tmp_path, monkeypatch):
    (tmp_path / "mycfg.py").write_text("cfg = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mycfg

    mycfg.cfg.update(TRAIN_CFG)
    models = {k: b(mycfg.cfg) for k, b in TORCH_BUILDERS.items()}
    save_bundle(store, "by-path", models, "pytorch", params="mycfg:cfg")
    mycfg.cfg.clear()
    load_bundle(store, "by-path", "pytorch", builders=TORCH_BUILDERS, params="mycfg:cfg")
    _same_params({k: mycfg.cfg[k] for k in TRAIN_CFG}, TRAIN_CFG)
    assert params.cfg == {}
    with pytest.raises(ValueError, match="not both"):
        load_bundle(store, "by-path", "pytorch", builders=TORCH_BUILDERS, params="mycfg:cfg", target={})
    sys.modules.pop("mycfg", None)


def files_path(store, ref: str):
    return files(store, ref).payload


def test_legacy_params_that_share_values_are_stored_once_or_refused_when_they_would_explode(store, tmp_path):
    """A params.dill that shares an array 300 times stores it once (and loads it back shared);
    one that shares each list level twice, 40 levels deep (a 2 KB pickle, 2**40 values
    written out), is refused at once instead of running for ever."""
    dill = pytest.importorskip("dill")
    models = {k: b(TRAIN_CFG) for k, b in TORCH_BUILDERS.items()}
    big = np.arange(50_000, dtype="<f8")
    nested: list = [0, 0]
    for _ in range(40):
        nested = [nested, nested]
    for name, extra, rc in [("shared", {"views": [big] * 300}, 0), ("exploding", {"bomb": nested}, 2)]:
        files = {}
        for m_name, m in models.items():
            buf = io.BytesIO()
            torch.save(m.state_dict(), buf)
            files[f"{m_name}/model.pth"] = buf.getvalue()
            files[f"{m_name}/params.dill"] = dill.dumps({**TRAIN_CFG, **extra})
        arch = tmp_path / f"{name}.zip"
        _legacy_archive(arch, "2.0-pytorch", files)
        res = run_cli("import-legacy", str(arch), "--name", name, store=store, check_rc=rc, timeout=60)
        if rc:
            assert "more than 1000000 values" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    with zipfile.ZipFile(files_path(store, "shared@1")) as z:
        npy = [n for n in z.namelist() if n.endswith(".npy")]
        assert sum(z.getinfo(n).file_size for n in npy) < 3 * big.nbytes  # not 300 copies
    out = load_bundle(store, "shared", "pytorch", builders=TORCH_BUILDERS)
    views = out.params["views"]
    assert len(views) == 300 and all(v is views[0] for v in views) and np.array_equal(views[0], big)
    assert [k.ref for k in store.keys()] == ["shared@1"]


def test_a_params_member_referenced_many_times_is_read_once(store, tmp_path):
    """A bundle made by hand whose params.json names one 1 MiB .npy 2000 times: read and
    held once, not 2000 times (2 GiB)."""
    _torch_bundle(store, "tb")
    src = files_path(store, "tb@1")
    buf = io.BytesIO()
    np.save(buf, np.arange(1 << 17, dtype="<f8"))
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    doc = json.loads(members["params.json"])
    ref = {"type": "tensor", "member": "params/999.npy", "dtype": "<f8", "shape": [1 << 17]}
    doc["values"]["many"] = {"type": "list", "items": [ref] * 2000}
    members["params.json"] = json.dumps(doc).encode()
    members["params/999.npy"] = buf.getvalue()
    hand_made = tmp_path / "hand-made.zip"
    with zipfile.ZipFile(hand_made, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    code = ("import resource, sys; from ftstore import Store; from ftstore.bundles import load_bundle; "
            f"import tests.test_backends as t; r = load_bundle(Store.open({str(store.url)!r}), 'hm', 'pytorch', "
            "builders=t.TORCH_BUILDERS, params={}); many = r.params['many']; "
            "assert len(many) == 2000 and all(m is many[0] for m in many); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    run_cli("save", str(hand_made), "--name", "hm", store=store, check_rc=0)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[-1]) < 1500  # MiB, with torch imported; 2000 reads held ~2 GiB more


@pytest.mark.parametrize(
    "npy, why",
    [
        (b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }".ljust(128 + 10 - 1, b" ") + b"\n" + bytes(16),
         "header describes 8000000000000 bytes"),
        (b"PK\x03\x04 an npz, not an npy", "magic string is not correct"),
        (b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(128 + 10 - 1, b" ") + b"\n" + bytes(8),
         "not a plain .npy array"),
    ],
)
def test_a_params_npy_that_is_not_what_it_claims_is_refused_in_one_line(store, tmp_path, npy, why):
    """numpy allocates what an .npy header claims before reading (a 100-byte file claiming
    8 TB gave MemoryError, exit 3), and np.load of a zip returns an NpzFile."""
    _torch_bundle(store, "tb")
    with zipfile.ZipFile(files_path(store, "tb@1")) as z:
        members = {n: z.read(n) for n in z.namelist()}
    doc = json.loads(members["params.json"])
    doc["values"]["x"] = {"type": "tensor", "member": "params/999.npy", "dtype": "<f8", "shape": [3]}
    members["params.json"], members["params/999.npy"] = json.dumps(doc).encode(), npy
    hostile = tmp_path / "hostile.zip"
    with zipfile.ZipFile(hostile, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    res = run_cli("save", str(hostile), "--name", "h", store=store, check_rc=2)
    assert why in res.stderr and "params/999.npy" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("weights", [b"not safetensors at all", (1 << 40).to_bytes(8, "little") + b"{}"])
def test_weights_that_are_not_safetensors_are_a_clear_error_on_load(store, tmp_path, weights):
    """A bundle made by hand: its checksum proves only that it is what was saved."""
    _torch_bundle(store, "tb")
    with zipfile.ZipFile(files_path(store, "tb@1")) as z:
        members = {n: z.read(n) for n in z.namelist()}
    for n in members:
        if n.endswith(".safetensors"):
            members[n] = weights
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    store.save(bad, "bad")
    with pytest.raises(BadInputError, match="not a readable safetensors file"):
        load_bundle(store, "bad", "pytorch", builders=TORCH_BUILDERS, params={})


def test_an_untouched_read_only_array_is_no_cause_for_a_rollback_warning(store, recwarn):
    _torch_bundle(store)
    frozen = np.frombuffer(bytes(range(16)), dtype=np.uint8)  # read-only, and cannot be made writable
    params.cfg.clear()
    params.cfg.update(frozen=frozen, N=64)

    def failing(cfg):
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError):
        load_bundle(store, "tb", "pytorch", builders={"autoencoder": failing, "diffraction_to_obj": failing})
    assert params.cfg["frozen"] is frozen and not [w for w in recwarn if "put back" in str(w.message)]


def _masked():
    return np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])


def _intenum():
    import enum

    return enum.IntEnum("Mode", "A B").B


def _namedtuple():
    import collections

    return collections.namedtuple("Pair", "a b")(1, 2)


@pytest.mark.parametrize("key,make,message", [
    ("mask", _masked, "a numpy.ma.MaskedArray would come back as its base type"),
    ("mode", _intenum, "would come back as its base type"),
    ("pair", _namedtuple, "would come back as its base type"),
    ("tag", lambda: "x\udcff", "a string that is not valid Unicode (a lone surrogate)"),
    ("seed", lambda: 10 ** 5000, "an int of more than 4300 digits"),
    ("phase", lambda: complex(float("nan"), 0.0), "has a part that is not finite"),
], ids=["masked-array", "intenum", "namedtuple", "surrogate", "huge-int", "complex-nan"])
def test_params_that_would_not_come_back_as_they_are_are_refused_at_save(store, key, make, message):
    """A masked array came back without its mask (other values under it), an IntEnum or
    namedtuple as a plain int or tuple; the others raised raw errors from the JSON encoder."""
    with pytest.raises(BadInputError, match=re.escape(message)):
        save_bundle(store, "p", {"m": torch.nn.Linear(1, 1)}, "pytorch", params={"N": 1, "gridsize": 1, key: make()})
    assert store.versions("p") == []


def test_numpy_scalars_and_plain_values_still_round_trip(store):
    """The refusal of subclasses leaves numpy's scalars (np.float64 is a float subclass)
    and dict subclasses (their items) alone."""
    import collections

    cfg = {"N": 1, "gridsize": 1, "f": np.float64(0.5), "s": np.str_("x"), "c": np.complex64(1 + 2j),
           "od": collections.OrderedDict(b=1, a=2), "big": 10 ** 300, "z": complex(1.5, -2.0)}
    save_bundle(store, "p", {"m": torch.nn.Linear(1, 1)}, "pytorch", params=cfg)
    target = {}
    res = load_bundle(store, "p", "pytorch", builders={"m": lambda c: torch.nn.Linear(1, 1)}, params=target)
    assert res.params["f"] == 0.5 and type(res.params["f"]) is np.float64 and res.params["s"] == "x"
    assert res.params["c"] == np.complex64(1 + 2j) and res.params["od"] == {"b": 1, "a": 2}
    assert res.params["big"] == 10 ** 300 and res.params["z"] == complex(1.5, -2.0)


def test_show_describes_numpy_scalars_json_cannot_hold_as_such(store, tmp_path):
    """A complex numpy scalar or a long double among the params made `show` exit 3."""
    cfg = {"N": 1, "gridsize": 1, "c": np.complex128(1 + 2j), "c0": np.array(3j), "ld": np.longdouble("1.5")}
    save_bundle(store, "p", {"m": torch.nn.Linear(1, 1)}, "pytorch", params=cfg)
    res = run_cli("show", "p", "--json", store=store, check_rc=0)
    shown = json.loads(res.stdout)["content"]["params"]
    assert shown["c"] == {"complex": [1.0, 2.0]} and shown["c0"] == {"complex": [0.0, 3.0]}
    assert shown["ld"]["scalar"]["value"] == "1.5"


def test_a_builder_saving_from_a_helper_thread_and_a_forked_child_never_wait_forever(store):
    """The params lock is held across builders: a save from a helper thread a builder waits
    for must not need it, and a child forked while another thread holds it must get its own."""
    import threading

    save_bundle(store, "b", {"m": torch.nn.Linear(2, 2)}, "pytorch", params={"N": 1, "gridsize": 1})
    cfg = {"N": 1, "gridsize": 1}

    def saving_in_a_thread(c):
        m = torch.nn.Linear(2, 2)
        t = threading.Thread(target=save_bundle, args=(store, "snap", {"m": m}, "pytorch"), kwargs={"params": cfg})
        t.start()
        t.join(60)
        assert not t.is_alive()
        return m

    load_bundle(store, "b", "pytorch", params=cfg, builders={"m": saving_in_a_thread})
    assert store.versions("snap") == [1]
    inside, release = threading.Event(), threading.Event()

    def slow(c):
        inside.set()
        release.wait(60)
        return torch.nn.Linear(2, 2)

    holder = threading.Thread(target=load_bundle, args=(store, "b", "pytorch"),
                              kwargs={"params": cfg, "builders": {"m": slow}})
    holder.start()
    assert inside.wait(60)
    pid = os.fork()
    if pid == 0:  # the child: a load of its own, which waited forever for the parent's thread's lock
        import signal

        signal.alarm(60)
        try:
            load_bundle(store, "b", "pytorch", params=cfg, builders={"m": lambda c: torch.nn.Linear(2, 2)})
        finally:
            os._exit(0)
    release.set()
    holder.join(60)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_params_arrays_come_back_exact_writable_and_in_their_order(store):
    """Arrays are laid over the member's own buffer (one copy of a large array, not two,
    while a bundle is read): values, byte order, memory order and writability as np.load
    gives them."""
    cfg = {"N": 1, "gridsize": 1, "f": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
           "be": np.arange(5, dtype=">i4"), "empty": np.zeros((2, 0, 3), "f2"), "s": np.array(["ab", "c"])}
    save_bundle(store, "p", {"m": torch.nn.Linear(1, 1)}, "pytorch", params=cfg)
    res = load_bundle(store, "p", "pytorch", builders={"m": lambda c: torch.nn.Linear(1, 1)}, params={})
    for k in ("f", "be", "empty", "s"):
        got = res.params[k]
        assert got.dtype == cfg[k].dtype and got.shape == cfg[k].shape and got.tobytes() == cfg[k].tobytes()
        assert got.flags.writeable
    assert res.params["f"].flags.f_contiguous
    res.params["f"][0, 0] = 7.0
