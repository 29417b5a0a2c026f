"""Lightning and Keras integrations on tiny CPU models: save, damage, restore, resume."""

import os

import numpy as np
import pytest

from .conftest import files
from ftstore import CheckpointManager
from ftstore.engine.leaves import read_envelope

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _damage(paths):
    """Flip a byte in two different symbols: within the budget of even a tiny checkpoint."""
    data = bytearray(paths.payload.read_bytes())
    for pos in (10, len(data) - 10):
        data[pos] ^= 0xFF
    paths.payload.write_bytes(bytes(data))


def test_lightning_resumes_from_a_repaired_ftstore_checkpoint(store, tmp_path):
    L = pytest.importorskip("lightning")
    torch = pytest.importorskip("torch")
    from ftstore.integrations.lightning import FtstoreCheckpointIO

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(32, 4, generator=g), torch.rand(32, 1, generator=g))
    loader = lambda: torch.utils.data.DataLoader(data, batch_size=8)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    io = FtstoreCheckpointIO(store)
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1)
    model = Tiny()
    L.Trainer(max_epochs=2, plugins=[io], callbacks=[ckpt_cb], default_root_dir=tmp_path, **kw).fit(model, loader())
    names = store.names()
    assert any("epoch_1" in n for n in names), names
    last = ckpt_cb.best_model_path or str(tmp_path / "ckpts" / "epoch=1-step=8.ckpt")
    paths = files(store, io.artifact_name(last))
    _damage(paths)  # the stored checkpoint rots; loading must repair it
    restored = io.load_checkpoint(last)
    assert restored["epoch"] == 1
    assert torch.equal(restored["state_dict"]["layer.weight"], model.layer.weight.detach())
    resumed = Tiny()
    trainer = L.Trainer(max_epochs=3, plugins=[FtstoreCheckpointIO(store)], default_root_dir=tmp_path, **kw)
    trainer.fit(resumed, loader(), ckpt_path=last)
    assert trainer.current_epoch == 3
    assert read_envelope(paths).decode_proofs[-1].target == "payload"


def test_keras_callback_checkpoints_and_training_resumes(store):
    keras = pytest.importorskip("keras")
    from ftstore.integrations.keras import FtstoreCheckpoint, restore_weights

    def build():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        m.compile(optimizer="sgd", loss="mse")
        return m

    rng = np.random.default_rng(0)
    x, y = rng.random((32, 4)).astype("float32"), rng.random((32, 1)).astype("float32")
    manager = CheckpointManager(store, "keras-run", keep_last=2)
    model = build()
    model.fit(x, y, epochs=3, verbose=0, callbacks=[FtstoreCheckpoint(manager)])
    assert manager.steps() == [2, 3]  # epochs numbered as Keras does, from 1
    assert "loss" in manager.latest().metrics
    _damage(files(store, "keras-run"))
    fresh = build()
    cp = restore_weights(manager, fresh)
    assert cp.step == 3
    for a, b in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    hist = fresh.fit(x, y, initial_epoch=cp.step, epochs=5, verbose=0, callbacks=[FtstoreCheckpoint(manager)])
    assert len(hist.history["loss"]) == 2 and manager.steps() == [4, 5]


def test_keras_epochs_are_numbered_as_keras_does_so_keep_every_keeps_them(store, tmp_path):
    """every_n_epochs=5 with keep_every=5 used to keep none of the 5th epochs (they were
    saved as steps 4, 9, ...); and a best_metric missing from the logs is warned about."""
    keras = pytest.importorskip("keras")
    from ftstore.integrations.keras import FtstoreCheckpoint

    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    x, y = np.zeros((8, 4), "float32"), np.zeros((8, 1), "float32")
    control = keras.callbacks.ModelCheckpoint(str(tmp_path / "ctl-{epoch:02d}.weights.h5"), save_weights_only=True,
                                              save_freq="epoch")
    manager = CheckpointManager(store, "run", keep_last=1, keep_every=5, best_metric="val_acc", keep_best=1)
    with pytest.warns(UserWarning, match="val_acc"):
        m.fit(x, y, epochs=20, verbose=0, callbacks=[FtstoreCheckpoint(manager, every_n_epochs=5), control])
    assert manager.steps() == [5, 10, 15, 20]
    assert sorted(p.name for p in tmp_path.glob("ctl-*"))[4] == "ctl-05.weights.h5"  # Keras's numbering


def test_keras_resume_or_start_leaves_a_model_keras_builds_later_trainable(store):
    """The usual first run: no checkpoint yet, and a model Keras builds at its first call
    (no keras.Input). restore_training built the optimizer over the model's empty variable
    list before it found no checkpoint, so fit() then refused every variable."""
    keras = pytest.importorskip("keras")
    from ftstore import NotFoundError
    from ftstore.integrations.keras import FtstoreCheckpoint, restore_training

    rng = np.random.default_rng(0)
    x, y = rng.random((16, 4)).astype("float32"), rng.random((16, 1)).astype("float32")
    manager = CheckpointManager(store, "lazy")
    model = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(NotFoundError):
        restore_training(manager, model)
    model.fit(x, y, epochs=2, verbose=0, callbacks=[FtstoreCheckpoint(manager)])
    assert manager.steps() == [1, 2]
    fresh = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(1)])
    fresh.compile(optimizer="adam", loss="mse")
    fresh(x[:1])  # built: its variables exist, so the optimizer's saved state is restored too
    assert restore_training(manager, fresh).step == 2
    assert int(fresh.optimizer.iterations) == int(model.optimizer.iterations)
    fresh.fit(x, y, initial_epoch=2, epochs=3, verbose=0)
