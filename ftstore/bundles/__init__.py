"""Model bundles for TensorFlow and PyTorch (the frameworks are optional extras).

- ``bundle`` — ``save_bundle`` / ``load_bundle``: a zip of weights, a typed manifest and a
  typed params snapshot (its format: ``ftstore.payloads.bundle_format``), stored as a
  ``model_bundle`` artifact; loading restores ``params.cfg`` before building models and
  rolls it back on any failure.
- ``tensorflow`` / ``pytorch`` — strict weight writing and loading.
- ``legacy`` — import of PtychoPINN ``wts.h5.zip`` archives without running their code,
  reading ``.dill`` files with ``restricted_pickle`` (plain data only).
"""

from ftstore.bundles.bundle import BackendMismatchError, LoadedBundle, load_bundle, register_builder, save_bundle
from ftstore.payloads.bundle_format import BACKENDS

__all__ = ["BACKENDS", "BackendMismatchError", "LoadedBundle", "load_bundle", "register_builder", "save_bundle"]
