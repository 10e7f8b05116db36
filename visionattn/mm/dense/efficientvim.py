"""The official EfficientViM dense backbone (mlvlab/EfficientViM detection|segmentation/efficientViM.py:EfficientViM,
registered as `EfficientViM_M1..M4`) on timm's EfficientViM.

The official dense backbone is the classification network without its multi-stage head (no hidden-state norms,
fusion weights or heads): the stride-16 stem and three HSM-SSD stages, returning each stage's map *before* its
downsample (strides 16 / 32 / 64) at any input size. Its `train()` keeps every BatchNorm in eval mode (the
segmentation file also converts them to SyncBatchNorm, which in eval mode is the same function). Module names are
timm's, which are the official ones; `checkpoint_filter_fn` maps official classification checkpoints (`model`, as
the official loaders read it; the head entries dropped) and the official detectors' `backbone.*` keys, reshaping
the official (1, C, 1) LayerNorm parameters to timm's (C,).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.efficientvim import EfficientViM
from torch import nn

from visionattn.checkpoint import unwrap_state_dict

from ._common import FrozenBatchNormMixin, check_no_extra

__all__ = ["EfficientViMDense", "checkpoint_filter_fn"]

_HEAD = ("norm.", "heads.", "heads_dist.", "weights", "weights_dist")


class EfficientViMDense(FrozenBatchNormMixin, nn.Module):
    """Official dense `EfficientViM`: official arguments (`in_dim`, `embed_dim`, `depths`, `mlp_ratio`,
    `ssd_expand`, `state_dim`; `distillation` accepted without effect, as the official); forward returns the NCHW
    maps of `out_indices` (default: the three stages, as the official)."""

    default_out_indices = (0, 1, 2)
    official_args = frozenset({"in_dim", "frozen_stages", "embed_dim", "depths", "mlp_ratio", "ssd_expand",
                               "state_dim", "distillation", "pretrained", "num_classes"})

    def __init__(self, in_dim=3, embed_dim=(128, 256, 512), depths=(2, 2, 2), mlp_ratio=4.0, ssd_expand=1.0,
                 state_dim=(49, 25, 9), distillation=False, out_indices=(0, 1, 2), frozen_stages=-1, pretrained=None,
                 **kwargs):
        check_no_extra(type(self).__name__, kwargs)
        super().__init__()
        n = len(depths)
        if not (len(embed_dim) == len(state_dim) == n):
            raise ValueError(f"embed_dim, depths and state_dim must have one entry per stage, got {embed_dim}, "
                             f"{depths}, {state_dim}")
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or any(not 0 <= i < n for i in self.out_indices):
            raise ValueError(f"out_indices must be stage indices in [0, {n - 1}], got {out_indices}")
        net = EfficientViM(in_chans=in_dim, num_classes=0, embed_dim=tuple(embed_dim), depths=tuple(depths),
                           mlp_ratio=mlp_ratio, ssd_expand=ssd_expand, state_dim=tuple(state_dim))
        self._adopt(net, frozen_stages, pretrained, checkpoint_filter_fn)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if n.endswith(".D")}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(x)
        outs = []
        last = max(self.out_indices)
        for i, stage in enumerate(self.stages):
            x_out, x, _ = stage(x)
            if i in self.out_indices:
                outs.append(x_out)
            if i == last:
                break
        return tuple(outs)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official EfficientViM checkpoints -> `EfficientViMDense`: classification (`model`, not the EMA copy, as the
    official dense loaders; the multi-stage head dropped) and detection / segmentation (`backbone.*` stripped);
    (1, C, 1) LayerNorm parameters flattened to the model's shape."""
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith(_HEAD) and k not in own:
            continue
        if k in own and v.shape != own[k].shape and v.numel() == own[k].numel() and k.endswith(
                (".norm.weight", ".norm.bias")):
            v = v.reshape(own[k].shape)
        out[k] = v
    return out


_VARIANTS: dict[str, dict] = {  # the official sizes (segmentation/efficientViM.py EfficientViM_M1..M4)
    "efficientvim_m1": dict(embed_dim=(128, 192, 320), depths=(2, 2, 2), state_dim=(49, 25, 9)),
    "efficientvim_m2": dict(embed_dim=(128, 256, 512), depths=(2, 2, 2), state_dim=(49, 25, 9)),
    "efficientvim_m3": dict(embed_dim=(224, 320, 512), depths=(2, 2, 2), state_dim=(49, 25, 9)),
    "efficientvim_m4": dict(embed_dim=(224, 320, 512), depths=(3, 4, 2), state_dim=(64, 32, 16)),
}
