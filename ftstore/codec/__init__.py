"""The repair codec: BLAKE3 symbol hashes and RaptorQ (RFC 6330) repair symbols.

- ``layout`` — how a payload is cut into symbols and striped over RaptorQ objects, and
  the repair guarantee.
- ``sidecar`` — the sidecar file format (two self-checked metadata copies, hash tables,
  repair symbols).
- ``encoder`` / ``decoder`` — process-parallel encoding; damage location and decoding.
- ``protect`` — write a sidecar for a payload; patch a damaged payload.
"""

from .decoder import StripeOutcome, check_and_decode
from .layout import DEFAULT_OVERHEAD, MAX_OVERHEAD, MIN_OVERHEAD, Layout
from .protect import SidecarBuild, SidecarInfo, SymbolHasher, patch_in_place, write_sidecar
from .rq import LIBRARY_VERSION
from .sidecar import ArtifactEssentials, SidecarError, SidecarMeta, read_meta

__all__ = [
    "DEFAULT_OVERHEAD",
    "LIBRARY_VERSION",
    "MAX_OVERHEAD",
    "MIN_OVERHEAD",
    "ArtifactEssentials",
    "Layout",
    "SidecarError",
    "SidecarBuild",
    "SidecarInfo",
    "SymbolHasher",
    "SidecarMeta",
    "StripeOutcome",
    "check_and_decode",
    "read_meta",
    "patch_in_place",
    "write_sidecar",
]
