"""Locating damage and decoding it away.

RaptorQ repairs erasures, not errors, so every source and repair symbol is first checked
against its 128-bit hash from the sidecar; a symbol that fails (or is missing because the
file was truncated) becomes an erasure. Each damaged stripe is then decoded from its good
source symbols plus its good repair symbols, and every decoded symbol is checked against
its hash before it counts as recovered (a stripe whose decoded symbol does not check out
has failed). The caller checks the whole-payload BLAKE3 before a single recovered byte is
used.

This is the parent's side: the workers' :func:`~ftstore.codec.tasks.check_group` does the
checking and decoding. With a spill file, each worker writes the symbols it recovered into
that file at their payload offsets and sends back only their indices, so the caller never
holds recovered bytes: a repair's memory is bounded by a few stripes per worker, whatever
the damage.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ftstore.codec.encoder import PARALLEL_MIN_BYTES
from ftstore.codec.layout import stripe_groups
from ftstore.codec.parallel import pmap
from ftstore.codec.results import StripeOutcome
from ftstore.codec.tasks import DecodeTask, check_group
from ftstore.hashing import SYMBOL_HASH_BYTES

if TYPE_CHECKING:
    from ftstore.codec.sidecar import SidecarMeta


def check_and_decode(
    payload: str | os.PathLike,
    sidecar: str | os.PathLike | None,
    meta: SidecarMeta,
    jobs: int | None,
    decode: bool = True,
    spill: str | os.PathLike | None = None,
) -> list[StripeOutcome]:
    """Check every stripe of ``payload`` against ``meta``; decode damaged ones if asked.
    Returns one outcome per stripe, in stripe order. With ``spill`` (an existing regular
    file, at least as long as the payload), recovered symbols are written there at their
    payload offsets and outcomes carry ``spilled`` indices instead of ``recovered`` bytes."""
    lay, h = meta.layout, SYMBOL_HASH_BYTES
    tasks = []
    for group in stripe_groups(lay):
        src = {
            s: lay.stripe_entries(meta.source_hashes, s, h) for s in group
        }
        rep = {
            s: meta.repair_hashes[lay.repair_starts[s] * h : (lay.repair_starts[s] + lay.repair_counts[s]) * h]
            for s in group
        }
        tasks.append(
            DecodeTask(
                os.fspath(payload),
                os.fspath(sidecar) if sidecar is not None else None,
                lay,
                meta.block_len,
                tuple(group),
                src,
                rep,
                decode,
                os.fspath(spill) if spill is not None else None,
            )
        )
    outcomes = [oc for group in pmap(check_group, tasks, jobs, parallel=lay.size >= PARALLEL_MIN_BYTES) for oc in group]
    return sorted(outcomes, key=lambda oc: oc.stripe)
