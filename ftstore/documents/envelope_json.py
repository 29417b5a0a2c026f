"""One place that turns envelope bytes into an :class:`Envelope` and back.

The envelope carries a checksum over its own canonical form, so damage that still parses
(a flipped digit in a hash or a size) is caught as damage rather than trusted.
"""

from __future__ import annotations

import msgspec

from ftstore.errors import EnvelopeError, NewerFormatError
from ftstore.hashing import hash_bytes
from ftstore.documents.envelope import ENVELOPE_SCHEMA_VERSION, ZERO_HASH, Envelope
from ftstore.documents.strict_json import DECODE_ERRORS, reject_duplicate_keys

MAX_ENVELOPE_BYTES = 16 * 1024 * 1024
_encoder = msgspec.json.Encoder(order="deterministic")


def canonical(obj: object) -> bytes:
    """Deterministic JSON: struct fields in declaration order, dict keys sorted, no spaces."""
    return _encoder.encode(obj)


def envelope_checksum(env: Envelope) -> str:
    return hash_bytes(canonical(msgspec.structs.replace(env, checksum=ZERO_HASH)))


def seal(env: Envelope) -> Envelope:
    """Return ``env`` with its checksum filled in; call before every write."""
    return msgspec.structs.replace(env, checksum=envelope_checksum(env))


def encode_envelope(env: Envelope) -> bytes:
    return msgspec.json.format(canonical(seal(env)), indent=2) + b"\n"


def decode_envelope(data: bytes, source: str = "envelope") -> Envelope:
    """Strictly parse envelope bytes; every failure is an :class:`EnvelopeError` naming the field.
    A key given twice is refused before the checksum is looked at (whichever value a reader
    would keep, the bytes are ambiguous)."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"{source}: envelope is {len(data)} bytes, over the {MAX_ENVELOPE_BYTES} byte limit")
    _check_version(data, source)
    try:
        env = msgspec.json.decode(data, type=Envelope)
    except msgspec.ValidationError as e:
        raise EnvelopeError(f"{source}: invalid envelope: {e}") from None
    except DECODE_ERRORS as e:
        raise EnvelopeError(f"{source}: malformed envelope JSON: {e}") from None
    reject_duplicate_keys(data, source, EnvelopeError)
    if env.checksum != envelope_checksum(env):
        raise EnvelopeError(f"{source}: envelope checksum mismatch at `$.checksum`: the envelope was altered or damaged")
    return env


def _check_version(data: bytes, source: str) -> None:
    """Name an unknown schema_version before anything else: :class:`NewerFormatError` for
    an envelope a newer ftstore wrote (left alone), :class:`EnvelopeError` (damage, which a
    repair rebuilds) for any other."""
    try:
        raw = msgspec.json.decode(data)
    except DECODE_ERRORS as e:
        raise EnvelopeError(f"{source}: malformed envelope JSON: {e}") from None
    if isinstance(raw, dict) and "schema_version" in raw and raw["schema_version"] != ENVELOPE_SCHEMA_VERSION:
        found = _shown(raw["schema_version"])
        if _from_a_newer_release(raw):
            raise NewerFormatError(
                f"{source}: written by a newer ftstore (envelope schema_version {found}; this ftstore reads "
                f"{ENVELOPE_SCHEMA_VERSION}): upgrade ftstore to use or repair it; nothing was changed"
            )
        raise EnvelopeError(
            f"{source}: unsupported `$.schema_version` {found}: this ftstore reads version {ENVELOPE_SCHEMA_VERSION}"
        )


def _shown(value: object) -> str:
    """A found version for a one-line message: never a document, never a thousand digits."""
    if type(value) in (str, bool, float) or (type(value) is int and abs(value) < 10**18):
        return repr(value)[:40]
    return "(not a version number)"


def _from_a_newer_release(raw: dict) -> bool:
    """A later version of the format, not damage: a whole number above ours, in a document
    of this format that is not one of ours with that number damaged. One flipped bit turns
    ``1`` into ``3``; such an envelope, its number set back, passes its own checksum, and is
    damage that a repair rebuilds. A newer release's envelope does not: its fields or their
    meaning changed with the number, and so does the checksum's input."""
    found = raw["schema_version"]
    if type(found) is not int or found <= ENVELOPE_SCHEMA_VERSION or raw.get("format") != "ftstore-envelope":
        return False
    try:
        env = msgspec.convert({**raw, "schema_version": ENVELOPE_SCHEMA_VERSION}, Envelope)
    except (msgspec.ValidationError, RecursionError):  # nested deeper than any envelope of ours
        return True
    return env.checksum != envelope_checksum(env)
