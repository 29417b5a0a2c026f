"""A plain PyTorch loop checkpointing its state dict through CheckpointManager (background
protection on), for tests/test_training_resume.py.

    torch_run.py train  STORE DUMPS            trains until killed; a checkpoint every 2 steps,
                                               each also written to DUMPS/step-N.pt
    torch_run.py resume STORE DUMPS OUT.pt     restores the newest good checkpoint, writes the
                                               restored state to OUT.pt, trains 4 more steps
"""

import os
import sys
import time

import torch

from ftstore import CheckpointManager, Store

mode, store_url, dumps = sys.argv[1:4]

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
manager = CheckpointManager(Store.open(store_url, create=True), "torch-run", keep_last=3, background=True)

start, stop = 0, 1_000_000
if mode == "resume":
    state = manager.restore(map_location="cpu")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.save({"step": state["step"], "model": model.state_dict(), "optimizer": opt.state_dict()}, sys.argv[4])
    start, stop = state["step"] + 1, state["step"] + 5

for step in range(start, stop):
    g = torch.Generator().manual_seed(step)
    x, y = torch.rand(16, 8, generator=g), torch.rand(16, 1, generator=g)
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 2 == 1:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
        tmp = os.path.join(dumps, f".step-{step}.pt")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(dumps, f"step-{step}.pt"))
        manager.save(step, state, metrics={"loss": loss.item()})
    if mode == "train":
        time.sleep(0.03)
manager.wait_until_finished()
