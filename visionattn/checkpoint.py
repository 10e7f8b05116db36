"""Checkpoint helpers: safe loading (safetensors or weights_only) and unwrapping official envelopes."""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

__all__ = ["load_state_dict_file", "unwrap_state_dict", "strip_prefix"]

_ENVELOPES = ("state_dict", "model", "module")


def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file without unpickling arbitrary objects."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device=str(map_location))
    return torch.load(path, map_location=map_location, weights_only=True)


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from every key that has it; keys without it are kept as they are."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def unwrap_state_dict(checkpoint: Mapping, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint: `model_ema` (when asked), `state_dict`, `model` or `module`
    envelopes are opened, and a DDP `module.` prefix is removed."""
    sd = checkpoint
    if use_ema:
        if "model_ema" not in sd:
            raise KeyError("use_ema=True but the checkpoint has no 'model_ema' entry")
        sd = sd["model_ema"]
    for _ in range(3):
        inner = next((sd[k] for k in _ENVELOPES if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    if all(k.startswith("module.") for k in sd):
        sd = strip_prefix(sd, "module.")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
