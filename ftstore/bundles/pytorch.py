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
    import torch

    for k, t in sd.items():
        if t.layout != torch.strided:  # sparse, or another layout safetensors has no place for
            raise BadInputError(f"weight {k!r} is a {t.layout} tensor; safetensors stores dense tensors only")
    return {k: t.detach().to("cpu").contiguous().clone() for k, t in sd.items()}


def save_weights(sd: dict[str, Any], path: Path) -> None:
    """``sd`` as a safetensors file; a tensor of a type safetensors lacks (complex128) is
    refused, naming it."""
    from safetensors.torch import save_file

    tensors = state_dict_for_saving(sd)
    try:
        save_file(tensors, str(path))
    except KeyError as e:  # safetensors' table of types has no entry for this one
        lacking = next((k for k, t in tensors.items() if t.dtype == e.args[0]), None) if e.args else None
        what = f"weight {lacking!r} is {_dtype(tensors[lacking])}" if lacking else f"a weight is {e}"
        raise BadInputError(f"{what}, a type safetensors cannot store") from None


def write_weights(model: Any, path: Path) -> None:
    save_weights(model.state_dict(), path)


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
