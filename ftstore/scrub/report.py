"""The scrub and drill report documents (``schemas/scrub-report.schema.json``,
``schemas/drill-report.schema.json``)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import msgspec
from msgspec import Meta

from ftstore.documents.envelope import NonNegInt, Strict
from ftstore.documents.strict_json import DECODE_ERRORS, reject_duplicate_keys
from ftstore.errors import EnvelopeError

ArtifactStatus = Literal["ok", "recovered", "failed"]


class DeepCheck(Strict):
    """Result of erasing sampled source symbols in memory and decoding them back."""

    stripes_probed: NonNegInt
    symbols_erased: NonNegInt
    recovered: bool


class ArtifactScrub(Strict, kw_only=True):
    ref: str
    status: ArtifactStatus
    damage: list[str] = []
    repaired: list[Literal["payload", "sidecar", "envelope"]] = []
    erased_source_symbols: NonNegInt = 0
    proofs: list[str] = []  # proof_hash of every decode proof recorded by this scrub
    error: Optional[str] = None
    deep: Optional[DeepCheck] = None
    bytes_read: NonNegInt = 0
    protected: bool = False  # a pending repair sidecar was built by this scrub


class Orphan(Strict):
    path: str
    reason: str
    removed: bool


class Totals(Strict):
    artifacts: NonNegInt
    ok: NonNegInt
    recovered: NonNegInt
    failed: NonNegInt
    orphans: NonNegInt
    bytes_read: NonNegInt


class ScrubOptions(Strict):
    repair: bool
    deep: bool
    subset: Optional[Annotated[str, Meta(pattern=r"^[0-9]+/[0-9]+$")]]
    max_rate_mb_s: Optional[float]
    remove_orphans: bool


class ScrubReport(Strict, kw_only=True):
    format: Literal["ftstore-scrub-report"] = "ftstore-scrub-report"
    schema_version: Literal[1] = 1
    store: str
    started_unix_ms: NonNegInt
    finished_unix_ms: NonNegInt
    options: ScrubOptions
    artifacts: list[ArtifactScrub]
    orphans: list[Orphan]
    totals: Totals
    health: Literal["healthy", "damaged"]


def decode_report(data: bytes) -> ScrubReport:
    try:
        report = msgspec.json.decode(data, type=ScrubReport)
    except DECODE_ERRORS as e:
        raise EnvelopeError(f"invalid scrub report: {e}") from None
    reject_duplicate_keys(data, "scrub report", EnvelopeError)
    return report


class Injection(Strict):
    round: NonNegInt
    ref: str
    fault: str
    detail: str
    expected: Literal["recovered", "failed"]
    status: str
    byte_identical: bool
    passed: bool


class DrillReport(Strict):
    format: Literal["ftstore-drill-report"] = "ftstore-drill-report"
    schema_version: Literal[1] = 1
    seed: int = 0
    rounds: NonNegInt = 0
    injections: list[Injection] = []
    passed: bool = True
