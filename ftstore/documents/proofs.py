"""Decode proofs: hash-chained records of every recovery, verifiable later."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import msgspec

from ftstore.hashing import hash_bytes
from ftstore.documents.envelope_json import canonical
from ftstore.documents.envelope import ZERO_HASH, DecodeProof, StripeRepair, SymbolRange



def ranges(indices: Iterable[int]) -> list[SymbolRange]:
    """Compress sorted-or-not indices into runs; bursts of damage stay short on disk."""
    out: list[SymbolRange] = []
    start = prev = None
    for i in sorted(set(indices)):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            out.append(SymbolRange(start=start, count=prev - start + 1))
        start = prev = i
    if start is not None:
        out.append(SymbolRange(start=start, count=prev - start + 1))
    return out


def expand(rs: Sequence[SymbolRange]) -> list[int]:
    return [i for r in rs for i in range(r.start, r.start + r.count)]


def proof_hash(p: DecodeProof) -> str:
    return hash_bytes(canonical(msgspec.structs.replace(p, proof_hash=ZERO_HASH)))


def make_proof(
    prev: Sequence[DecodeProof],
    *,
    reason: str,
    target: str,
    recovered_hash: str,
    erased_source: Iterable[int] = (),
    erased_repair: int = 0,
    repair_used: dict[int, Iterable[int]] | None = None,
    now_ms: int | None = None,
) -> DecodeProof:
    p = DecodeProof(
        time_unix_ms=now_ms if now_ms is not None else int(time.time() * 1000),
        reason=reason,
        target=target,  # type: ignore[arg-type]
        erased_source_symbols=ranges(erased_source),
        erased_repair_symbols=erased_repair,
        repair_symbols_used=[
            StripeRepair(stripe=s, repair_symbols=ranges(used)) for s, used in sorted((repair_used or {}).items())
        ],
        recovered_hash=recovered_hash,
        prev_proof_hash=prev[-1].proof_hash if prev else None,
        proof_hash=ZERO_HASH,
    )
    return msgspec.structs.replace(p, proof_hash=proof_hash(p))


def chain_problems(proofs: Sequence[DecodeProof]) -> list[str]:
    """Every break in an artifact's proof chain, as sentences; empty when the chain holds."""
    problems = []
    prev = None
    for i, p in enumerate(proofs):
        if p.prev_proof_hash != prev:
            problems.append(f"decode_proofs[{i}].prev_proof_hash does not link to the proof before it")
        if p.proof_hash != proof_hash(p):
            problems.append(f"decode_proofs[{i}].proof_hash does not match the record")
        prev = p.proof_hash
    return problems
