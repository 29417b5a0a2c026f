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

# Imported by the first save (see ftstore.lazy): they bring in the encoder and its workers.
__getattr__, __dir__ = lazy_exports(__name__, {}, globals(), submodules=("save", "save_written"))
