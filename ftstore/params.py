"""The legacy global config dict, ``params.cfg``.

Training code of the PtychoPINN lineage keeps its architecture settings (``N``,
``gridsize``, ``n_filters_scale``, ...) in one module-level dict. ``load_bundle`` restores
the archived values into a dict before building models: the one its ``params=`` names, else
``$FTSTORE_PARAMS_TARGET``, else this one. PtychoPINN's own code reads ``ptycho.params.cfg``:
name that (``"ptycho.params:cfg"``) for its builders to see the restored values.
"""

from __future__ import annotations

from typing import Any

cfg: dict[str, Any] = {}
