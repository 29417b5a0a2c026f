"""A tiny Keras run checkpointing through FtstoreCheckpoint, for tests/test_training_resume.py.

    keras_run.py train  STORE DUMPS            trains until killed; each epoch's state (weights,
                                               optimizer variables) also goes to DUMPS/epoch-N.npz
    keras_run.py resume STORE DUMPS OUT.npz    restore_training, writes the restored state and
                                               epoch to OUT.npz, then trains 2 more epochs
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from ftstore import CheckpointManager, Store  # noqa: E402
from ftstore.integrations.keras import FtstoreCheckpoint, restore_training  # noqa: E402

mode, store_url, dumps = sys.argv[1:4]


def build():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return m


def state(model) -> dict:
    out = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    out.update({f"opt:{v.path}": np.asarray(v.numpy()) for v in model.optimizer.variables})
    return out


class Dump(keras.callbacks.Callback):
    """Each epoch's state, before FtstoreCheckpoint saves it (written atomically)."""

    def on_epoch_end(self, epoch, logs=None):
        tmp = os.path.join(dumps, f".epoch-{epoch + 1}.npz")  # named as Keras numbers epochs
        np.savez(tmp, **state(self.model))
        os.replace(tmp, os.path.join(dumps, f"epoch-{epoch + 1}.npz"))
        if mode == "train":
            time.sleep(0.05)


rng = np.random.default_rng(1)
x, y = rng.random((64, 8)).astype("float32"), rng.random((64, 1)).astype("float32")
manager = CheckpointManager(Store.open(store_url, create=True), "keras-run", keep_last=4)
model = build()
start = 0
if mode == "resume":
    cp = restore_training(manager, model)
    np.savez(sys.argv[4], epoch=cp.step, **state(model))
    start = cp.step
model.fit(x, y, batch_size=16, verbose=0, initial_epoch=start, epochs=start + (10_000 if mode == "train" else 2),
          callbacks=[Dump(), FtstoreCheckpoint(manager)])
