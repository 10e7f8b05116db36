"""The official NAT / DiNAT / DiNAT_s dense backbones (SHI-Labs detection|segmentation/nat.py:NAT,
dinat.py:DiNAT, dinats.py:DiNAT_s) on the zoo's `NAT` / `DiNATs` modules.

No head or final norm, a LayerNorm per output (`out_norms.i`, official `norm{i}`), forward returns the NCHW maps
of `out_indices`. Any input size (the zoo modules pad small maps as NATTEN <= 0.15 did). Official keys
(`levels.i.*`, `norm{i}`, mmdet `backbone.*`) load through `visionattn.backbones.nat.checkpoint_filter_fn`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visionattn.backbones.nat import NAT, DiNATs, checkpoint_filter_fn
from visionattn.checkpoint import load_pretrained_file

__all__ = ["NATDense", "DiNATsDense", "checkpoint_filter_fn"]


class _DenseMixin:
    """frozen_stages: >= 0 freezes the stem, >= 2 also the official levels 0..frozen_stages-2 with their
    downsamplers (the Swin rule the official code intends). pretrained: a checkpoint path, loaded through
    `checkpoint_filter_fn`; a file whose keys do not match raises RuntimeError."""

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), frozen_stages: int = -1,
                 pretrained: str | None = None, **kwargs):
        kwargs.pop("pretrain_img_size", None)  # the official constructors' argument sizes nothing
        if kwargs.get("drop_path_rate", 0.0) is None:
            kwargs.pop("drop_path_rate")
        kwargs.update(num_classes=0, out_norms=tuple(out_indices))
        super().__init__(**kwargs)
        self.out_indices = tuple(out_indices)
        self.norm = nn.Identity()
        self.frozen_stages = frozen_stages
        if pretrained is not None:
            load_pretrained_file(self, pretrained, checkpoint_filter_fn, strict=True)
        self._freeze_stages()

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 2:
            # official level i ends with the downsampler that starts our stage i + 1
            n = self.frozen_stages - 1
            frozen.extend(self.stages[:n])
            if n < len(self.stages):
                frozen.append(self.stages[n].downsample)
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True))


class NATDense(_DenseMixin, NAT):
    """Official detection|segmentation/nat.py:NAT and dinat.py:DiNAT (mmdet/mmseg backbones)."""


class DiNATsDense(_DenseMixin, DiNATs):
    """Official detection|segmentation/dinats.py:DiNAT_s (mmdet/mmseg backbone)."""
