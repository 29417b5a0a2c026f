import json

import pytest

from .conftest import run_cli

MACHINE = {"cpu": "x86_64", "cores": 2, "memory_bytes": 24 << 30, "os": "linux", "python": "3.11"}


def _baseline(tmp_path, name, **p50s):
    doc = {"format": "ftstore-benchmark-baseline", "format_version": 1, "name": "bench",
           "metrics": {k: {"unit": "ms", "p50": v, "p95": v * 1.2, "p99": v * 1.5, "samples": 50}
                       for k, v in p50s.items()},
           "machine": MACHINE}
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path, doc


def test_bench_compare_exit_codes(store, tmp_path):
    base, doc = _baseline(tmp_path, "base.json", load=100.0, save=200.0)
    run_cli("save", str(base), "--name", "perf", "--type", "benchmark_baseline", store=store, check_rc=0)
    same, _ = _baseline(tmp_path, "same.json", load=103.0, save=195.0)
    run_cli("bench", "compare", "perf", str(same), store=store, check_rc=0)
    slow, _ = _baseline(tmp_path, "slow.json", load=110.0, save=200.0)
    res = run_cli("bench", "compare", "perf", str(slow), "--json", store=store, check_rc=1)
    verdicts = {m["metric"]: m["verdict"] for m in json.loads(res.stdout)["metrics"]}
    assert verdicts == {"load": "regression", "save": "ok"}
    run_cli("bench", "compare", "perf", str(slow), "--threshold", "15%", store=store, check_rc=0)
    missing, _ = _baseline(tmp_path, "missing.json", load=100.0)
    res = run_cli("bench", "compare", "perf", str(missing), store=store, check_rc=1)
    assert "MISSING" in res.stdout
    doc["metrics"]["tput"] = {"unit": "MB/s", "p50": 500.0, "p95": 450.0, "p99": 400.0, "samples": 5, "better": "higher"}
    base.write_text(json.dumps(doc))
    run_cli("save", str(base), "--name", "perf2", "--type", "benchmark_baseline", store=store, check_rc=0)
    doc["metrics"]["tput"]["p50"] = 400.0
    base.write_text(json.dumps(doc))
    res = run_cli("bench", "compare", "perf2", str(base), "--json", store=store, check_rc=1)
    assert {m["metric"]: m["verdict"] for m in json.loads(res.stdout)["metrics"]}["tput"] == "regression"
    run_cli("bench", "compare", "perf", str(tmp_path / "nope.json"), store=store, check_rc=2)
    run_cli("bench", "compare", "perf", str(same), "--threshold", "abc", store=store, check_rc=2)
    for gate in ("nan", "NaN%", "inf", "-5%"):  # NaN passes every comparison: a gate nothing fails
        res = run_cli("bench", "compare", "perf", str(slow), "--threshold", gate, store=store, check_rc=2)
        assert "threshold" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d["metrics"]["load"].pop("unit"), "unit"),
        (lambda d: d["metrics"]["load"].update(samples=0), "samples"),
        (lambda d: d["metrics"]["load"].update(p50="fast"), "p50"),
        (lambda d: d["machine"].update(gpu="x"), "gpu"),
        (lambda d: d.update(format_version=2), "format_version"),
    ],
)
def test_malformed_baselines_are_rejected_naming_the_field(store, tmp_path, mutate, field):
    path, doc = _baseline(tmp_path, "b.json", load=1.0)
    mutate(doc)
    path.write_text(json.dumps(doc))
    res = run_cli("save", str(path), "--name", "b", "--type", "benchmark_baseline", store=store, check_rc=2)
    assert field in res.stderr
    assert store.keys() == []


def test_conformance_snapshots_are_validated_and_shown(store, tmp_path):
    snap = {"format": "ftstore-conformance-snapshot", "format_version": 1, "suite": "parity",
            "cases": [{"name": "fft", "status": "pass", "observed": 1.0001, "expected": 1.0, "tolerance": 1e-3},
                      {"name": "probe", "status": "fail", "observed": [1.0, 2.0], "expected": [1.0, 2.5],
                       "message": "probe drift"}]}
    p = tmp_path / "snap.json"
    p.write_text(json.dumps(snap))
    run_cli("save", str(p), "--name", "snap", "--type", "conformance_snapshot", store=store, check_rc=0)
    show = json.loads(run_cli("show", "snap", "--json", store=store, check_rc=0).stdout)
    assert show["content"]["cases"][1]["message"] == "probe drift"
    snap["cases"][0]["status"] = "passed"
    p.write_text(json.dumps(snap))
    res = run_cli("save", str(p), "--name", "snap", "--type", "conformance_snapshot", store=store, check_rc=2)
    assert "status" in res.stderr
    p.write_text("{not json")
    run_cli("save", str(p), "--name", "snap", "--type", "conformance_snapshot", store=store, check_rc=2)


@pytest.mark.parametrize("spoil", ["encrypted", "unknown compression", "corrupt deflate"])
def test_a_zip_whose_manifest_cannot_be_read_is_saved_as_a_plain_file(store, tmp_path, spoil):
    """Every save without --type looks for a bundle manifest; a zip whose manifest.json is
    encrypted, compressed by an unknown method or corrupt is just a file, never exit 3."""
    import struct
    import zipfile

    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if spoil == "corrupt deflate" else zipfile.ZIP_STORED) as z:
        z.writestr("manifest.json", b'{"format": "ftstore-bundle"}' * 10)
    data = bytearray(path.read_bytes())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    if spoil == "encrypted":
        data[local + 6] |= 1
        data[central + 8] |= 1
    elif spoil == "unknown compression":
        data[local + 8 : local + 10] = data[central + 10 : central + 12] = struct.pack("<H", 97)
    else:
        start = local + 30 + struct.unpack("<H", data[local + 26 : local + 28])[0]
        data[start : start + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    run_cli("save", str(path), "--name", "z", store=store, check_rc=0)
    assert json.loads(run_cli("show", "z", "--json", store=store).stdout)["envelope"]["artifact_type"] == "file"
