"""`WeightsOnlyCheckpointHook`: make mmengine training checkpoints loadable with torch.load(weights_only=True).

mmengine pickles the message hub's `HistoryBuffer`s (whose pickle calls `getattr`, which no weights-only
allowlist should admit) and numpy arrays / scalars in `meta` and `runtime_info`. Before every save this hook
drops the smoothed-log buffers (a resumed run restarts its log averages, nothing else) and turns numpy values
into Python ones, so the file holds tensors and plain containers only -- torch >= 2.6 then loads it for
`--resume`, `det_test` / `seg_test` and `load_from` with its default weights_only=True.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ["WeightsOnlyCheckpointHook", "to_plain"]


def to_plain(obj: Any) -> Any:
    """Tensors and Python scalars/containers as they are; numpy arrays -> lists, numpy scalars -> Python."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


@HOOKS.register_module(force=True)
class WeightsOnlyCheckpointHook(Hook):
    """Strip non-tensor pickles from checkpoints right before mmengine saves them."""

    priority = "VERY_LOW"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        hub = checkpoint.get("message_hub")
        if isinstance(hub, dict):
            hub["log_scalars"] = {}
        for key in list(checkpoint):
            checkpoint[key] = to_plain(checkpoint[key])
