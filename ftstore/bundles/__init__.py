"""Model bundles for TensorFlow and PyTorch (the frameworks are optional extras).

- ``bundle`` — ``save_bundle`` / ``load_bundle``: a zip of weights, a typed manifest and a
  typed params snapshot (its format: ``ftstore.payloads.bundle_format``), stored as a
  ``model_bundle`` artifact; loading restores ``params.cfg`` before building models and
  rolls it back on any failure.
- ``tensorflow`` / ``pytorch`` — strict weight writing and loading.
- ``legacy`` — import of PtychoPINN ``wts.h5.zip`` archives without running their code,
  reading ``.dill`` files with ``restricted_pickle`` (plain data only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftstore.lazy import lazy_exports

_EXPORTS = {
    "BACKENDS": "payloads.bundle_format",
    "BackendMismatchError": "bundles.bundle",
    "LoadedBundle": "bundles.bundle",
    "load_bundle": "bundles.bundle",
    "register_builder": "bundles.bundle",
    "save_bundle": "bundles.bundle",
    "convert_legacy": "bundles.legacy",
}

__all__ = sorted(_EXPORTS)
# Imported on first use (see ftstore.lazy): bundles bring in zipfile and pickle.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), base="ftstore", submodules=(
    "bundle", "legacy", "pytorch", "restricted_pickle", "rollback", "saved_model", "tensorflow"))


if TYPE_CHECKING:
    from ftstore.bundles.bundle import BackendMismatchError, LoadedBundle, load_bundle, register_builder, save_bundle
    from ftstore.bundles.legacy import convert_legacy
    from ftstore.payloads.bundle_format import BACKENDS
