"""PyTorch weights: the state_dict in safetensors (no pickle), loaded strictly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftstore.errors import BadInputError, MissingDependencyError
from ftstore.payloads.bundle_format import ModelEntry, TensorInfo

NAME = "pytorch"
WEIGHTS_FORMAT = "safetensors"
SUFFIX = ".safetensors"


def require() -> Any:
    try:
        import safetensors.torch  # noqa: F401
        import torch
    except ImportError:
        raise MissingDependencyError(
            "backend 'pytorch' was selected but PyTorch is not installed: "
            "pip install 'ftstore[torch]'  (or: pip install torch safetensors)"
        ) from None
    return torch


def _dtype(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def tensor_index(model: Any) -> list[TensorInfo]:
    return [TensorInfo(name=k, dtype=_dtype(t), shape=list(t.shape)) for k, t in model.state_dict().items()]


def state_dict_for_saving(sd: dict[str, Any]) -> dict[str, Any]:
    """CPU, contiguous, unshared copies: what safetensors can store."""
    return {k: t.detach().to("cpu").contiguous().clone() for k, t in sd.items()}


def write_weights(model: Any, path: Path) -> None:
    from safetensors.torch import save_file

    save_file(state_dict_for_saving(model.state_dict()), str(path))


def load_weights(model: Any, path: Path, entry: ModelEntry) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        loaded = load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError) as e:  # a bundle made by hand: its checksum proves nothing
        raise BadInputError(f"model {entry.name!r}: the weights are not a readable safetensors file ({e})") from None
    have = model.state_dict()
    missing = sorted(set(have) - set(loaded))
    extra = sorted(set(loaded) - set(have))
    wrong = [k for k in have if k in loaded and (tuple(have[k].shape) != tuple(loaded[k].shape) or have[k].dtype != loaded[k].dtype)]
    if missing or extra or wrong:
        raise BadInputError(
            f"model {entry.name!r}: weights do not fit the built model"
            + (f"; missing {missing[:5]}" if missing else "")
            + (f"; unexpected {extra[:5]}" if extra else "")
            + (f"; shape/dtype differs for {wrong[:5]}" if wrong else "")
        )
    model.load_state_dict(loaded, strict=True)
