"""The official BiFormer dense backbone (rayleizhu object_detection|semantic_segmentation/models_mm/
biformer_mm.py:BiFormer_mm) on the zoo's `BiFormer`.

No head or final norm, a LayerNorm2d after every stage (`out_norms.i`, official `extra_norms.i`), forward returns
the 4 NCHW maps (strides 4/8/16/32). Official keys load through `visionattn.backbones.biformer.checkpoint_filter_fn`.
"""
from __future__ import annotations

import torch
from torch import nn

from visionattn.backbones.biformer import BiFormer, checkpoint_filter_fn

__all__ = ["BiFormerDense", "checkpoint_filter_fn"]


class BiFormerDense(BiFormer):
    """`BiFormer_mm`. norm_eval: keep BatchNorms in eval mode in train() (the detection code's default);
    frozen_bn: no BN grads. The segmentation code converts BN to SyncBatchNorm (`nn.SyncBatchNorm.
    convert_sync_batchnorm` does that here too; the keys are the same)."""

    def __init__(self, norm_eval: bool = False, frozen_bn: bool = False, **kwargs):
        kwargs.update(num_classes=0, out_norms=True)
        super().__init__(**kwargs)
        self.norm = nn.Identity()
        self.norm_eval = norm_eval
        if frozen_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.forward_intermediates(x, intermediates_only=True))
