"""A tiny Lightning run checkpointing through FtstoreCheckpointIO, for tests/test_training_resume.py.

    lightning_run.py train  STORE CKPTS            trains until killed, a checkpoint every 3 steps
    lightning_run.py resume STORE CKPTS OUT.pt     fit(ckpt_path="last"); writes the restored
                                                   state to OUT.pt, then trains 4 more steps
"""

import sys
import time

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ftstore import Store
from ftstore.integrations.lightning import FtstoreCheckpointIO

mode, store_url, ckpts = sys.argv[1:4]
out = sys.argv[4] if mode == "resume" else None


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def training_step(self, batch, _):
        if mode == "train":
            time.sleep(0.03)  # slow enough to be killed mid-run
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def on_train_start(self):
        if mode == "resume":  # after Lightning restored everything
            torch.save({"global_step": self.trainer.global_step, "state_dict": self.state_dict(),
                        "optimizer": self.trainer.optimizers[0].state_dict()}, out)
            self.trainer.fit_loop.epoch_loop.max_steps = self.trainer.global_step + 4


g = torch.Generator().manual_seed(1)
data = torch.utils.data.TensorDataset(torch.rand(64, 8, generator=g), torch.rand(64, 1, generator=g))
trainer = L.Trainer(
    accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, max_steps=100_000,
    plugins=[FtstoreCheckpointIO(Store.open(store_url, create=True))],
    callbacks=[ModelCheckpoint(dirpath=ckpts, every_n_train_steps=3, save_top_k=-1, save_last="link")],
)
trainer.fit(Tiny(), torch.utils.data.DataLoader(data, batch_size=8), ckpt_path="last" if mode == "resume" else None)
