"""A Keras callback that checkpoints through a :class:`~ftstore.CheckpointManager`.

    manager = CheckpointManager(store, "run", keep_last=3)
    model.fit(x, y, epochs=10, callbacks=[FtstoreCheckpoint(manager)])
    ...
    cp = restore_weights(manager, fresh_model)      # newest checkpoint that verifies
    fresh_model.fit(x, y, initial_epoch=cp.step + 1, epochs=20)

Each checkpoint is the model's Keras ``.weights.h5`` file (HDF5, no code), with the
epoch's logs as metrics. Optimizer state is not included.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import keras

from ftstore.training.checkpoints import Checkpoint, CheckpointManager


class FtstoreCheckpoint(keras.callbacks.Callback):
    def __init__(self, manager: CheckpointManager, every_n_epochs: int = 1):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError("every_n_epochs must be at least 1")
        self.manager = manager
        self.every_n_epochs = every_n_epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every_n_epochs:
            return
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        with tempfile.TemporaryDirectory(prefix="ftstore-keras-") as tmp:
            path = Path(tmp) / "model.weights.h5"
            self.model.save_weights(path)
            self.manager.save(epoch, path, metrics=metrics)


def restore_weights(manager: CheckpointManager, model: Any, step: int | None = None) -> Checkpoint:
    """Load the newest checkpoint that verifies (or repairs) into ``model``."""
    with tempfile.TemporaryDirectory(prefix="ftstore-keras-") as tmp:
        path = Path(tmp) / "model.weights.h5"
        cp = manager.restore(path, step=step)
        model.load_weights(path)
    return cp
