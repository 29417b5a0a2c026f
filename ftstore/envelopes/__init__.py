"""Typed on-disk documents.

- :class:`Envelope` — one per artifact: identity, size, BLAKE3 of the payload, repair
  parameters, scrub state, decode proofs, user metadata. Self-checksummed.
- :class:`DecodeProof` — one per recovery, hash-chained within the artifact.
- ``codec`` parses strictly (unknown fields, wrong types, unknown versions are errors that
  name the field) and writes canonical bytes.
"""

from .codec import decode_envelope, encode_envelope, seal
from .model import (
    ARTIFACT_TYPES,
    DecodeProof,
    Envelope,
    RaptorQSection,
    ScrubSection,
    SymbolRange,
)
from .proofs import chain_problems, make_proof

__all__ = [
    "ARTIFACT_TYPES",
    "DecodeProof",
    "Envelope",
    "RaptorQSection",
    "ScrubSection",
    "SymbolRange",
    "chain_problems",
    "decode_envelope",
    "encode_envelope",
    "make_proof",
    "seal",
]
