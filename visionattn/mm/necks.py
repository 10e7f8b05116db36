"""`TransConvFPN`: the FPN the SHViT / EfficientViM papers use on their 3-level (stride 16/32/64) backbones.

Like EfficientViT-MSRA's `EfficientViTFPN`: laterals + top-down over the backbone levels, then
`num_extra_trans_convs` stride-2 transposed convs grow finer levels from the finest lateral (2 -> strides
4..64 for Mask R-CNN; 1 -> 8..64 for RetinaNet), and stride-2 3x3 convs on the last backbone map
(`add_extra_convs='on_input'`) or max-pooling give any further coarse levels up to `num_outs`.
`pre_norm=True` puts a LayerNorm2d on every backbone map before its lateral (EfficientViM's config).
Outputs are ordered fine -> coarse.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["TransConvFPN"]


def _conv_bn_relu(cin: int, cout: int, k: int, s: int = 1, transpose: bool = False) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, k, s, bias=False) if transpose else nn.Conv2d(cin, cout, k, s, k // 2,
                                                                                        bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TransConvFPN(BaseModule):
    """FPN with transposed-conv upsampled extra fine levels (for backbones whose finest map is stride 16)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 5,
                 num_extra_trans_convs: int = 2, add_extra_convs: str | bool = "on_input", pre_norm: bool = False,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        in_channels = list(in_channels)
        if num_extra_trans_convs < 0:
            raise ValueError(f"num_extra_trans_convs must be >= 0, got {num_extra_trans_convs}")
        if num_outs < 1:
            raise ValueError(f"num_outs must be >= 1, got {num_outs}")
        if add_extra_convs not in (False, "on_input", "on_output"):
            raise ValueError(f"add_extra_convs must be False, 'on_input' or 'on_output', got {add_extra_convs!r}")
        self.in_channels, self.out_channels, self.num_outs = in_channels, out_channels, num_outs
        self.add_extra_convs = add_extra_convs
        self.pre_norms = nn.ModuleList([LayerNorm2d(c) for c in in_channels]) if pre_norm else None
        self.lateral_convs = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, 1, 1) for _ in in_channels])
        self.trans_convs = nn.ModuleList([
            nn.Sequential(_conv_bn_relu(out_channels, out_channels, 2, 2, transpose=True),
                          nn.Conv2d(out_channels, out_channels, 3, 1, 1))
            for _ in range(num_extra_trans_convs)])
        n_extra = max(0, num_outs - num_extra_trans_convs - len(in_channels))
        self.extra_convs = nn.ModuleList()
        if add_extra_convs:
            for i in range(n_extra):
                cin = in_channels[-1] if (i == 0 and add_extra_convs == "on_input") else out_channels
                self.extra_convs.append(nn.Conv2d(cin, out_channels, 3, 2, 1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"TransConvFPN expects {len(self.in_channels)} maps, got {len(inputs)}")
        xs = [n(x) for n, x in zip(self.pre_norms, inputs)] if self.pre_norms is not None else list(inputs)
        lat = [conv(x) for conv, x in zip(self.lateral_convs, xs)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        outs = [conv(y) for conv, y in zip(self.fpn_convs, lat)]
        fine, y = [], lat[0]
        for tc in self.trans_convs:
            y = tc[0](y)
            fine.insert(0, tc[1](y))
        outs = fine + outs
        if self.add_extra_convs:
            src = xs[-1] if self.add_extra_convs == "on_input" else outs[-1]
            for i, conv in enumerate(self.extra_convs):
                src = conv(src if i == 0 else F.relu(src))
                outs.append(src)
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs[: self.num_outs])
