"""What the codec reports back: a built sidecar's facts and each stripe's repair outcome.

A module of its own, without the encoder, the decoder or their worker pool, so that the
engine names these types (in its signatures and type hints) without importing the codec's
machinery, which it imports only when a save or a repair first needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftstore.codec.layout import Layout


@dataclass(frozen=True)
class SidecarInfo:
    layout: Layout
    overhead: float
    size: int
    hash: str
    library_version: str


@dataclass
class StripeOutcome:
    stripe: int
    k: int
    r: int
    erased: list[int] = field(default_factory=list)  # source indices within the stripe
    bad_repair: list[int] = field(default_factory=list)
    used_repair: list[int] = field(default_factory=list)
    recovered: dict[int, bytes] | None = None  # None: not decoded (intact, or failed), or spilled
    spilled: list[int] | None = None  # source indices written to the spill file instead of ``recovered``
    failed: bool = False

    @property
    def lost(self) -> int:
        return len(self.erased) + len(self.bad_repair)


__all__ = ["SidecarInfo", "StripeOutcome"]
