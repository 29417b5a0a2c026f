"""Hypothesis over every parser of untrusted bytes (the table in fuzz/targets.py): random
bytes and mutations of valid documents raise only ftstore's documented errors."""

import io
import pickle
import sys
import zipfile
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftstore.payloads.bundle_format import BundleManifest, ModelEntry, TensorInfo, to_snapshot
from ftstore.errors import FtstoreError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
from targets import PARSERS  # noqa: E402


def _bundle_zip() -> bytes:
    snap, arrays = to_snapshot({"N": 8, "gridsize": 2, "probe": np.ones((2, 2), np.complex64)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        man = BundleManifest(backend="pytorch", models=[ModelEntry(
            name="m", weights="weights/m.safetensors", weights_format="safetensors",
            tensors=[TensorInfo(name="w", dtype="float32", shape=[2])])])
        zf.writestr("manifest.json", msgspec.json.encode(man))
        zf.writestr("params.json", msgspec.json.encode(snap))
        for member, arr in arrays.items():
            b = io.BytesIO()
            np.save(b, arr, allow_pickle=False)
            zf.writestr(member, b.getvalue())
        zf.writestr("weights/m.safetensors", b"\0" * 16)
    return buf.getvalue()


SEEDS = {
    "manifest": msgspec.json.encode(BundleManifest(backend="tensorflow", models=[])),
    "params": msgspec.json.encode(to_snapshot({"N": 8, "f": 1.5, "l": [1, (2, None)], "d": {"a": True}})[0]),
    "pickle": pickle.dumps({"N": 8, "gridsize": 2, "probe": np.ones((3,), np.complex64), "t": (1, 2.5, "x")}),
    "bundle": _bundle_zip(),
    "zip": _bundle_zip(),
    "report": b'{"format":"ftstore-scrub-report","schema_version":1,"store":"s","started_unix_ms":1,'
              b'"finished_unix_ms":2,"options":{"repair":false,"deep":false,"subset":null,'
              b'"max_rate_mb_s":null,"remove_orphans":false},"artifacts":[],"orphans":[],'
              b'"totals":{"artifacts":0,"ok":0,"recovered":0,"failed":0,"orphans":0,"bytes_read":0},'
              b'"health":"healthy"}',
}


def _run(name: str, data: bytes) -> None:
    try:
        PARSERS[name](data)
    except FtstoreError:
        pass


def test_seeds_are_valid():
    for name, data in SEEDS.items():
        PARSERS[name](data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_random_bytes(name, data):
    _run(name, data)


@pytest.mark.parametrize("name", sorted(SEEDS))
@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_valid_inputs(name, data):
    raw = bytearray(SEEDS[name])
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "dup"]))
        if op == "flip":
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 32))]
        else:
            raw[pos:pos] = raw[pos : pos + data.draw(st.integers(1, 32))]
        if not raw:
            break
    _run(name, bytes(raw))
