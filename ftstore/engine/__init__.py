"""The engine: what ftstore does to artifacts, written once over the store-backend
interface (``ftstore.stores``) and the codec (``ftstore.codec``).

- ``save`` — validate, bring the payload in (link, copy or stream) while encoding its
  sidecar, commit with the envelope.
- ``integrity`` — one check for every backend; repair of a local working copy.
- ``load`` — one-pass verified load, repairing first when damaged.
- ``copy`` — between stores, committing only intact versions.
- ``leaves`` — an artifact version's files, in a store or in a local folder.
- ``background`` — the process that builds a sidecar left pending.
"""

from ftstore.lazy import lazy_exports

# Each imported on first use (see ftstore.lazy): ``save`` and ``save_written`` bring in the
# encoder and its worker pool, which a verify or a load never needs.
__getattr__, __dir__ = lazy_exports(__name__, {}, globals(), submodules=(
    "background", "copy", "integrity", "leaves", "load", "save", "save_written", "store"))
