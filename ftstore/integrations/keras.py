"""A Keras callback that checkpoints the whole training state through a
:class:`~ftstore.CheckpointManager`, and the restore that brings all of it back.

    manager = CheckpointManager(store, "run", keep_last=3)
    model.fit(x, y, epochs=10, callbacks=[FtstoreCheckpoint(manager)])
    ...                                                # killed; a new process:
    model = build_and_compile()
    cp = restore_training(manager, model)              # newest checkpoint that verifies
    model.fit(x, y, initial_epoch=cp.step, epochs=10, callbacks=[FtstoreCheckpoint(manager)])

Each checkpoint is the model's Keras ``.weights.h5`` file (HDF5, no code, never a pickle):
the layers' weights and the optimizer's variables (its iteration count, learning rate,
moments); its step is the epoch as Keras numbers it (1 after the first; what
``ModelCheckpoint`` puts in ``{epoch}``), so ``every_n_epochs=5`` saves steps 5, 10, ...
which ``keep_every=5`` keeps, and a resume passes ``initial_epoch=cp.step``. The epoch's
finite logs are its metrics; a ``best_metric`` missing from them is warned about once, as
``ModelCheckpoint`` does, since no checkpoint can then be kept as the best. It is built in
the store's scratch folder and taken over without a copy. The restore builds the model's
optimizer first, so that its variables are loaded too, and refuses a checkpoint whose
optimizer state does not fit the model's rather than silently skipping it. An epoch run
again after a resume (past a damaged checkpoint, say) supersedes the old checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras

from ftstore.errors import BadInputError, FtstoreError
from ftstore.training.checkpoints import Checkpoint, CheckpointManager, whole_number
from ftstore.tempdirs import held_temp_dir

WEIGHTS_FILE = "checkpoint.weights.h5"


class FtstoreCheckpoint(keras.callbacks.Callback):
    def __init__(self, manager: CheckpointManager, every_n_epochs: int = 1):
        super().__init__()
        if not whole_number(every_n_epochs) or every_n_epochs < 1:
            raise BadInputError(f"every_n_epochs={every_n_epochs!r}: a whole number, at least 1")
        self.manager = manager
        self.every_n_epochs = every_n_epochs
        self._warned = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        done = epoch + 1  # Keras's ``epoch`` is 0-based; it shows and names epochs from 1
        if done % self.every_n_epochs:
            return
        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        best = self.manager.best_metric
        if best is not None and best not in (logs or {}) and not self._warned:
            self._warned = True
            warnings.warn(f"best_metric {best!r} is not among this epoch's logs ({', '.join(sorted(logs or {}))}): "
                          "no checkpoint can be kept as the best by it", stacklevel=2)
        with self.manager.store.scratch() as tmp:
            path = Path(tmp) / WEIGHTS_FILE
            self.model.save_weights(path)  # layers and optimizer variables
            self.manager.save(done, path, metrics=metrics, move=True)


@contextlib.contextmanager
def _restore_folder(manager: CheckpointManager) -> Iterator[Path]:
    """The store's scratch folder (beside the store, not in a small ``/tmp``), or, where the
    store cannot be written (read-only, full, not ours), a temporary folder."""
    try:
        scratch = manager.store.scratch()
        folder = scratch.__enter__()
    except (OSError, FtstoreError):
        with held_temp_dir("keras") as tmp:
            yield Path(tmp)
        return
    try:
        yield folder
    finally:
        scratch.__exit__(None, None, None)


def restore_training(manager: CheckpointManager, model: Any, step: int | None = None) -> Checkpoint:
    """Load the newest checkpoint that verifies (or repairs) into ``model``: weights and
    optimizer state. Returns the checkpoint; continue with ``initial_epoch=cp.step`` (the
    epochs it had completed)."""
    with _restore_folder(manager) as tmp:
        path = Path(tmp) / WEIGHTS_FILE
        cp = manager.restore(path, step=step)
        optimizer = getattr(model, "optimizer", None)
        # Built over the model's variables, else Keras skips the saved optimizer variables;
        # only once there is a checkpoint, and variables: an optimizer built over none (a
        # model Keras builds at its first call) refuses every variable fit() gives it later.
        if optimizer is not None and not optimizer.built and model.trainable_variables:
            optimizer.build(model.trainable_variables)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
    skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
    if skipped:
        raise BadInputError(f"{cp.ref}: does not fit this model: {skipped[0].splitlines()[0]}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return cp


restore_weights = restore_training  # its former name; it now restores the optimizer too
