"""The official GC ViT dense backbone (NVlabs/GCVit detection/models/gc_vit.py:GCViT) on timm's GC ViT pieces.

timm's `GlobalContextVit` ties its windows to `img_size` (input / 32, / 32, / 16, / 32). The official detection
backbone works at any size instead, and this module does what it does:

* windows of `window_size` (default 24) in every stage; each block zero-pads its normalised map right / bottom to
  a multiple of the window (pads carry the qkv bias, no mask) and crops after the attention;
* relative-position tables for those windows, bicubically resized from the pre-training window
  (`window_size_pre`, default 7 / 7 / 14 / 7) when a checkpoint made for another window is loaded (the
  official constructor resizes right after loading its `pretrained` file);
* global queries from the stage input through 3 / 2 / 1 / 0 max-pooling feature blocks (stage 3 pools unless its
  window equals the map at `resolution`), bicubically resized to the window whenever their map differs;
* a LayerNorm per output (`out_norms.i`, official `norm{i}`), no final norm or head.

Module names are timm's (`stem`, `stages.i.{downsample,global_block,blocks}`); `checkpoint_filter_fn` maps the
NVlabs classification (`.pth.tar`) and detection (mmdet `backbone.*`) checkpoints onto them.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import SEModule
from timm.models.gcvit import FeatureBlock, GlobalContextVit, GlobalContextVitBlock, MbConvBlock
from torch import nn

from visionattn.checkpoint import unwrap_state_dict

from ._common import check_no_extra, pad_right_bottom

__all__ = ["GCViTDense", "checkpoint_filter_fn", "resize_rpb_table_bicubic"]


class _PaddedGCViTBlock(GlobalContextVitBlock):
    """timm's block, padded per block to its window (official dense)."""

    def _window_attn(self, x, q_global=None):
        h, w = x.shape[1], x.shape[2]
        x = super()._window_attn(pad_right_bottom(x, self.window_size[0], channels_last=True), q_global)
        return x[:, :h, :w]


class GCViTDense(nn.Module):
    """Official `GCViT` (mmdet): official arguments (`dim`, `depths`, `mlp_ratio`, `num_heads`, `window_size`,
    `window_size_pre`, `resolution`, ...); forward returns the NCHW maps of `out_indices`."""

    def __init__(self, dim=64, depths=(3, 4, 19, 5), mlp_ratio=3.0, num_heads=(2, 4, 8, 16),
                 window_size=(24, 24, 24, 24), window_size_pre=(7, 7, 14, 7), resolution=224, drop_path_rate=0.2,
                 in_chans=3, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 norm_layer=nn.LayerNorm, layer_scale=None, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                 pretrained=None, use_rel_pos_bias=True, **kwargs):
        check_no_extra(type(self).__name__, kwargs)
        super().__init__()
        if not use_rel_pos_bias:
            raise ValueError("use_rel_pos_bias=False is not supported (every released GC ViT uses it)")
        n = len(depths)
        window_size = tuple(int(w) for w in window_size)
        self.window_size = window_size
        self.window_size_pre = tuple(int(w) for w in window_size_pre)
        self.out_indices = tuple(int(i) for i in out_indices)
        self.frozen_stages = frozen_stages
        net = GlobalContextVit(in_chans=in_chans, num_classes=0, img_size=resolution, window_size=window_size,
                               embed_dim=dim, depths=tuple(depths), num_heads=tuple(num_heads), mlp_ratio=mlp_ratio,
                               qkv_bias=qkv_bias, layer_scale=layer_scale, proj_drop_rate=drop_rate,
                               attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        self.stem, self.stages = net.stem, net.stages
        dims = [int(dim * 2 ** i) for i in range(n)]
        # official GlobalQueryGen: pooling units by the stage map at `resolution` (56, 28, 14, 7 at 224)
        pools = [3, 2, 0 if window_size[2] == resolution // 16 else 1, 0][:n]
        for i, stage in enumerate(self.stages):
            stage.global_block = FeatureBlock(dims[i], pools[i])
            stage.norm = nn.Identity()
            for blk in stage.blocks:
                blk.__class__ = _PaddedGCViTBlock
                if qk_scale is not None:
                    blk.attn.scale = qk_scale
        # the official SE squeezes to int(C / 4) channels; timm rounds to a multiple of 8 (same for 64 / 96 / 128 / 192)
        for m in self.modules():
            if isinstance(m, MbConvBlock) and m.se.fc1.out_channels != int(m.se.fc1.in_channels * 0.25):
                c = m.se.fc1.in_channels
                m.se = SEModule(c, rd_channels=int(c * 0.25), bias=False, act_layer=nn.GELU)
        self.out_norms = nn.ModuleList([norm_layer(d) if i in self.out_indices else nn.Identity()
                                        for i, d in enumerate(dims)])
        self.pos_drop = nn.Dropout(drop_rate)
        self.feature_info = [dict(num_chs=d, reduction=4 * 2 ** i, module=f"stages.{i}") for i, d in enumerate(dims)]
        if pretrained:
            from visionattn.checkpoint import load_state_dict_file

            from .loading import load_filtered

            load_filtered(self, checkpoint_filter_fn(load_state_dict_file(pretrained), self), pretrained,
                          optional=("out_norms.",))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.global_block", (0,)),
            (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^out_norms\.(\d+)", None)])

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def _global_query(self, stage, x: torch.Tensor, window: int) -> torch.Tensor:
        q = stage.global_block(x)
        if q.shape[-2:] != (window, window):
            q = F.interpolate(q, size=(window, window), mode="bicubic")
        return q.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.pos_drop(self.stem(x))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage.downsample(x)
            q = self._global_query(stage, x, self.window_size[i])
            y = x.permute(0, 2, 3, 1)
            for blk in stage.blocks:
                y = blk(y, q)
            if i in self.out_indices:
                outs.append(self.out_norms[i](y).permute(0, 3, 1, 2).contiguous())
            if i >= max(self.out_indices):
                break
            x = y.permute(0, 3, 1, 2)
        return tuple(outs)


def resize_rpb_table_bicubic(table: torch.Tensor, window: int) -> torch.Tensor:
    """((2w'-1)^2, heads) -> ((2w-1)^2, heads), bicubic on the square offset grid (the official resize)."""
    n, heads = table.shape
    s1, s2 = math.isqrt(n), 2 * window - 1
    if s1 == s2:
        return table
    t = F.interpolate(table.float().permute(1, 0).reshape(1, heads, s1, s1), size=(s2, s2), mode="bicubic")
    return t.reshape(heads, s2 * s2).permute(1, 0).to(table.dtype)


# NVlabs (classification and detection) -> timm names
_CONV_UNIT = [(r"conv\.0\.", "conv_dw."), (r"conv\.2\.fc\.0\.", "se.fc1."), (r"conv\.2\.fc\.2\.", "se.fc2."),
              (r"conv\.3\.", "conv_pw.")]


def _unit(rest: str) -> str:
    for pat, rep in _CONV_UNIT:
        if re.match(pat, rest):
            return re.sub(pat, rep, rest, count=1)
    return rest


def _official_to_timm(k: str) -> str | None:
    m = re.match(r"^patch_embed\.proj\.(.*)$", k)
    if m:
        return f"stem.conv1.{m[1]}"
    m = re.match(r"^patch_embed\.conv_down\.(.*)$", k)
    if m:
        rest = m[1]
        return "stem.down." + ("conv_block." + _unit(rest) if rest.startswith("conv.") else rest)
    m = re.match(r"^levels\.(\d+)\.downsample\.(.*)$", k)
    if m:
        rest = m[2]
        return f"stages.{int(m[1]) + 1}.downsample." + ("conv_block." + _unit(rest) if rest.startswith("conv.")
                                                          else rest)
    m = re.match(r"^levels\.(\d+)\.q_global_gen\.to_q_global\.(\d+)\.(.*)$", k)
    if m:
        return f"stages.{m[1]}.global_block.blocks.conv{int(m[2]) + 1}." + _unit(m[3])
    m = re.match(r"^levels\.(\d+)\.blocks\.(\d+)\.(.*)$", k)
    if m:
        rest = m[3]
        if rest.endswith("relative_position_index"):
            return None
        rest = rest.replace("attn.relative_position_bias_table", "attn.rel_pos.relative_position_bias_table")
        rest = re.sub(r"^gamma([12])$", r"ls\1.gamma", rest)
        return f"stages.{m[1]}.blocks.{m[2]}.{rest}"
    m = re.match(r"^norm(\d+)\.(.*)$", k)
    if m:
        return f"out_norms.{m[1]}.{m[2]}"
    if k.startswith(("norm.", "head.")):
        return None  # the classifier
    return k


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """NVlabs GC ViT checkpoints (classification `.pth.tar` with `state_dict` / `state_dict_ema`, detection with
    mmdet `backbone.*` keys) or timm-named ones -> `GCViTDense`. SE Linears become 1x1 convs, relative-position
    tables are resized to the model's windows (bicubic), index buffers and the classifier are dropped."""
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith("stages.3.norm.") or k.startswith("head.") or k.endswith("relative_position_index"):
            continue
        nk = _official_to_timm(k)
        if nk is None:
            continue
        if nk in own:
            t = own[nk]
            if ".se.fc" in nk and v.ndim == 2 and t.ndim == 4:
                v = v.reshape(t.shape)
            if nk.endswith("relative_position_bias_table") and v.shape != t.shape:
                v = resize_rpb_table_bicubic(v, (math.isqrt(t.shape[0]) + 1) // 2)
        out[nk] = v
    return out


def official_kwargs_for(name: str) -> dict:
    """The official detection constructor arguments of a timm GC ViT variant (its classification sizes)."""
    return dict(_VARIANTS[name])


_VARIANTS: dict[str, dict] = {
    "gcvit_xxtiny": dict(dim=64, depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16), mlp_ratio=3.0),
    "gcvit_xtiny": dict(dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0),
    "gcvit_tiny": dict(dim=64, depths=(3, 4, 19, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0),
    "gcvit_small": dict(dim=96, depths=(3, 4, 19, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0, layer_scale=1e-5),
    "gcvit_base": dict(dim=128, depths=(3, 4, 19, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0, layer_scale=1e-5),
}
