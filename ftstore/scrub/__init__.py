"""Whole-store maintenance.

- ``scrubber`` — check every artifact, repair with ``repair=True``, prove recoverability
  with ``deep=True``, find orphans; returns and stores a :class:`ScrubReport`.
- ``drill`` — inject faults into a scratch copy of a store and prove the scrub repairs
  every repairable one byte-identically and reports every other as failed.
- ``report`` — the scrub report document.
"""

from ftstore.scrub.report import ScrubReport
from ftstore.scrub.scrubber import scrub

__all__ = ["ScrubReport", "scrub"]
