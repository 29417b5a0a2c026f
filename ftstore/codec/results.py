"""What the codec reports back: a built sidecar's facts and each stripe's repair outcome.

A module of its own, without the encoder, the decoder or their worker pool, so that the
engine names these types (in its signatures and type hints) without importing the codec's
machinery, which it imports only when a save or a repair first needs it.
"""

from __future__ import annotations

import collections

SidecarInfo = collections.namedtuple("SidecarInfo", "layout overhead size hash library_version")
"""A sidecar just built: its :class:`~ftstore.codec.layout.Layout`, overhead, size in
bytes, BLAKE3 and the ``raptorq`` release that encoded it."""


class StripeOutcome:
    """What checking (and decoding) one stripe found. A plain class, not a dataclass: codec
    workers make these, and every worker start would pay for ``dataclasses``."""

    __slots__ = ("stripe", "k", "r", "erased", "bad_repair", "used_repair", "recovered", "spilled", "failed")

    def __init__(self, stripe: int, k: int, r: int) -> None:
        self.stripe, self.k, self.r = stripe, k, r
        self.erased: list[int] = []  # source indices within the stripe
        self.bad_repair: list[int] = []
        self.used_repair: list[int] = []
        self.recovered: dict[int, bytes] | None = None  # None: not decoded (intact, or failed), or spilled
        self.spilled: list[int] | None = None  # source indices written to the spill file instead of ``recovered``
        self.failed = False

    @property
    def lost(self) -> int:
        return len(self.erased) + len(self.bad_repair)

    def __repr__(self) -> str:
        return "StripeOutcome(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


__all__ = ["SidecarInfo", "StripeOutcome"]
