"""Typed documents: what ftstore writes, and the one place each is parsed and written.

- ``envelope`` — :class:`Envelope`, one per artifact version: identity, size, BLAKE3 of
  the payload, repair parameters, scrub state, decode proofs, user metadata; and
  :class:`ArtifactEssentials`, the part a sidecar keeps to rebuild a lost envelope.
- ``envelope_json`` — strict parsing (unknown fields, wrong types, unknown versions are
  errors that name the field) and canonical, self-checksummed bytes.
- ``proofs`` — :class:`DecodeProof` records, hash-chained within an artifact.
- ``names`` — artifact names and ``NAME@VERSION`` references.
"""

from ftstore.documents.envelope import (
    ARTIFACT_TYPES,
    ZERO_HASH,
    ArtifactEssentials,
    DecodeProof,
    Envelope,
    RaptorQSection,
    ScrubSection,
    SymbolRange,
    envelope_from,
    essentials_of,
)
from ftstore.documents.envelope_json import MAX_ENVELOPE_BYTES, canonical, decode_envelope, encode_envelope, seal
from ftstore.documents.names import ArtifactKey, Ref, check_name, is_name, parse_ref, version_of
from ftstore.documents.proofs import chain_problems, make_proof

__all__ = [
    "ARTIFACT_TYPES",
    "MAX_ENVELOPE_BYTES",
    "ZERO_HASH",
    "ArtifactEssentials",
    "ArtifactKey",
    "DecodeProof",
    "Envelope",
    "RaptorQSection",
    "Ref",
    "ScrubSection",
    "SymbolRange",
    "canonical",
    "chain_problems",
    "check_name",
    "decode_envelope",
    "encode_envelope",
    "envelope_from",
    "essentials_of",
    "is_name",
    "make_proof",
    "parse_ref",
    "seal",
    "version_of",
]
