"""A JSON key given twice makes a document ambiguous (readers disagree on which value
counts), so every on-disk document ftstore parses refuses it, naming the key: envelopes,
sidecar header copies, scrub reports, bundle manifests and params snapshots, typed
payloads, the store marker. A stored envelope refused this way is damage: `verify`,
`load --no-heal` and `scrub` report it, and `scrub --repair` rebuilds it from the sidecar."""

from __future__ import annotations

import json
import struct

import msgspec
import numpy as np
import pytest

from ftstore import Store
from ftstore.payloads.bundle_format import BundleManifest, ModelEntry, ParamsSnapshot, TensorInfo, decode_doc, to_snapshot
from ftstore.codec.sidecar import TRAILER_MAGIC, SidecarError, build_block, read_meta
from ftstore.documents import decode_envelope
from ftstore.documents.strict_json import reject_duplicate_keys
from ftstore.errors import BadInputError, EnvelopeError
from ftstore.hashing import SYMBOL_HASH_BYTES
from ftstore.engine.integrity import check, repair
from ftstore.payloads.reports import parse_typed
from ftstore.api import scrub
from ftstore.scrub.report import decode_report
from ftstore.engine.leaves import read_envelope

from .conftest import ArtifactFiles, run_cli, files


def with_duplicate(doc: object, path: tuple, first: object) -> bytes:
    """``doc`` as JSON with the key at ``path`` written twice: ``first``, then its real value."""

    def enc(o: object, at: tuple) -> str:
        if isinstance(o, dict):
            items = []
            for k, v in o.items():
                if at == path[:-1] and k == path[-1]:
                    items.append(f"{json.dumps(k)}:{json.dumps(first)}")
                items.append(f"{json.dumps(k)}:{enc(v, at + (k,))}")
            return "{" + ",".join(items) + "}"
        if isinstance(o, list):
            return "[" + ",".join(enc(v, at + (i,)) for i, v in enumerate(o)) + "]"
        return json.dumps(o)

    out = enc(doc, ())
    assert out.count(json.dumps(path[-1]) + ":") >= 2, "the key to duplicate is not in the document"
    return out.encode()


def get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


# -- the helper ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, where",
    [
        ('{"a": 1, "a": 1}', "`$.a`"),
        ('{"a": {"b": [0, {"c": 1, "d": 2, "c": 3}]}}', "`$.a.b[1].c`"),
        ('{"m": {"key with space": "x", "key with space": "y"}}', '`$.m["key with space"]`'),
        ('{"m": {"line\\nbreak": 1, "line\\nbreak": 1}}', '`$.m["line\\nbreak"]`'),
    ],
)
def test_a_repeated_key_is_refused_naming_it_and_its_place(text, where):
    with pytest.raises(BadInputError, match="duplicate key") as e:
        reject_duplicate_keys(text.encode(), "doc.json")
    msg = str(e.value)
    assert msg.startswith("doc.json: ") and where in msg and "\n" not in msg
    reject_duplicate_keys(json.dumps(json.loads(text)).encode(), "doc.json")  # the same without the repeat


def test_the_same_key_in_different_objects_is_fine():
    reject_duplicate_keys(b'{"a": {"x": 1}, "b": {"x": 1}, "c": [{"x": 1}, {"x": 2}], "x": 0}', "doc.json")


def test_text_the_check_cannot_parse_is_refused_not_waved_through():
    with pytest.raises(BadInputError, match="doc.json: JSON nested too deeply"):
        reject_duplicate_keys(b"[" * 100_000 + b"]" * 100_000, "doc.json")
    with pytest.raises(BadInputError, match="doc.json: JSON that cannot be checked"):
        reject_duplicate_keys(b'{"a": 1', "doc.json")
    # numbers are never converted, so no size limit of Python's int parser applies
    reject_duplicate_keys(b'{"a": ' + b"9" * 10_000 + b', "b": 1e999999}', "doc.json")


def test_a_long_key_is_shortened_in_the_message():
    key = "k" * 5000
    with pytest.raises(BadInputError) as e:
        reject_duplicate_keys(json.dumps({"m": 1}).replace('"m"', f'"{key}": 1, "{key}"').encode(), "doc.json")
    assert len(str(e.value)) < 400
    deep = b'{"a":' * 900 + b'{"x": 1, "x": 2}' + b"}" * 900
    with pytest.raises(BadInputError, match="duplicate key 'x' at `\\$[.][.][.].*[.]a[.]x`") as e:
        reject_duplicate_keys(deep, "doc.json")
    assert len(str(e.value)) < 400


# -- every parser of an on-disk document ------------------------------------------------------


def _manifest() -> dict:
    man = BundleManifest(backend="pytorch", models=[ModelEntry(
        name="m", weights="weights/m.safetensors", weights_format="safetensors",
        tensors=[TensorInfo(name="w", dtype="float32", shape=[2])])])
    return msgspec.to_builtins(man)


def _params() -> dict:
    return msgspec.to_builtins(to_snapshot({"N": 8, "gridsize": 2, "a": np.ones(2)})[0])


def _report(store) -> dict:
    return msgspec.to_builtins(scrub(store, write_report=False))


CONFORMANCE = {"format": "ftstore-conformance-snapshot", "format_version": 1, "suite": "s",
               "cases": [{"name": "c", "status": "pass", "observed": 1.0, "expected": 1.0}]}
BASELINE = {"format": "ftstore-benchmark-baseline", "format_version": 1, "name": "b",
            "metrics": {"load": {"unit": "ms", "p50": 1.0, "p95": 2.0, "p99": 3.0, "samples": 5}},
            "machine": {"cpu": "x", "cores": 2, "memory_bytes": 1, "os": "linux", "python": "3.11"}}

PARSERS = {
    "manifest": (_manifest, ("models", 0, "weights"), lambda d: decode_doc(d, BundleManifest, "manifest.json")),
    "params": (_params, ("values", "N", "value"), lambda d: decode_doc(d, ParamsSnapshot, "params.json")),
    "conformance": (lambda: CONFORMANCE, ("cases", 0, "status"),
                    lambda d: parse_typed(d, "conformance_snapshot", "snap.json")),
    "baseline": (lambda: BASELINE, ("metrics", "load", "p50"), lambda d: parse_typed(d, "benchmark_baseline", "b.json")),
    "report": (None, ("totals", "ok"), decode_report),
}


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_every_document_parser_refuses_a_repeated_key(kind, store):
    make, path, parse = PARSERS[kind]
    doc = _report(store) if make is None else make()
    parse(json.dumps(doc).encode())  # accepted as written once
    with pytest.raises(BadInputError, match=f"duplicate key '{path[-1]}'"):
        parse(with_duplicate(doc, path, get(doc, path)))


def test_the_store_marker_refuses_a_repeated_key(tmp_path):
    root = tmp_path / "s"
    Store.open(root, create=True)
    (root / "ftstore-store.json").write_text('{"format": "other", "format": "ftstore-store", "version": 1}')
    with pytest.raises(BadInputError, match="duplicate key 'format'"):
        Store.open(root)


def _saved(store, make_file, size=5000):
    store.save(make_file(size), "a", metadata={"k": "v"})
    return files(store, "a@1")


@pytest.mark.parametrize(
    "path, first",
    [
        (("size",), 999),  # the last value is the true one: the checksum alone would pass it
        (("raptorq", "symbol_size"), 512),
        (("metadata", "k"), "w"),
        (("decode_proofs",), []),
    ],
)
def test_an_envelope_with_a_repeated_key_is_refused_even_when_its_checksum_matches(store, make_file, path, first):
    paths = _saved(store, make_file)
    doc = json.loads(paths.envelope.read_bytes())
    data = with_duplicate(doc, path, first)
    assert msgspec.json.decode(data) == doc  # last value wins: a lenient reader sees the true envelope
    with pytest.raises(EnvelopeError, match=f"duplicate key '{path[-1]}' at `\\$.{'.'.join(path)}`"):
        decode_envelope(data, "envelope.json")


def _sidecar_with_header(sidecar: bytes, header: bytes) -> bytes:
    """The sidecar rebuilt with another header JSON in both metadata copies (checksums redone)."""
    meta_len = struct.unpack("<Q", sidecar[-16:-8])[0]
    hlen = struct.unpack("<I", sidecar[8:12])[0]
    tables = sidecar[12 + hlen : meta_len - 32]
    assert len(tables) % SYMBOL_HASH_BYTES == 0
    repair_region = sidecar[meta_len : len(sidecar) - 16 - meta_len]
    n_src = json.loads(sidecar[12 : 12 + hlen])["source_symbols"] * SYMBOL_HASH_BYTES
    block = build_block(header, tables[:n_src], tables[n_src:])
    return block + repair_region + block + struct.pack("<Q", len(block)) + TRAILER_MAGIC


def test_a_sidecar_header_with_a_repeated_key_is_refused(store, make_file):
    paths = _saved(store, make_file)
    sidecar = paths.sidecar.read_bytes()
    hlen = struct.unpack("<I", sidecar[8:12])[0]
    header = json.loads(sidecar[12 : 12 + hlen])
    paths.sidecar.write_bytes(_sidecar_with_header(sidecar, json.dumps(header).encode()))
    assert read_meta(paths.sidecar).header.artifact.size == 5000  # rebuilt faithfully: still readable
    paths.sidecar.write_bytes(_sidecar_with_header(sidecar, with_duplicate(header, ("artifact", "size"), 1)))
    with pytest.raises(SidecarError, match="copy A: header: duplicate key 'size' at `\\$.artifact.size`"):
        read_meta(paths.sidecar)


# -- the commands --------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["wrong value first", "wrong value last"])
def test_verify_load_and_scrub_refuse_it_and_scrub_repair_rebuilds_it(store, make_file, tmp_path, order):
    paths = _saved(store, make_file)
    before = read_envelope(paths)
    doc = json.loads(paths.envelope.read_bytes())
    data = with_duplicate(doc, ("size",), 999)
    if order == "wrong value last":
        assert b'"size":999,"size":5000' in data
        data = data.replace(b'"size":999,"size":5000', b'"size":5000,"size":999')
    paths.envelope.write_bytes(data)
    named = "envelope.json: duplicate key 'size' at `$.size`"

    res = run_cli("verify", store=store, check_rc=1)
    assert "DAMAGED  a@1" in res.stdout and named in res.stdout
    res = run_cli("load", "a", "--no-heal", "-o", str(tmp_path / "out"), store=store, check_rc=1)
    assert named in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    res = run_cli("scrub", store=store, check_rc=1)
    assert "failed    a@1" in res.stdout and named in res.stdout
    assert paths.envelope.read_bytes() == data  # nothing written without --repair

    res = run_cli("scrub", "--repair", store=store, check_rc=0)
    assert "recovered a@1  repaired envelope" in res.stdout
    run_cli("verify", store=store, check_rc=0)
    after = read_envelope(paths)
    assert msgspec.structs.replace(after, decode_proofs=[], scrub=before.scrub, checksum=before.checksum) == before
    [proof] = after.decode_proofs
    assert (proof.target, proof.reason, proof.prev_proof_hash) == ("envelope", "scrub", None)
    assert after.scrub.status == "recovered"


def test_library_check_and_repair_on_both_kinds_of_store(any_store, make_file):
    any_store.save(make_file(3000), "a")
    paths = any_store.resolve("a")
    files = ArtifactFiles(any_store, paths)
    doc = json.loads(files.read("envelope.json"))
    files.write("envelope.json", with_duplicate(doc, ("name",), "b"))
    h = any_store.check(paths)
    assert "duplicate key 'name'" in h.envelope_problem
    report = scrub(any_store, repair=True, write_report=False)
    assert [(a.status, a.repaired) for a in report.artifacts] == [("recovered", ["envelope"])]
    assert any_store.check(paths).intact
    assert json.loads(files.read("envelope.json"))["name"] == "a"


def test_repair_keeps_working_through_a_refused_envelope(store, make_file):
    paths = _saved(store, make_file)
    doc = json.loads(paths.envelope.read_bytes())
    paths.envelope.write_bytes(with_duplicate(doc, ("artifact_id",), "0" * 32))
    res = repair(paths, check(paths), reason="test")
    assert res.repaired == ["envelope"] and check(paths).intact
