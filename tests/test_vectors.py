"""The published test vectors (docs/vectors/, made by scripts/make_vectors.py, described in
docs/format.md): they are what ftstore writes and does today, they only change with the
format version, and they carry what a second implementation needs to check itself."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import blake3
import msgspec
import pytest
import raptorq

from ftstore.codec.layout import MAX_STRIPE_BYTES, MAX_STRIPE_SYMBOLS
from ftstore.codec.rq import library_version
from ftstore.codec.sidecar import SidecarHeader
from ftstore.documents import DecodeProof, decode_envelope, encode_envelope
from ftstore.documents.envelope import ENVELOPE_SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "docs" / "vectors"
sys.path.insert(0, str(ROOT / "scripts"))
import make_vectors  # noqa: E402

MANIFEST = json.loads((VECTORS / "vectors.json").read_bytes())

# BLAKE3 of vectors.json as published for each (envelope schema_version, sidecar_version,
# raptorq binding). vectors.json holds the BLAKE3 of every other vector file, so this pins
# them all. Never edit a published entry: a format change gets a new format version and a
# new entry; a new raptorq binding gets a new entry once its vectors are checked to differ
# from the old ones only in `library_version` and the hashes that cover it.
PUBLISHED = {
    (1, 1, "2.0.0"): "blake3:722ee978dec18823c98c6e628df9867c389eed6fc7e7896a3e5eeb23e8bff637",
    # sidecar_version 2: the header names the artifact version (`artifact_version`)
    (1, 2, "2.0.0"): "blake3:3e5563c1b3c59d42590bb5ec4dccd80eb555b87cf1be35a5f26e029c2089a714",
}

SIDECAR_VERSION = SidecarHeader.__struct_defaults__[SidecarHeader.__struct_fields__.index("sidecar_version")]
REGENERATE = "python scripts/make_vectors.py"


def _b3(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def _cases():
    return [(a, c) for a in MANIFEST["artifacts"] for c in a["damaged_variants"]]


def test_vectors_regenerate_byte_for_byte(tmp_path):
    out = tmp_path / "vectors"
    make_vectors.generate(out)
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(VECTORS).as_posix() for p in VECTORS.rglob("*") if p.is_file())
    assert made == committed, "docs/vectors/ holds other files than the generator writes"
    changed = [f for f in made if (out / f).read_bytes() != (VECTORS / f).read_bytes()]
    assert not changed, (
        f"ftstore no longer writes or repairs the published test vectors byte for byte: {', '.join(changed)} "
        f"differ (vectors made with envelope schema_version {MANIFEST['envelope_schema_version']}, sidecar_version "
        f"{MANIFEST['sidecar_version']}, raptorq {MANIFEST['raptorq_library_version']}). Readers of the published "
        "format depend on these bytes: if the change is a bug, fix it; if it is a deliberate format change, bump the "
        f"format version (envelope schema_version / sidecar_version), run `{REGENERATE}`, and add the new vectors "
        "to PUBLISHED in tests/test_vectors.py"
    )


def test_published_vectors_only_change_with_the_format_version():
    key = (MANIFEST["envelope_schema_version"], MANIFEST["sidecar_version"], MANIFEST["raptorq_library_version"])
    assert key == (ENVELOPE_SCHEMA_VERSION, SIDECAR_VERSION, library_version()), (
        f"the vectors were made for {key}, this ftstore writes "
        f"{(ENVELOPE_SCHEMA_VERSION, SIDECAR_VERSION, library_version())}: run `{REGENERATE}` and add the new "
        "entry to PUBLISHED"
    )
    assert key in PUBLISHED, f"no published vectors for {key}: add the BLAKE3 of docs/vectors/vectors.json to PUBLISHED"
    assert _b3((VECTORS / "vectors.json").read_bytes()) == PUBLISHED[key], (
        f"docs/vectors/ changed, but the format version did not: vectors published for {key} never change. "
        "Bump the format version (and regenerate) for a format change; restore the vectors otherwise"
    )


def test_manifest_describes_the_committed_files():
    assert (MANIFEST["format"], MANIFEST["vectors_version"]) == ("ftstore-test-vectors", 1)
    names = [a["name"] for a in MANIFEST["artifacts"]]
    assert names == ["empty", "one-byte", "two-stripes", "overhead-50"]
    for a in MANIFEST["artifacts"]:
        data = {f: (VECTORS / spec["path"]).read_bytes() for f, spec in a["files"].items()}
        for f, spec in a["files"].items():
            assert (len(data[f]), _b3(data[f])) == (spec["size"], spec["blake3"]), (a["name"], f)
        size = a["files"]["payload"]["size"]
        seed = f"ftstore test vector payload: {a['name']}".encode()
        assert data["payload"] == blake3.blake3(seed).digest(length=size)
        env = decode_envelope(data["envelope.json"], a["name"])
        assert (env.size, env.source_hash, env.raptorq.sidecar_hash) == (size, _b3(data["payload"]), _b3(data["sidecar.ftrq"]))
        assert a["raptorq"]["stripes"] == env.raptorq.stripes == len(a["raptorq"]["stripe_objects"])
    stripes = {a["name"]: a["raptorq"]["stripes"] for a in MANIFEST["artifacts"]}
    assert stripes == {"empty": 0, "one-byte": 1, "two-stripes": 2, "overhead-50": 1}
    outcomes = {c["outcome"] for _, c in _cases()}
    assert outcomes == {"repaired", "unrecoverable"}


# -- checking the vectors the way a second implementation would --------------------------------


def _tables(sidecar: bytes, n_source: int, n_repair: int) -> tuple[list[bytes], list[bytes]]:
    """The H16 tables of metadata block A, read straight from the bytes as format.md lays them out."""
    assert sidecar[:8] == b"FTSRQSC1"
    (hlen,) = struct.unpack("<I", sidecar[8:12])
    at = 12 + hlen
    src = [sidecar[at + 16 * j : at + 16 * (j + 1)] for j in range(n_source)]
    at += 16 * n_source
    rep = [sidecar[at + 16 * k : at + 16 * (k + 1)] for k in range(n_repair)]
    return src, rep


def _h16(sym: bytes) -> bytes:
    return blake3.blake3(sym).digest(length=16)


@pytest.mark.parametrize("art", MANIFEST["artifacts"], ids=lambda a: a["name"])
def test_stripe_parameters_are_what_the_binding_encodes(art):
    """Each stripe object as the manifest describes it (its file symbols, zero-padded; its
    OTI; ESIs; where its repair symbols sit) encodes to exactly the stored repair symbols."""
    rq = art["raptorq"]
    payload = (VECTORS / art["files"]["payload"]["path"]).read_bytes()
    sidecar = (VECTORS / art["files"]["sidecar.ftrq"]["path"]).read_bytes()
    t, s_count = rq["symbol_size"], rq["stripes"]
    src_h, rep_h = _tables(sidecar, rq["source_symbols"], sum(rq["repair_symbols_per_stripe"]))
    first_rep = 0
    for st in rq["stripe_objects"]:
        s, k, r = st["stripe"], st["source_symbols"], st["repair_symbols"]
        assert st["oti"] == {"F": k * t, "T": t, "Z": 1, "N": 1, "Al": 8}
        assert st["repair_esis"] == [[k, r]] and st["source_esis"] == [[0, k]]
        syms = [payload[j * t : (j + 1) * t].ljust(t, b"\0") for j in range(s, rq["source_symbols"], s_count)]
        assert len(syms) == k and [_h16(x) for x in syms] == src_h[s::s_count]
        packets = raptorq.Encoder.with_defaults(b"".join(syms), t).get_encoded_packets(r)
        ids = [(p[0], int.from_bytes(p[1:4], "big")) for p in packets]
        assert ids == [(0, esi) for esi in range(k + r)]  # one source block (Z = 1), ESIs 0..K+R-1
        assert [p[4:] for p in packets[:k]] == syms  # no sub-blocking (N = 1): source symbols verbatim
        stored = [sidecar[st["repair_offset"] + i * t : st["repair_offset"] + (i + 1) * t] for i in range(r)]
        assert [p[4:] for p in packets[k:]] == stored
        assert [_h16(x) for x in stored] == rep_h[first_rep : first_rep + r]
        first_rep += r


def _expand(rs):
    return [i for start, count in rs for i in range(start, start + count)]


@pytest.mark.parametrize("art, case", _cases(), ids=lambda x: x["name"])
def test_each_payload_proof_replays_on_a_bare_rfc6330_decoder(art, case, tmp_path):
    """Apply the operations, find the erasures by hash, and decode each damaged stripe from
    its intact source symbols plus exactly the repair symbols the proof lists: the stripe
    comes back, and one repair symbol fewer is not enough (the proof lists the shortest
    prefix of intact repair symbols that decodes)."""
    d = tmp_path / "files"
    d.mkdir()
    for f, spec in art["files"].items():
        (d / f).write_bytes((VECTORS / spec["path"]).read_bytes())
    for op in case["operations"]:
        make_vectors.apply(op, d)
    assert {f: _b3((d / f).read_bytes()) if (d / f).exists() else None for f in make_vectors.FILES} == case["damaged_files"]
    proofs = [p for p in case.get("decode_proofs", []) if p["target"] == "payload"]
    if not proofs:
        return
    [proof] = proofs
    rq = art["raptorq"]
    t, s_count, n = rq["symbol_size"], rq["stripes"], rq["source_symbols"]
    orig = (VECTORS / art["files"]["payload"]["path"]).read_bytes()
    damaged = (d / "payload").read_bytes() if (d / "payload").exists() else b""
    sidecar = (VECTORS / art["files"]["sidecar.ftrq"]["path"]).read_bytes()
    now_sidecar = (d / "sidecar.ftrq").read_bytes()
    src_h, rep_h = _tables(sidecar, n, sum(rq["repair_symbols_per_stripe"]))
    used = {u["stripe"]: _expand(u["repair_symbols"]) for u in proof["repair_symbols_used"]}
    erased_all = []
    bad_repair = 0
    for st in rq["stripe_objects"]:
        s, k, r = st["stripe"], st["source_symbols"], st["repair_symbols"]
        sym = [damaged[j * t : (j + 1) * t].ljust(t, b"\0") for j in range(s, n, s_count)]
        erased = [i for i in range(k) if _h16(sym[i]) != src_h[i * s_count + s]]
        erased_all += [i * s_count + s for i in erased]
        if not erased:
            continue
        rep = [now_sidecar[st["repair_offset"] + i * t : st["repair_offset"] + (i + 1) * t] for i in range(r)]
        start = sum(rq["repair_symbols_per_stripe"][:s])
        intact_rep = [i for i in range(r) if _h16(rep[i]) == rep_h[start + i]]
        bad_repair += r - len(intact_rep)
        assert used[s] == intact_rep[: len(used[s])]

        def decode(repair_ids):
            dec = raptorq.Decoder.with_defaults(st["oti"]["F"], st["oti"]["T"])
            out = None
            for i in range(k):
                if i not in erased:
                    out = dec.decode(bytes([0]) + i.to_bytes(3, "big") + sym[i]) or out
            for i in repair_ids:
                out = dec.decode(bytes([0]) + (k + i).to_bytes(3, "big") + rep[i]) or out
            return out

        want = b"".join(orig[j * t : (j + 1) * t].ljust(t, b"\0") for j in range(s, n, s_count))
        assert decode(used[s]) == want
        assert decode(used[s][:-1]) is None
    assert _expand(proof["erased_source_symbols"]) == sorted(erased_all)
    assert proof["erased_repair_symbols"] == bad_repair


# -- the RFC 6330 parameters format.md names -----------------------------------------------------


@pytest.mark.parametrize(
    "length, symbol_size, oti_hex",
    [
        # ObjectTransmissionInformation::with_defaults(F, T).serialize() of the raptorq crate
        # 2.0.0: objects beyond ftstore's stripe limits, where Z and N are not 1.
        (56403 * 16384 * 3, 16384, "00a53e400000400003005a08"),
        (2000 * 65528, 65528, "0007cfc18000fff801000d08"),
        (1280 * 8192, 8192, "0000a0000000200001000208"),
        # and two within them: a stripe of 1024 symbols of 256 bytes; T < 64 (alignment 1)
        (1024 * 256, 256, "000004000000010001000108"),
        (56, 56, "000000003800003801000101"),
    ],
)
def test_parameters_follow_rfc6330_section_4_3_as_the_binding_applies_it(length, symbol_size, oti_hex):
    assert make_vectors.oti_hex(make_vectors.oti(length, symbol_size)) == oti_hex


def test_every_stripe_ftstore_accepts_is_one_source_block_without_sub_blocks():
    """Z = 1 and N = 1 for every symbol size readers accept and every stripe within the limits
    (Z and N only grow with the object, so the largest stripe of each symbol size decides)."""
    for t in range(8, 65529, 8):
        k = min(MAX_STRIPE_SYMBOLS, MAX_STRIPE_BYTES // t)
        p = make_vectors.oti(k * t, t)
        assert (p["Z"], p["N"], p["Al"]) == (1, 1, 8 if t >= 64 else 1), (t, k, p)


def test_the_vectors_show_the_proof_order_of_a_rebuilt_envelope():
    by_name = {(a["name"], c["name"]): c for a, c in _cases()}
    case = by_name[("one-byte", "payload-damaged-envelope-lost")]
    p0, p1 = case["decode_proofs"]
    assert (p0["target"], p1["target"]) == ("payload", "envelope")
    assert (p0["prev_proof_hash"], p1["prev_proof_hash"]) == (None, p0["proof_hash"])
    assert p0["time_unix_ms"] == p1["time_unix_ms"] == MANIFEST["repair"]["time_unix_ms"]


@pytest.mark.parametrize("art, case", [(a, c) for a, c in _cases() if c["outcome"] == "repaired"], ids=lambda x: x["name"])
def test_a_repair_gives_back_the_original_files_plus_its_proofs(art, case):
    """Payload and sidecar come back byte for byte (encoding is deterministic), and the
    envelope, kept or rebuilt, is the original one with the repair's proofs appended."""
    files = art["files"]
    after = case["repaired_files"]
    assert (after["payload"], after["sidecar.ftrq"]) == (files["payload"]["blake3"], files["sidecar.ftrq"]["blake3"])
    env = decode_envelope((VECTORS / files["envelope.json"]["path"]).read_bytes())
    proofs = msgspec.convert(case["decode_proofs"], list[DecodeProof])
    expected = encode_envelope(msgspec.structs.replace(env, decode_proofs=list(env.decode_proofs) + proofs))
    assert _b3(expected) == after["envelope.json"]
    assert [p.target for p in proofs] == case["repaired"]
