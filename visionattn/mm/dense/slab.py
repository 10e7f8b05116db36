"""The official SLAB dense backbone (xinghaochen/SLAB detection/mmdet_custom/swin_transformer_slab.py:
SwinTransformer_SLAB; `attn_type='SSSS'` gives swin_transformer_prepbn.py:SwinTransformer_PRepBN) on the zoo's
`SlabSwinTransformer`.

* SLA windows 56 / 28 in the 'L' stages and softmax windows `window_size` (7) in the 'S' stages, at any input
  size: every block pads its normalised map to its window before the shift (odd blocks shift by half a window;
  SLA ignores the shift mask, as there);
* PRepBN norms everywhere (`LinearNorm`: LayerNorm -> RepBN), whose BatchNorms stay in eval mode in training
  (statistics frozen, affine and `alpha` trained);
* plain LayerNorm per output (`out_norms.i`, official `norm{i}`), no final norm or head.

SLAB-PVT has no official dense backbone (its detection config names a `pvt_tiny` class the repository does not
contain); the zoo's SLAB-PVT stays a classification model.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from visionattn.backbones import slab as _slab
from visionattn.checkpoint import unwrap_state_dict
from visionattn.layers.prepbn import LinearNorm, linear_norm

from ._common import check_no_extra, filter_with_out_norms, official_window_attention, pad_right_bottom

__all__ = ["SLABSwinDense", "checkpoint_filter_fn"]


class _DenseSlaBlock(_slab.SlaSwinBlock):
    dense_window: int = 56
    dense_shift: int = 0

    def _attn(self, x):
        ws = self.dense_window
        return official_window_attention(x, ws, self.dense_shift, lambda win, mask: self.attn(win, (ws, ws)),
                                         masked=False)


class _DenseSoftmaxBlock(_slab._SlabWindowBlock):
    dense_shift: int = 0

    def _attn(self, x):
        return official_window_attention(x, self.window_size[0], self.dense_shift,
                                         lambda win, mask: self.attn(win, mask=mask))


class SLABSwinDense(_slab.SlabSwinTransformer):
    """Official `SwinTransformer_SLAB` (mmdet): official arguments; forward returns the NCHW maps of
    `out_indices`. `sla_windows` are the SLA windows of stages 0 and 1 (official: 56, 28, fixed)."""

    def __init__(self, pretrain_img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2, norm_layer=None, ape=False,
                 patch_norm=True, out_indices=(0, 1, 2, 3), frozen_stages=-1, use_checkpoint=False,
                 focusing_factor=3, kernel_size=5, attn_type="LLSS", sla_windows=(56, 28), pretrained=None,
                 **kwargs):
        check_no_extra(type(self).__name__, kwargs)
        if ape or not patch_norm or qk_scale is not None:
            raise ValueError("ape=True, patch_norm=False and qk_scale are not supported (no released model uses "
                             "them)")
        n = len(depths)
        windows = [*sla_windows, *([window_size] * n)][:n]
        windows = [windows[i] if attn_type[i] == "L" else window_size for i in range(n)]
        super().__init__(img_size=224, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                         embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads), window_size=56,
                         attn_type=attn_type, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop_rate=drop_rate,
                         attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                         norm_layer=norm_layer or linear_norm(300000, 1e-5), kernel_size=kernel_size,
                         softmax_window_size=window_size)
        self.patch_embed.strict_img_size = False  # padded to the patch size in forward, as the official embed
        self.norm = nn.Identity()
        self.pos_drop = nn.Dropout(drop_rate)
        self.out_indices = tuple(int(i) for i in out_indices)
        self.frozen_stages = frozen_stages
        self.dense_windows = tuple(windows)
        dims = [int(embed_dim * 2 ** i) for i in range(n)]
        self.out_norms = nn.ModuleList([nn.LayerNorm(d) if i in self.out_indices else nn.Identity()
                                        for i, d in enumerate(dims)])
        for i, stage in enumerate(self.layers):
            for j, blk in enumerate(stage.blocks):
                shift = 0 if j % 2 == 0 else windows[i] // 2
                if isinstance(blk, _slab.SlaSwinBlock):
                    if blk.window_size != windows[i]:
                        raise ValueError(f"stage {i}: SLA window {windows[i]} needs a positional encoding of "
                                         f"{windows[i]}^2 tokens; the classification layout has {blk.window_size}^2")
                    blk.__class__ = _DenseSlaBlock
                    blk.dense_window = windows[i]
                else:
                    blk.__class__ = _DenseSoftmaxBlock
                blk.dense_shift = shift
        if use_checkpoint:
            self.set_grad_checkpointing(True)
        if pretrained:
            from visionattn.checkpoint import load_state_dict_file

            from .loading import load_filtered

            load_filtered(self, checkpoint_filter_fn(load_state_dict_file(pretrained), self), pretrained,
                          optional=("out_norms.",))
        self._freeze_bn()

    def _freeze_bn(self):
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_bn()  # the official backbone keeps every RepBN BatchNorm in eval mode
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.pos_drop(self.patch_embed(pad_right_bottom(x, self.patch_embed.patch_size[0])))
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)
            if i in self.out_indices:
                outs.append(self.out_norms[i](x).permute(0, 3, 1, 2).contiguous())
            if i >= max(self.out_indices):
                break
        return tuple(outs)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official SLAB-Swin / Swin-PRepBN classification or dense checkpoints (mmdet `backbone.*`, `norm{i}`) ->
    `SLABSwinDense`. Counters the official `LinearNorm` lacks (`warm`) are set to 0; the classifier is dropped."""
    sd = unwrap_state_dict(state_dict)
    sd = filter_with_out_norms(sd, model, _slab.checkpoint_filter_fn)
    for name, m in model.named_modules():
        if isinstance(m, LinearNorm) and f"{name}.iter" in sd and f"{name}.warm" not in sd:
            sd[f"{name}.warm"] = torch.zeros_like(m.warm)
    return sd
