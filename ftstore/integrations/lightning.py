"""A PyTorch Lightning ``CheckpointIO`` that keeps checkpoints in an ftstore store.

    trainer = L.Trainer(plugins=[FtstoreCheckpointIO(Store.open("ckpts", create=True))])

Lightning hands this plugin file paths; each path maps to one artifact name
(``<prefix>-<file name>`` with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``).
Loading verifies and, if needed, repairs the artifact before ``torch.load`` sees a byte,
and uses ``weights_only=True`` unless Lightning asks otherwise.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from ftstore.api import Store
from ftstore.documents import ArtifactKey
from ftstore.errors import NotFoundError

_BAD = re.compile(r"[^A-Za-z0-9._-]")


class FtstoreCheckpointIO(CheckpointIO):
    def __init__(self, store: Store, prefix: str = "lightning", overhead: float = 0.10):
        self.store = store
        self.prefix = prefix
        self.overhead = overhead

    def artifact_name(self, path: str | Path) -> str:
        return _BAD.sub("_", f"{self.prefix}-{Path(path).name}")[:128]

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with tempfile.TemporaryDirectory(prefix="ftstore-lightning-") as tmp:
            f = Path(tmp) / "checkpoint.pt"
            torch.save(checkpoint, f)
            self.store.save(f, self.artifact_name(path), "file", {"lightning.path": str(path)}, self.overhead)

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        name = self.artifact_name(path)
        if not self.store.versions(name):
            raise FileNotFoundError(f"no checkpoint {path} in {self.store.url} (artifact {name})")
        with tempfile.TemporaryDirectory(prefix="ftstore-lightning-") as tmp:
            f = Path(tmp) / "checkpoint.pt"
            self.store.load(name, f)
            return torch.load(f, map_location=map_location, weights_only=True if weights_only is None else weights_only)

    def remove_checkpoint(self, path: str | Path) -> None:
        name = self.artifact_name(path)
        for v in self.store.versions(name):
            try:
                self.store.delete(ArtifactKey(name, v))
            except NotFoundError:
                pass
