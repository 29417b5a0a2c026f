"""How a payload is cut into symbols and striped over RaptorQ objects.

File symbol ``j`` (bytes ``[j*T, (j+1)*T)``, the last one zero-padded) belongs to stripe
``j mod S`` at position ``j // S``. Each stripe is one RaptorQ object of ``K_s`` symbols
(at most 1024 and at most 8 MiB), so a contiguous damaged range costs every stripe only a
little, and each stripe encodes and decodes on its own, in parallel and in bounded memory.

Writers aim at small stripes: the binding encodes and decodes a small object faster than
a large one (measured on one core, 16 KiB symbols, 5% of each stripe erased: 1 MiB stripes
1030 MB/s encoding and 1040 decoding, 2 MiB ones 935 and 955, 4 MiB ones 855 and 835, 8 MiB
ones 550). But each stripe carries two spare symbols beyond the overhead asked for, so a
stripe has at least ``6 / r`` symbols (the spares at most a third of the overhead ``r``),
between 1 MiB and 4 MiB of them: 1 MiB stripes at the default 10% (a sidecar of about 14%
of the payload), 4 MiB ones at 2.3% and below (as earlier writers had at every overhead).
A payload of more than 65536 such stripes keeps to 65536 (they grow, up to 4 MiB), and the
header, which lists every stripe's repair count, is never longer than 4 MiB stripes would
make it where it would pass its limit otherwise (see ``ftstore.codec.build``). ``S`` is
recorded in the sidecar, so readers accept any ``S`` within the limits.

Stripe ``s`` carries ``R_s = ceil(K_s * r) + 2`` repair symbols. The guarantee: if at most
``ceil(K_s * r)`` of the stripe's ``K_s + R_s`` symbols are erased, at least ``K_s + 2`` remain
and RFC 6330 decoding fails with probability below 1e-6; with fewer than ``K_s`` left it is
impossible.
"""

from __future__ import annotations

import functools
import itertools
from functools import cached_property

MAX_STRIPE_BYTES = 8 * 1024 * 1024
TARGET_STRIPE_BYTES = 1024 * 1024
LARGE_STRIPE_BYTES = 4 * 1024 * 1024
WRITER_STRIPES = 65536  # a writer's most stripes, unless even 4 MiB ones need more
TASK_BYTES = 8 * 1024 * 1024  # the stripes a worker takes at a time (see stripe_groups)
MAX_STRIPE_SYMBOLS = 1024
MIN_SYMBOL = 256
MAX_SYMBOL = 16384
SAFETY_SYMBOLS = 2
DEFAULT_OVERHEAD = 0.10
MIN_OVERHEAD = 0.01
MAX_OVERHEAD = 1.0


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def default_symbol_size(size: int) -> int:
    """Smallest power of two (256 B .. 16 KiB) that keeps the payload within 1024 symbols,
    so small payloads still get fine-grained symbols and large ones cheap bookkeeping."""
    t = MIN_SYMBOL
    while t < MAX_SYMBOL and ceil_div(size, t) > MAX_STRIPE_SYMBOLS:
        t *= 2
    return t


def overhead_ppm(overhead: float) -> int:
    return round(overhead * 1_000_000)


def repair_count(k: int, overhead: float) -> int:
    return ceil_div(k * overhead_ppm(overhead), 1_000_000) + SAFETY_SYMBOLS


def stripe_count(size: int, symbol_size: int, stripe_bytes: int = TARGET_STRIPE_BYTES) -> int:
    """Fewest stripes that keep each within ``stripe_bytes`` and 1024 symbols."""
    per_stripe = min(MAX_STRIPE_SYMBOLS, max(1, stripe_bytes // symbol_size))
    return ceil_div(ceil_div(size, symbol_size), per_stripe)


def writer_stripes(size: int, symbol_size: int, overhead: float = DEFAULT_OVERHEAD) -> int:
    """The stripe count a writer chooses (see the module docstring): stripes of at least
    ``6 / r`` symbols, between 1 MiB and 4 MiB; no more than ``WRITER_STRIPES`` of them
    unless 4 MiB ones need more."""
    ppm = overhead_ppm(overhead)
    wanted = ceil_div(3 * SAFETY_SYMBOLS * 1_000_000, ppm) if ppm > 0 else MAX_STRIPE_SYMBOLS
    per_stripe = max(TARGET_STRIPE_BYTES // symbol_size, min(LARGE_STRIPE_BYTES // symbol_size, wanted))
    s = stripe_count(size, symbol_size, per_stripe * symbol_size)
    if s <= WRITER_STRIPES:
        return s
    return max(WRITER_STRIPES, stripe_count(size, symbol_size, LARGE_STRIPE_BYTES))


def stripes_allowed(size: int, symbol_size: int, stripes: int) -> bool:
    """Whether a recorded stripe count keeps every stripe within the limits and none empty."""
    n = ceil_div(size, symbol_size)
    return stripe_count(size, symbol_size, MAX_STRIPE_BYTES) <= stripes <= n


class Layout:
    """A payload's symbols and stripes: ``size`` bytes in symbols of ``symbol_size``, over
    ``stripes`` stripes, stripe ``s`` with ``repair_counts[s]`` repair symbols. A plain
    class, not a dataclass: every codec worker imports this module as it starts, and
    ``dataclasses`` (with ``inspect``) would cost each of them 7 ms. Treated as immutable."""

    def __init__(self, size: int, symbol_size: int, stripes: int, repair_counts: tuple[int, ...]):
        self.size, self.symbol_size, self.stripes, self.repair_counts = size, symbol_size, stripes, repair_counts

    def _key(self) -> tuple[int, int, int, tuple[int, ...]]:
        return self.size, self.symbol_size, self.stripes, self.repair_counts

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Layout) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Layout(size={self.size}, symbol_size={self.symbol_size}, stripes={self.stripes}, " \
               f"repair_counts={_runs_text(self._repair_runs)})"

    @classmethod
    def plan(
        cls, size: int, overhead: float = DEFAULT_OVERHEAD, symbol_size: int | None = None, stripes: int | None = None
    ) -> Layout:
        """The layout a writer uses; ``stripes`` (a recorded count) overrides the target."""
        t = symbol_size or default_symbol_size(size)
        s = stripes if stripes is not None else writer_stripes(size, t, overhead)
        n = ceil_div(size, t)
        longer = n % s if s else 0  # stripes 0 .. longer-1 have one symbol more than the rest
        k = n // s if s else 0
        return cls(size, t, s, (repair_count(k + 1, overhead),) * longer + (repair_count(k, overhead),) * (s - longer))

    def __reduce__(self) -> tuple:
        """Pickled (for every task sent to a codec worker) as its repair counts' runs: they
        take at most two values, so a task stays a few hundred bytes however many stripes
        there are (the tuple itself pickles to 130 KB at 65536 stripes, with the cached
        starts to 450 KB: 3.4 ms a task). A worker rebuilds each layout once."""
        return _layout_from_runs, (self.size, self.symbol_size, self.stripes, self._repair_runs)

    @cached_property
    def _repair_runs(self) -> tuple[tuple[int, int], ...]:
        return tuple((v, sum(1 for _ in run)) for v, run in itertools.groupby(self.repair_counts))

    @cached_property
    def source_symbols(self) -> int:
        return ceil_div(self.size, self.symbol_size)

    @cached_property
    def total_repair(self) -> int:
        return sum(self.repair_counts)

    @cached_property
    def repair_starts(self) -> tuple[int, ...]:
        """Index of each stripe's first repair symbol in the sidecar's repair region."""
        out, acc = [], 0
        for r in self.repair_counts:
            out.append(acc)
            acc += r
        return tuple(out)

    def stripe_k(self, s: int) -> int:
        return ceil_div(self.source_symbols - s, self.stripes)

    def budget(self, s: int) -> int:
        """Erasures stripe ``s`` is guaranteed to survive (see module docstring)."""
        return self.repair_counts[s] - SAFETY_SYMBOLS

    def global_index(self, s: int, i: int) -> int:
        return i * self.stripes + s

    def stripe_entries(self, table: bytes | bytearray, s: int, width: int) -> bytes:
        """Stripe ``s``'s entries, in stripe order, of a table with one ``width``-byte entry
        per file symbol (file order): every ``S``-th entry from ``s``, gathered with one
        strided slice per byte column rather than a Python step per symbol."""
        out = bytearray(self.stripe_k(s) * width)
        step = self.stripes * width
        for b in range(width):
            out[b::width] = table[s * width + b :: step]
        return bytes(out)

    def put_stripe_entries(self, table: bytearray, s: int, width: int, entries: bytes) -> None:
        """The inverse of :meth:`stripe_entries`: write stripe ``s``'s entries into ``table``."""
        step = self.stripes * width
        for b in range(width):
            table[s * width + b :: step] = entries[b::width]

    def symbol_extent(self, j: int) -> tuple[int, int]:
        """(offset, length) of file symbol ``j`` within the payload; the last one may be short."""
        off = j * self.symbol_size
        return off, min(self.symbol_size, self.size - off)


def _runs_text(runs: tuple[tuple[int, int], ...]) -> str:
    return " + ".join(f"[{v}] * {n}" for v, n in runs) or "()"


@functools.lru_cache(maxsize=8)
def _layout_from_runs(size: int, symbol_size: int, stripes: int, runs: tuple[tuple[int, int], ...]) -> Layout:
    counts = tuple(itertools.chain.from_iterable(itertools.repeat(v, n) for v, n in runs))
    return Layout(size, symbol_size, stripes, counts)


def stripe_groups(layout: Layout) -> list[range]:
    """The layout's stripes in runs of about ``TASK_BYTES`` (at least one stripe each): a
    codec worker's task. Each row of a run is one contiguous read, and a task is large
    enough that handing it over costs little beside its work, small enough that the
    workers finish close together and each holds only a few MiB."""
    per = max(1, TASK_BYTES // max(1, layout.stripe_k(0) * layout.symbol_size)) if layout.stripes else 1
    return [range(a, min(a + per, layout.stripes)) for a in range(0, layout.stripes, per)]
