"""The repair codec: BLAKE3 symbol hashes and RaptorQ (RFC 6330) repair symbols. It works
on local files and imports no store.

- ``layout`` — how a payload is cut into symbols and striped over RaptorQ objects, and
  the repair guarantee.
- ``sidecar`` — the sidecar file format (two self-checked metadata copies, hash tables,
  repair symbols).
- ``encoder`` / ``decoder`` / ``deep`` — process-parallel encoding; damage location and
  decoding; recoverability probes.
- ``build`` — write a sidecar for a payload; patch a damaged payload.
- ``rq`` — the calls into the ``raptorq`` binding; ``parallel`` — the worker processes.
"""

from ftstore.codec.build import SidecarBuild, SidecarInfo, SymbolHasher, patch_in_place, patched_digest, write_sidecar
from ftstore.codec.decoder import StripeOutcome, check_and_decode
from ftstore.codec.layout import DEFAULT_OVERHEAD, MAX_OVERHEAD, MIN_OVERHEAD, Layout
from ftstore.codec.rq import library_version
from ftstore.codec.sidecar import SidecarError, SidecarMeta, damaged_repair_symbols, read_meta

__all__ = [
    "DEFAULT_OVERHEAD",
    "library_version",
    "MAX_OVERHEAD",
    "MIN_OVERHEAD",
    "Layout",
    "SidecarBuild",
    "SidecarError",
    "SidecarInfo",
    "SidecarMeta",
    "StripeOutcome",
    "SymbolHasher",
    "check_and_decode",
    "damaged_repair_symbols",
    "patch_in_place",
    "patched_digest",
    "read_meta",
    "write_sidecar",
]
