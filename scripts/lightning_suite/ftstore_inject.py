"""A pytest plugin that runs Lightning's own tests with FtstoreCheckpointIO in every Trainer.

Every ``lightning.pytorch.Trainer`` a test builds gets ``FtstoreCheckpointIO`` over a fresh
store (one per test, outside the test's ``tmp_path``, on the same filesystem so that
checkpoint files are hard links to the stored payloads), unless the test passes a
CheckpointIO of its own; an ``AsyncCheckpointIO()`` with no base gets ours as its base.
At the end it prints how many Trainers ran with it. See run.sh here for how to use it.
"""

from __future__ import annotations

import pytest
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO

from ftstore import Store
from ftstore.integrations.lightning import FtstoreCheckpointIO

COUNTS = {"injected": 0, "own": 0}


def _with_ftstore(plugins, strategy, store: Store):
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else ([] if plugins is None else [plugins])
    io = [p for p in plugins if isinstance(p, CheckpointIO)]
    if isinstance(strategy, Strategy) and strategy._checkpoint_io is not None:
        COUNTS["own"] += 1
        return plugins
    if not io:
        plugins.append(FtstoreCheckpointIO(store))
    elif len(io) == 1 and isinstance(io[0], _WrappingCheckpointIO) and io[0].checkpoint_io is None:
        io[0].checkpoint_io = FtstoreCheckpointIO(store)
    else:
        COUNTS["own"] += 1
        return plugins
    COUNTS["injected"] += 1
    return plugins


@pytest.fixture(autouse=True)
def ftstore_checkpoint_io(tmp_path_factory):
    """Patched by hand, not with ``monkeypatch``: requesting that here would reorder its
    teardown after Lightning's own environment-leak check."""
    store = Store.open(tmp_path_factory.mktemp("ftstore") / "store", create=True)
    real_init = Trainer.__init__

    def init(self, *args, plugins=None, **kwargs):
        real_init(self, *args, plugins=_with_ftstore(plugins, kwargs.get("strategy"), store), **kwargs)

    Trainer.__init__ = init
    try:
        yield store
    finally:
        Trainer.__init__ = real_init


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"ftstore: FtstoreCheckpointIO injected into {COUNTS['injected']} Trainers "
                                f"({COUNTS['own']} kept a CheckpointIO of their own)")
