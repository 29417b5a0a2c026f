"""The decode proofs one repair writes (docs/format.md, "Decode proof"): one per rebuilt file,
in repair order (payload, sidecar, envelope), all with the repair's time, each linked to the
proof before it; a rebuilt envelope keeps none of the lost envelope's proofs, so its chain
starts with this repair's first proof (prev_proof_hash null), whatever its target."""

from __future__ import annotations

import pytest

from .conftest import files
from ftstore.codec import read_meta
from ftstore.documents import chain_problems
from ftstore.engine.integrity import check, repair
from ftstore.engine.leaves import read_envelope

NOW = 1_800_000_000_000


def _artifact(store, make_file, size=60_000):
    store.save(make_file(size), "a")
    paths = files(store, "a@1")
    return paths, read_meta(paths.sidecar)


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _targets_and_links(proofs):
    return [p.target for p in proofs], [p.prev_proof_hash for p in proofs], [p.proof_hash for p in proofs]


def test_everything_damaged_gives_payload_sidecar_envelope_in_a_new_chain(store, make_file):
    paths, meta = _artifact(store, make_file)
    _flip(paths.payload, 5)
    _flip(paths.sidecar, meta.repair_offset(0, 0))
    paths.envelope.unlink()
    res = repair(paths, check(paths), reason="scrub", now_ms=NOW)
    env = read_envelope(paths)
    targets, prevs, hashes = _targets_and_links(env.decode_proofs)
    assert targets == res.repaired == ["payload", "sidecar", "envelope"]
    assert prevs == [None, hashes[0], hashes[1]]
    assert [p.time_unix_ms for p in env.decode_proofs] == [NOW] * 3
    assert env.decode_proofs == res.proofs and chain_problems(env.decode_proofs) == []
    assert check(paths).intact


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("envelope", ["envelope"]),
        ("envelope+payload", ["payload", "envelope"]),
        ("envelope+sidecar-copy-a", ["sidecar", "envelope"]),
    ],
)
def test_a_rebuilt_envelope_starts_its_chain_with_the_first_proof_of_the_repair(store, make_file, damage, expected):
    paths, _ = _artifact(store, make_file)
    # an earlier repair leaves a proof in the envelope that is about to be lost
    _flip(paths.payload, 100)
    repair(paths, check(paths), reason="load", now_ms=NOW - 1)
    assert len(read_envelope(paths).decode_proofs) == 1
    paths.envelope.unlink()
    if "payload" in damage:
        _flip(paths.payload, 7)
    if "sidecar-copy-a" in damage:
        _flip(paths.sidecar, 20)
    repair(paths, check(paths), reason="scrub", now_ms=NOW)
    targets, prevs, hashes = _targets_and_links(read_envelope(paths).decode_proofs)
    assert targets == expected
    assert prevs == [None] + hashes[:-1]


def test_a_kept_envelope_extends_its_chain(store, make_file):
    paths, meta = _artifact(store, make_file)
    _flip(paths.payload, 100)
    repair(paths, check(paths), reason="load", now_ms=NOW - 1)
    [first] = read_envelope(paths).decode_proofs
    _flip(paths.payload, 200)
    _flip(paths.sidecar, meta.block_len + 3)
    repair(paths, check(paths), reason="scrub", now_ms=NOW)
    targets, prevs, hashes = _targets_and_links(read_envelope(paths).decode_proofs)
    assert targets == ["payload", "payload", "sidecar"]
    assert prevs == [None, first.proof_hash, hashes[1]]
    assert [p.time_unix_ms for p in read_envelope(paths).decode_proofs] == [NOW - 1, NOW, NOW]
