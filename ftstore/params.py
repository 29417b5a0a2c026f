"""The legacy global config dict, ``params.cfg``.

Training code of the PtychoPINN lineage keeps its architecture settings (``N``,
``gridsize``, ``n_filters_scale``, ...) in one module-level dict. ``load_bundle`` restores
the archived values into it (or into a dict the caller passes) before building models.
"""

from __future__ import annotations

from typing import Any

cfg: dict[str, Any] = {}
