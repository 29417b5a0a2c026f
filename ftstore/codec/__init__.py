"""The repair codec: BLAKE3 symbol hashes and RaptorQ (RFC 6330) repair symbols. It works
on local files and imports no store.

- ``layout`` — how a payload is cut into symbols and striped over RaptorQ objects, and
  the repair guarantee.
- ``sidecar`` — the sidecar file format (two self-checked metadata copies, hash tables,
  repair symbols).
- ``encoder`` / ``decoder`` / ``deep`` — process-parallel encoding; damage location and
  decoding; recoverability probes. ``tasks`` — what a worker runs of them: all a worker
  imports.
- ``build`` — write a sidecar for a payload; patch a damaged payload.
- ``rq`` — the calls into the ``raptorq`` binding; ``parallel`` — the worker processes.

The public names below are imported on first use. A codec worker process imports
``ftstore.codec`` on its way to ``encoder`` and ``decoder``; loading the sidecar builder and
the envelope documents (msgspec, dataclasses, logging) too would make every worker start
cost several times what its own modules do, on every save.
"""

from __future__ import annotations

from ftstore.lazy import lazy_exports

TYPE_CHECKING = False  # typing's, without importing typing at every codec worker's start (see ftstore.codec.tasks)

_EXPORTS = {
    "DEFAULT_OVERHEAD": "layout",
    "MAX_OVERHEAD": "layout",
    "MIN_OVERHEAD": "layout",
    "Layout": "layout",
    "library_version": "rq",
    "SidecarBuild": "build",
    "SidecarInfo": "results",
    "SymbolHasher": "build",
    "check_header_fits": "build",
    "patch_in_place": "build",
    "patched_digest": "build",
    "write_sidecar": "build",
    "StripeOutcome": "results",
    "check_and_decode": "decoder",
    "SidecarError": "sidecar",
    "SidecarMeta": "sidecar",
    "damaged_repair_symbols": "sidecar",
    "read_meta": "sidecar",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from ftstore.codec.build import (
        SidecarBuild,
        SymbolHasher,
        check_header_fits,
        patch_in_place,
        patched_digest,
        write_sidecar,
    )
    from ftstore.codec.decoder import check_and_decode
    from ftstore.codec.results import SidecarInfo, StripeOutcome
    from ftstore.codec.layout import DEFAULT_OVERHEAD, MAX_OVERHEAD, MIN_OVERHEAD, Layout
    from ftstore.codec.rq import library_version
    from ftstore.codec.sidecar import SidecarError, SidecarMeta, damaged_repair_symbols, read_meta
