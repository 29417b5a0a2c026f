"""The envelope: the typed document that describes and vouches for one stored artifact."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import msgspec
from msgspec import Meta

ENVELOPE_FORMAT = "ftstore-envelope"
ENVELOPE_SCHEMA_VERSION = 1

ZERO_HASH = "blake3:" + "0" * 64  # stands for a hash not yet known (a checksum being computed)

Blake3Hash = Annotated[str, Meta(pattern=r"^blake3:[0-9a-f]{64}$", description="blake3:<64 lowercase hex>")]
ArtifactId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$", description="uuid4 as 32 lowercase hex")]
ArtifactName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
NonNegInt = Annotated[int, Meta(ge=0)]
PosInt = Annotated[int, Meta(ge=1)]
MetaKey = Annotated[str, Meta(min_length=1, max_length=256)]
MetaValue = Annotated[str, Meta(max_length=65536)]

ArtifactType = Literal[
    "model_bundle", "conformance_snapshot", "benchmark_baseline", "ledger", "manifest", "file"
]
ARTIFACT_TYPES: tuple[str, ...] = ArtifactType.__args__  # type: ignore[attr-defined]
ProofTarget = Literal["payload", "sidecar", "envelope"]
ScrubStatus = Literal["ok", "recovered", "failed"]


class Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of on-disk documents: unknown fields are errors, values are immutable."""


class RaptorQSection(Strict):
    """Parameters of the repair sidecar; ``None`` in the envelope while protection is pending."""

    symbol_size: Annotated[int, Meta(ge=8, le=65528, multiple_of=8)]
    stripes: NonNegInt
    source_symbols: NonNegInt
    repair_symbols: NonNegInt
    overhead: Annotated[float, Meta(ge=0.0, le=1.0)]
    library_version: Annotated[str, Meta(max_length=64)]
    sidecar_size: NonNegInt
    sidecar_hash: Blake3Hash


class ScrubSection(Strict, kw_only=True):
    status: ScrubStatus = "ok"
    last_ok_unix_ms: Optional[NonNegInt] = None
    last_scrub_unix_ms: Optional[NonNegInt] = None


class SymbolRange(Strict, array_like=True):
    """A run of symbol indices ``[start, start + count)``, written as a 2-element array."""

    start: NonNegInt
    count: PosInt


class StripeRepair(Strict):
    """Which repair symbols (by index within the stripe's repair set) one stripe's decode used."""

    stripe: NonNegInt
    repair_symbols: list[SymbolRange]


class DecodeProof(Strict):
    """One recovery event. ``proof_hash`` covers every other field, ``prev_proof_hash`` included,
    so an artifact's proofs form a hash chain."""

    time_unix_ms: NonNegInt
    reason: Annotated[str, Meta(max_length=256)]
    target: ProofTarget
    erased_source_symbols: list[SymbolRange]
    erased_repair_symbols: NonNegInt
    repair_symbols_used: list[StripeRepair]
    recovered_hash: Blake3Hash
    prev_proof_hash: Optional[Blake3Hash]
    proof_hash: Blake3Hash


class Envelope(Strict, kw_only=True):
    format: Literal["ftstore-envelope"] = ENVELOPE_FORMAT
    schema_version: Literal[1] = ENVELOPE_SCHEMA_VERSION
    artifact_id: ArtifactId
    artifact_type: ArtifactType
    name: ArtifactName
    version: PosInt
    size: NonNegInt
    source_hash: Blake3Hash
    created_unix_ms: NonNegInt
    metadata: dict[MetaKey, MetaValue] = {}
    raptorq: Optional[RaptorQSection] = None
    scrub: ScrubSection = ScrubSection()
    decode_proofs: list[DecodeProof] = []
    checksum: Blake3Hash = ZERO_HASH


class ArtifactEssentials(Strict):
    """The envelope fields a lost envelope is rebuilt from; the sidecar header keeps a copy
    (the version comes from where the artifact is filed)."""

    artifact_id: ArtifactId
    artifact_type: ArtifactType
    name: ArtifactName
    size: NonNegInt
    source_hash: Blake3Hash
    created_unix_ms: NonNegInt
    metadata: dict[MetaKey, MetaValue]


def essentials_of(env: Envelope) -> ArtifactEssentials:
    return ArtifactEssentials(
        artifact_id=env.artifact_id,
        artifact_type=env.artifact_type,
        name=env.name,
        size=env.size,
        source_hash=env.source_hash,
        created_unix_ms=env.created_unix_ms,
        metadata=dict(env.metadata),
    )


def envelope_from(ess: ArtifactEssentials, version: int, rq: RaptorQSection | None, **extra: object) -> Envelope:
    """A new envelope for ``version`` of the artifact ``ess`` describes."""
    return Envelope(
        artifact_id=ess.artifact_id,
        artifact_type=ess.artifact_type,
        name=ess.name,
        version=version,
        size=ess.size,
        source_hash=ess.source_hash,
        created_unix_ms=ess.created_unix_ms,
        metadata=dict(ess.metadata),
        raptorq=rq,
        **extra,  # type: ignore[arg-type]
    )
