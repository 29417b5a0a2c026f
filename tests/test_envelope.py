import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftstore.documents import ARTIFACT_TYPES, Envelope, decode_envelope, encode_envelope, make_proof, seal
from ftstore.documents.envelope import RaptorQSection
from ftstore.errors import EnvelopeError

hexes = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "blake3:" + h)
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
rq = st.builds(
    RaptorQSection,
    symbol_size=st.sampled_from([256, 1024, 16384]),
    stripes=st.integers(0, 500),
    source_symbols=st.integers(0, 10**6),
    repair_symbols=st.integers(0, 10**5),
    overhead=st.floats(0.01, 1.0),
    library_version=st.just("2.0.0"),
    sidecar_size=st.integers(0, 2**40),
    sidecar_hash=hexes,
)
envelopes = st.builds(
    Envelope,
    artifact_id=st.text("0123456789abcdef", min_size=32, max_size=32),
    artifact_type=st.sampled_from(ARTIFACT_TYPES),
    name=names,
    version=st.integers(1, 10**6),
    size=st.integers(0, 2**50),
    source_hash=hexes,
    created_unix_ms=st.integers(0, 2**45),
    metadata=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=4),
    raptorq=st.none() | rq,
)


@given(envelopes)
def test_envelope_round_trip_is_exact(env):
    data = encode_envelope(env)
    back = decode_envelope(data)
    assert back == seal(env)
    assert encode_envelope(back) == data


@settings(max_examples=300)
@given(envelopes, st.data())
def test_any_mutated_byte_is_rejected_or_means_the_same(env, data):
    raw = bytearray(encode_envelope(env))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    try:
        back = decode_envelope(bytes(raw))
    except EnvelopeError:
        return
    # Only a change that parses to the same document (e.g. whitespace) may be accepted.
    assert back == seal(env)


def _doc(env):
    return msgspec.json.decode(encode_envelope(env))


@pytest.fixture
def sample():
    return Envelope(artifact_id="a" * 32, artifact_type="file", name="m", version=1, size=3,
                    source_hash="blake3:" + "1" * 64, created_unix_ms=1)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(extra=1), "extra"),
        (lambda d: d["scrub"].update(extra=1), "extra"),
        (lambda d: d.update(size="3"), "$.size"),
        (lambda d: d.pop("source_hash"), "source_hash"),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.update(source_hash="blake3:" + "A" * 64), "$.source_hash"),
        (lambda d: d.update(source_hash="blake3:" + "1" * 63), "$.source_hash"),
        (lambda d: d.update(artifact_type="weights"), "$.artifact_type"),
        (lambda d: d["scrub"].update(status="fine"), "$.scrub.status"),
        (lambda d: d.update(metadata={"k": 1}), "$.metadata"),
    ],
)
def test_strict_parse_names_the_field(sample, mutate, field):
    doc = _doc(sample)
    mutate(doc)
    with pytest.raises(EnvelopeError, match=field.replace("$", r"\$")):
        decode_envelope(msgspec.json.encode(doc))


def test_checksum_catches_damage_that_still_parses(sample):
    data = encode_envelope(sample).replace(b'"size": 3', b'"size": 4')
    with pytest.raises(EnvelopeError, match="checksum"):
        decode_envelope(data)


def test_proof_chain_detects_tampering():
    from ftstore.documents import chain_problems

    p1 = make_proof([], reason="t", target="payload", recovered_hash="blake3:" + "1" * 64, erased_source=[1, 2, 3, 9])
    p2 = make_proof([p1], reason="t", target="sidecar", recovered_hash="blake3:" + "2" * 64)
    assert chain_problems([p1, p2]) == []
    assert [(r.start, r.count) for r in p1.erased_source_symbols] == [(1, 3), (9, 1)]
    forged = msgspec.structs.replace(p1, reason="other")
    assert chain_problems([forged, p2])
    assert chain_problems([p2])


def _doc_string(text: str) -> str:
    """A JSON string as docs/format.md's canonical form writes it, from the document alone."""
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(short.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 else c) for c in text) + '"'


def test_canonical_strings_and_key_order_are_what_the_format_document_says():
    """The checksum covers every byte, so an independent writer must escape and sort as the
    document says: only quote, backslash and control characters escaped (lowercase hex),
    nothing else (not '/', '<', U+007F, U+2028, non-ASCII), keys by code point."""
    metadata = {"😀": "x", "｡": "y", "B": 'a"\\\x01\x1f\x7f/<>&\u2028é\n\t', "a": ""}
    env = seal(Envelope(artifact_id="0" * 32, artifact_type="file", name="m", version=1, size=0,
                        source_hash="blake3:" + "0" * 64, created_unix_ms=0, metadata=metadata))
    from ftstore.documents import canonical

    by_doc = "{" + ",".join(f"{_doc_string(k)}:{_doc_string(metadata[k])}" for k in sorted(metadata)) + "}"
    assert sorted(metadata) == ["B", "a", "｡", "😀"]  # code point order: U+FF61 before U+1F600
    assert f'"metadata":{by_doc},'.encode() in canonical(env)
    assert b"\\u001f" in canonical(env) and b"\x7f" in canonical(env) and "\u2028".encode() in canonical(env)
    assert decode_envelope(encode_envelope(env)) == env
