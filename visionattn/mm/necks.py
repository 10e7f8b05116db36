"""`EfficientViTFPN`: the neck of the official SHViT and EfficientViM detectors (their `efficientvit_fpn.py`, from
EfficientViT-MSRA), for backbones whose finest map has stride 16.

mmdet's FPN over the backbone levels (laterals, top-down sum, 3x3 output convs; stride-2 extra convs on the last
input (`add_extra_convs='on_input'`) or max-pooling for further coarse levels), plus `num_extra_trans_convs`
finer levels: stride-2 transposed convs (a bias, no norm or activation unless `norm_cfg` / `act_cfg`) chained from
the finest lateral, each followed by a 3x3 conv. Outputs fine -> coarse: 2 transposed convs give strides 4..64
(Mask R-CNN), 1 gives 8..64 + the extra conv's 128 (RetinaNet). `pre_norm=True` (EfficientViM's version) puts a
LayerNorm over channels on every backbone map first (`batch_norm.i`, the official name; the official (1, C, 1, 1)
parameters load onto it). Module names are the official ones, so released detectors load their neck too.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.necks import FPN
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["EfficientViTFPN"]


class _TransposedConvModule(ConvModule):
    """ConvModule with a transposed convolution (official `TransposedConvModule`): same bias / norm / act rules and
    the same kaiming init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, **kwargs)
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                       bias=self.with_bias)
        self.init_weights()


class EfficientViTFPN(FPN):
    """The official `EfficientViTFPN` (mmdet 2.x) in mmdet 3: the arguments of mmdet's FPN plus
    `num_extra_trans_convs`, `pre_norm` and the deprecated `extra_convs_on_inputs`."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 end_level: int = -1, add_extra_convs: bool | str = False, extra_convs_on_inputs: bool = True,
                 relu_before_extra_convs: bool = False, no_norm_on_lateral: bool = False,
                 num_extra_trans_convs: int = 0, pre_norm: bool = False, conv_cfg=None, norm_cfg=None, act_cfg=None,
                 upsample_cfg=dict(mode="nearest"),  # noqa: B006 - mmdet's default, never mutated
                 init_cfg=dict(type="Xavier", layer="Conv2d", distribution="uniform")):  # noqa: B006
        in_channels = list(in_channels)
        if num_extra_trans_convs < 0:
            raise ValueError(f"num_extra_trans_convs must be >= 0, got {num_extra_trans_convs}")
        if add_extra_convs is True:  # the official (mmdet 2.x) reading of a bool
            add_extra_convs = "on_input" if extra_convs_on_inputs else "on_output"
        if end_level != -1:  # mmdet 2.x (official) and 3.x (here) read it differently: no silent change
            raise ValueError(f"end_level must be -1 (every backbone level), got {end_level}")
        n_in = len(in_channels)
        if num_outs - n_in + start_level < num_extra_trans_convs:
            raise ValueError(f"num_outs ({num_outs}) leaves no room for {num_extra_trans_convs} transposed-conv levels "
                             f"over {n_in - start_level} backbone levels")
        # mmdet's FPN builds the laterals, output convs and the coarse extra convs of the levels left over
        super().__init__(in_channels, out_channels, num_outs - num_extra_trans_convs, start_level=start_level,
                         end_level=end_level, add_extra_convs=add_extra_convs,
                         relu_before_extra_convs=relu_before_extra_convs, no_norm_on_lateral=no_norm_on_lateral,
                         conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg, upsample_cfg=upsample_cfg,
                         init_cfg=init_cfg)
        self.num_outs = num_outs
        self.num_extra_trans_convs = num_extra_trans_convs
        self.pre_norm = pre_norm
        self.batch_norm = nn.ModuleList([LayerNorm2d(c, eps=1e-5) for c in in_channels] if pre_norm else [])
        self.extra_trans_convs = nn.ModuleList()
        self.extra_fpn_convs = nn.ModuleList()
        for _ in range(num_extra_trans_convs):
            self.extra_trans_convs.append(_TransposedConvModule(
                out_channels, out_channels, 2, stride=2, padding=0, conv_cfg=conv_cfg,
                norm_cfg=norm_cfg if not no_norm_on_lateral else None, act_cfg=act_cfg, inplace=False))
            self.extra_fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1, conv_cfg=conv_cfg,
                                                   norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the official LayerNorm2D keeps (1, C, 1, 1) affine parameters
        for i, norm in enumerate(self.batch_norm):
            for leaf in ("weight", "bias"):
                k = f"{prefix}batch_norm.{i}.{leaf}"
                if k in state_dict and state_dict[k].ndim == 4 and state_dict[k].numel() == norm.weight.numel():
                    state_dict[k] = state_dict[k].reshape(-1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"{type(self).__name__} expects {len(self.in_channels)} maps, got {len(inputs)}")
        if self.pre_norm:
            inputs = [norm(x) for norm, x in zip(self.batch_norm, inputs)]
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        used = len(laterals)
        for i in range(used - 1, 0, -1):
            if "scale_factor" in self.upsample_cfg:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                                  **self.upsample_cfg)
        extra_laterals = []  # finest first
        prev = laterals[0]
        for conv in self.extra_trans_convs:
            prev = conv(prev)
            extra_laterals.insert(0, prev)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        n_coarse = self.num_outs - len(extra_laterals)
        if n_coarse > used:
            if not self.add_extra_convs:
                for _ in range(n_coarse - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {"on_input": inputs[self.backbone_end_level - 1], "on_lateral": laterals[-1],
                          "on_output": outs[-1]}[self.add_extra_convs]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, n_coarse):
                    outs.append(self.fpn_convs[i](F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        # the official pairs the i-th 3x3 conv with the i-th finest transposed-conv map
        extra_outs = [conv(y) for conv, y in zip(self.extra_fpn_convs, extra_laterals)]
        return tuple(extra_outs + outs)
