"""Whole-store maintenance.

- ``scrubber`` — check every artifact, repair with ``repair=True``, prove recoverability
  with ``deep=True``, find orphans; returns and stores a :class:`ScrubReport`.
- ``drill`` — inject faults into a scratch copy of a store and prove the scrub repairs
  every repairable one byte-identically and reports every other as failed.
- ``report`` — the scrub and drill report documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftstore.lazy import lazy_exports

_EXPORTS = {"ScrubReport": "report", "scrub": "scrubber"}

__all__ = sorted(_EXPORTS)
# The scrubber starts the codec's worker pool, the drill saves: see ftstore.lazy.
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), submodules=("drill", "report", "scrubber"))


if TYPE_CHECKING:
    from ftstore.scrub.report import ScrubReport
    from ftstore.scrub.scrubber import scrub
