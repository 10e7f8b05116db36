"""Pieces the official dense backbones share: the mmdet Swin window routine (and right/bottom padding, from utils).

The official mmdet / mmseg Swin-style backbones zero-pad a block's normalised map to a multiple of the window
*before* the cyclic shift and build the shift mask on the padded grid (timm and the classification models shift
first and pad after): at sizes that are no multiple of the window the two differ, so the dense backbones use
`official_window_attention`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from timm.models.swin_transformer import window_partition, window_reverse
from torch import nn

from visionattn.backbones._swin import shift_window_mask
from visionattn.utils import pad_right_bottom

__all__ = ["pad_right_bottom", "official_window_attention", "check_no_extra", "FrozenBatchNormMixin",
           "filter_with_out_norms"]


def official_window_attention(x: torch.Tensor, window: int, shift: int,
                              attn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                              masked: bool = True) -> torch.Tensor:
    """mmdet Swin order on a normalised NHWC map: pad to the window, roll by -shift, (mask on the padded grid),
    windows -> `attn(windows (nW*B, ws*ws, C), mask)` -> merge, roll back, crop. `masked=False`: no mask (SLA)."""
    b, h, w, c = x.shape
    x = pad_right_bottom(x, window, channels_last=True)
    hp, wp = x.shape[1], x.shape[2]
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    mask = shift_window_mask(x, (window, window), (shift, shift)) if shift and masked else None
    win = window_partition(x, (window, window)).reshape(-1, window * window, c)
    win = attn(win, mask).reshape(-1, window, window, c)
    x = window_reverse(win, (window, window), hp, wp)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x[:, :h, :w]


def check_no_extra(owner: str, kwargs: dict) -> None:
    """ValueError naming arguments a dense backbone does not know (the official classes swallow them silently)."""
    if kwargs:
        raise ValueError(f"{owner}: unknown arguments {sorted(kwargs)} (the official backbone's arguments only)")


class FrozenBatchNormMixin:
    """A dense backbone on a timm BN model's stem and stages (SHViT, EfficientViM), with the official dense `train()`:
    every BatchNorm stays in eval mode, and `frozen_stages >= 0` freezes the stem (`patch_embed`) only."""

    def _adopt(self, net: nn.Module, frozen_stages: int, pretrained, filter_fn) -> None:
        """Take `net`'s stem and stages, freeze as asked, then load `pretrained` through `filter_fn`."""
        self.patch_embed, self.stages = net.patch_embed, net.stages
        self.feature_info = net.feature_info
        self._group_matcher = net.group_matcher
        self.frozen_stages = frozen_stages
        self._freeze_stages()
        if pretrained:
            from visionattn.checkpoint import load_state_dict_file

            from .loading import load_filtered

            load_filtered(self, filter_fn(load_state_dict_file(pretrained), self), pretrained)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return self._group_matcher(coarse)

    def _freeze_stages(self):
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            self.patch_embed.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def filter_with_out_norms(sd: dict, model: nn.Module, family_filter) -> dict:
    """Official mmdet-style backbone keys -> a dense model's: the output norms (`norm{i}.*`) become `out_norms.i.*`,
    the rest goes through the family's classification filter, and a classifier the model lacks is dropped."""
    out_norms, rest = {}, {}
    for k, v in sd.items():
        head, _, tail = k.partition(".")
        if head.startswith("norm") and head[4:].isdigit():
            out_norms[f"out_norms.{head[4:]}.{tail}"] = v
        elif k.startswith("out_norms."):
            out_norms[k] = v
        else:
            rest[k] = v
    sd = family_filter(rest, model)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if not (k.startswith(("head.", "norm.")) and k not in own)}
    sd.update(out_norms)
    return sd
