"""Checking one artifact and repairing it.

``check`` is read-only: it finds out which of envelope, sidecar and payload are intact.
``repair`` rebuilds what ``check`` found damaged, in this order: the payload (damaged
symbols decoded from good source and repair symbols, each checked against its symbol hash,
written over the bad ones, then the whole BLAKE3 checked), the sidecar (re-encoded from the
intact payload), the envelope (rebuilt from the sidecar's copy of its essentials). Sidecar
and envelope replace the damaged files atomically. Each repair gets a decode proof.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from .codec import SidecarError, SidecarMeta, check_and_decode, patch_in_place, read_meta, write_sidecar
from .codec.decoder import StripeOutcome
from .codec.sidecar import ArtifactEssentials, damaged_repair_symbols
from .envelopes import DecodeProof, Envelope, RaptorQSection, chain_problems, make_proof
from .errors import EnvelopeError, UnrecoverableError
from .hashing import hash_file
from .storage.local import replace_durably, tmp_path
from .store import ArtifactPaths, envelope_from, essentials_of, raptorq_section, read_envelope, write_envelope


@dataclass
class Health:
    paths: ArtifactPaths
    envelope: Envelope | None = None
    envelope_problem: str | None = None
    sidecar_problem: str | None = None
    payload_problem: str | None = None
    proof_problems: list[str] = field(default_factory=list)
    pending_protection: bool = False
    essentials: ArtifactEssentials | None = None

    @property
    def problems(self) -> list[str]:
        return [p for p in (self.envelope_problem, self.sidecar_problem, self.payload_problem) if p] + self.proof_problems

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def files_damaged(self) -> bool:
        """Damage that repair can act on (a broken proof chain is reported, not repaired)."""
        return bool(self.envelope_problem or self.sidecar_problem or self.payload_problem)


@dataclass
class RepairResult:
    repaired: list[str] = field(default_factory=list)  # targets rebuilt: payload / sidecar / envelope
    proofs: list[DecodeProof] = field(default_factory=list)
    erased_source: int = 0
    envelope: Envelope | None = None


def _sidecar_meta(paths: ArtifactPaths) -> tuple[SidecarMeta | None, str | None]:
    try:
        return read_meta(paths.sidecar), None
    except SidecarError as e:
        return None, str(e)


def check(paths: ArtifactPaths) -> Health:
    h = Health(paths)
    try:
        h.envelope = read_envelope(paths)
        h.essentials = essentials_of(h.envelope)
        h.proof_problems = chain_problems(h.envelope.decode_proofs)
    except EnvelopeError as e:
        h.envelope_problem = str(e)
    rq = h.envelope.raptorq if h.envelope else None
    if h.envelope is not None and rq is None:
        h.pending_protection = True
        if paths.sidecar.exists():
            h.sidecar_problem = f"{paths.ref}: sidecar present but the envelope records none"
    elif rq is not None:
        h.sidecar_problem = _file_problem(paths.sidecar, rq.sidecar_size, rq.sidecar_hash, "sidecar", paths.ref)
    else:
        meta, problem = _sidecar_meta(paths)
        if meta is None:
            h.sidecar_problem = f"{paths.ref}: {problem}"
        else:
            h.essentials = meta.header.artifact
            bad = damaged_repair_symbols(paths.sidecar, meta)
            if meta.copies_ok < 2 or bad:
                h.sidecar_problem = (
                    f"{paths.ref}: sidecar damaged ({2 - meta.copies_ok} of 2 metadata copies, {bad} repair symbols)"
                )
    if h.essentials is not None:
        h.payload_problem = _file_problem(
            paths.payload, h.essentials.size, h.essentials.source_hash, "payload", paths.ref
        )
    return h


def _file_problem(path: Path, size: int, digest: str, what: str, ref: str) -> str | None:
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        return f"{ref}: {what} is missing"
    got, _ = hash_file(path)
    if got == digest and actual_size == size:
        return None
    if actual_size != size:
        return f"{ref}: {what} is {actual_size} bytes, expected {size}"
    return f"{ref}: {what} BLAKE3 mismatch"


def repair(
    paths: ArtifactPaths, health: Health, reason: str, jobs: int | None = None, now_ms: int | None = None
) -> RepairResult:
    """Rebuild whatever ``health`` reports damaged. Raises :class:`UnrecoverableError` (and
    writes nothing) when the payload cannot be brought back to its recorded BLAKE3.

    Proofs are appended in repair order (payload, sidecar, envelope), all stamped ``now_ms``
    (default: the clock), each linked to the one before it. A rebuilt envelope keeps none of
    the old proofs (they were in the envelope that was lost or refused), so its chain starts
    afresh: the first proof of this repair has ``prev_proof_hash`` null."""
    res = RepairResult()
    meta, meta_problem = _sidecar_meta(paths)
    ess = health.essentials or (meta.header.artifact if meta else None)
    if ess is None:
        raise UnrecoverableError(
            f"{paths.ref}: envelope and sidecar are both unusable; nothing records what the payload should be"
        )
    env = health.envelope
    proofs: list[DecodeProof] = list(env.decode_proofs) if env else []
    now = now_ms if now_ms is not None else int(time.time() * 1000)

    if health.payload_problem:
        if meta is None:
            raise UnrecoverableError(f"{paths.ref}: payload damaged and the sidecar is unusable ({meta_problem})")
        outcomes = _recover_payload(paths, meta, ess, jobs)
        erased = [meta.layout.global_index(o.stripe, i) for o in outcomes for i in o.erased]
        res.erased_source = len(erased)
        res.repaired.append("payload")
        proofs.append(
            make_proof(
                proofs,
                reason=reason,
                target="payload",
                recovered_hash=ess.source_hash,
                erased_source=erased,
                erased_repair=sum(len(o.bad_repair) for o in outcomes),
                repair_used={o.stripe: o.used_repair for o in outcomes if o.used_repair},
                now_ms=now,
            )
        )

    rq = env.raptorq if env else None
    if health.sidecar_problem or (env is None and meta is None) or (env is not None and rq is None):
        overhead = rq.overhead if rq else (meta.header.overhead if meta else 0.1)
        symbol = rq.symbol_size if rq else (meta.header.symbol_size if meta else None)
        tmp = tmp_path(paths.sidecar)
        try:
            info = write_sidecar(paths.payload, tmp, ess, overhead, symbol, jobs)
            replace_durably(tmp, paths.sidecar)
        finally:
            tmp.unlink(missing_ok=True)
        rq = raptorq_section(info)
        if health.sidecar_problem:
            res.repaired.append("sidecar")
            proofs.append(make_proof(proofs, reason=reason, target="sidecar", recovered_hash=info.hash, now_ms=now))
    elif env is None and meta is not None:
        digest, size = hash_file(paths.sidecar)
        rq = _section_from_meta(meta, digest, size)

    if env is None:
        res.repaired.append("envelope")
        proofs.append(make_proof(proofs, reason=reason, target="envelope", recovered_hash=ess.source_hash, now_ms=now))
        env = envelope_from(ess, paths.version, rq)
    env = msgspec.structs.replace(env, raptorq=rq, decode_proofs=proofs)
    write_envelope(paths, env)
    res.proofs = proofs[len(proofs) - len(res.repaired) :] if res.repaired else []
    res.envelope = read_envelope(paths)
    return res


def protect_pending(paths: ArtifactPaths, jobs: int | None = None, overhead: float = 0.10) -> Envelope:
    """Build the sidecar of an artifact committed with protection pending, after checking
    its payload; a no-op for one already protected."""
    env = read_envelope(paths)
    if env.raptorq is not None:
        return env
    h = check(paths)
    if h.payload_problem:
        raise UnrecoverableError(f"{paths.ref}: payload damaged before its repair sidecar was built: {h.payload_problem}")
    tmp = tmp_path(paths.sidecar)
    try:
        info = write_sidecar(paths.payload, tmp, essentials_of(env), overhead, None, jobs)
        replace_durably(tmp, paths.sidecar)
    finally:
        tmp.unlink(missing_ok=True)
    env = read_envelope(paths)  # re-read: a scrub may have written meanwhile
    write_envelope(paths, msgspec.structs.replace(env, raptorq=raptorq_section(info)))
    return read_envelope(paths)


def _section_from_meta(meta: SidecarMeta, digest: str, size: int) -> RaptorQSection:
    h = meta.header
    return RaptorQSection(
        symbol_size=h.symbol_size,
        stripes=h.stripes,
        source_symbols=h.source_symbols,
        repair_symbols=sum(h.repair_symbols_per_stripe),
        overhead=h.overhead,
        library_version=h.library_version,
        sidecar_size=size,
        sidecar_hash=digest,
    )


def _recover_payload(
    paths: ArtifactPaths, meta: SidecarMeta, ess: ArtifactEssentials, jobs: int | None
) -> list[StripeOutcome]:
    outcomes = check_and_decode(paths.payload, paths.sidecar, meta, jobs)
    failed = [o for o in outcomes if o.failed]
    if failed:
        raise UnrecoverableError(unrecoverable_message(paths.ref, meta, outcomes, failed))
    patch_in_place(paths.payload, meta, outcomes)
    got, _ = hash_file(paths.payload)
    if got != ess.source_hash:
        raise UnrecoverableError(f"{paths.ref}: payload still does not match its BLAKE3 after decoding")
    return outcomes


def unrecoverable_message(ref: str, meta: SidecarMeta, outcomes: list[StripeOutcome], failed: list[StripeOutcome]) -> str:
    lay = meta.layout
    lost = sum(o.lost for o in outcomes)
    worst = max(failed, key=lambda o: o.lost)
    return (
        f"{ref}: unrecoverable: {lost} symbols lost over {sum(1 for o in outcomes if o.lost)} of {lay.stripes} "
        f"stripes; {len(failed)} stripes are beyond repair (worst: stripe {worst.stripe} lost {len(worst.erased)} "
        f"of {worst.k} source and {len(worst.bad_repair)} of {worst.r} repair symbols, "
        f"but can repair at most {lay.budget(worst.stripe)})"
    )
