"""Model bundles for TensorFlow and PyTorch.

- ``bundle`` — ``save_bundle`` / ``load_bundle``: a zip of weights, a typed manifest and a
  typed params snapshot, stored as a ``model_bundle`` artifact; loading restores
  ``params.cfg`` before building models and rolls it back on any failure.
- ``documents`` — the manifest and params snapshot types.
- ``tensorflow_backend`` / ``pytorch_backend`` — strict weight writing and loading.
- ``legacy`` — import of PtychoPINN ``wts.h5.zip`` archives without running their code.
"""

from .bundle import BackendMismatchError, LoadedBundle, load_bundle, register_builder, save_bundle
from .documents import BACKENDS

__all__ = ["BACKENDS", "BackendMismatchError", "LoadedBundle", "load_bundle", "register_builder", "save_bundle"]
