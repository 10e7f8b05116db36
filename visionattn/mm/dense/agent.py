"""The official Agent Attention dense backbones (LeapLabTHU downstream/detection/mmdet/models/backbones/
agent_swin.py:AgentSwinTransformer, agent_pvt.py:AgentPVT; the segmentation copies are identical) on the zoo's
`AgentSwinTransformer` / `AgentPyramidVisionTransformer`.

What the dense code does differently from classification, reproduced here:

* agents are pooled to `downstream_agent_shapes[i]` (e.g. Swin 9x9 / 12x12 / 14x14 / 7x7) instead of the
  classification agent grid (`agent_num[i]`, e.g. 3x3); the agent biases, made for that classification grid, are
  bilinearly resized over the agent grid after being resized over the token grid (`DenseAgentAttention`);
* any input size: Agent-Swin pads the image to the patch size and odd maps at patch merging, its global agent
  blocks work on the whole map and its window blocks pad each map to the window *before* the shift (the mmdet
  Swin order; odd blocks always shift); Agent-PVT floors (unpadded stride convs) and resizes position tables
  bilinearly (the official rule, including its shortcut: a stage-1 map with the pre-training token count keeps
  the table as it is);
* per-output LayerNorms on Agent-Swin only (`out_norms.i`, official `norm{i}`); Agent-PVT has none.

Checkpoints: our names are the zoo's (`patch_embed`, `layers.i.downsample` / `stages.i.*`, ...);
`checkpoint_filter_fn` maps official classification and dense (mmdet `backbone.*`, `norm{i}`) keys onto them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.backbones import agent as _agent
from visionattn.backbones._common import to_nhwc
from visionattn.backbones._swin import WindowBlock
from visionattn.checkpoint import unwrap_state_dict

from ._common import check_no_extra, filter_with_out_norms, official_window_attention, pad_right_bottom

__all__ = ["AgentSwinDense", "AgentPVTDense", "DenseAgentAttention", "checkpoint_filter_fn"]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


class DenseAgentAttention(_agent.AgentAttention):
    """`AgentAttention` whose agents are pooled to `agent_shape`; the biases made for the p x p classification
    agent grid are bilinearly resized to it (after their token-grid resize), as the official dense modules do."""

    agent_shape: tuple[int, int] = (7, 7)

    def _pool_agents(self, q: torch.Tensor, hw) -> torch.Tensor:
        b, _, c = q.shape
        a = F.adaptive_avg_pool2d(to_nhwc(q, hw).permute(0, 3, 1, 2), self.agent_shape)
        return a.reshape(b, c, -1).transpose(1, 2)

    def _compute_biases(self, q_hw, kv_hw, cls_token: bool):
        b1, b2 = super()._compute_biases(q_hw, kv_hw, cls_token)  # (1, h, n, Nk), (1, h, Nq, n)
        p, shape = self.pool_size, tuple(self.agent_shape)
        if shape == (p, p):
            return b1, b2
        h = b1.shape[1]
        a = shape[0] * shape[1]
        b1 = F.interpolate(b1.reshape(h, p, p, -1).permute(0, 3, 1, 2), size=shape, mode="bilinear")
        b1 = b1.reshape(h, -1, a).transpose(1, 2).unsqueeze(0)
        b2 = F.interpolate(b2.reshape(h, -1, p, p), size=shape, mode="bilinear").reshape(1, h, -1, a)
        return b1, b2


def _make_dense_agents(model: nn.Module, shapes: Sequence, stage_of) -> None:
    for name, m in model.named_modules():
        if isinstance(m, _agent.AgentAttention):
            m.__class__ = DenseAgentAttention  # same parameters and buffers, the dense pooling
            m.agent_shape = _pair(shapes[stage_of(name)])


class _DenseWindowBlock(WindowBlock):
    """The mmdet Swin block: pad before the shift, mask on the padded grid, shift on every odd block."""

    dense_shift: int = 0

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        return official_window_attention(x, self.window_size[0], self.dense_shift,
                                         lambda win, mask: self.attn(win, mask=mask))


def _check_official(**kw):
    for name, (value, allowed) in kw.items():
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not supported by the official dense backbone as released "
                             f"(allowed: {allowed})")


class AgentSwinDense(_agent.AgentSwinTransformer):
    """Official `AgentSwinTransformer` (mmdet / mmseg): official arguments; forward returns the NCHW maps of
    `out_indices`, each through its `out_norms.i` LayerNorm."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                 depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56, mlp_ratio=4.0,
                 out_indices=(0, 1, 2, 3), qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True, use_checkpoint=False,
                 agent_num=(9, 16, 49, 49), downstream_agent_shapes=((3, 3), (4, 4), (7, 7), (7, 7)),
                 kernel_size=3, attn_type="BBBB", scale=-0.5, init_cfg=None, pretrained=None, **kwargs):
        check_no_extra(type(self).__name__, kwargs)
        _check_official(ape=(ape, (False,)), patch_norm=(patch_norm, (True,)), kernel_size=(kernel_size, (3,)),
                        scale=(scale, (-0.5,)), qk_scale=(qk_scale, (None,)))
        if len(downstream_agent_shapes) != len(depths):
            raise ValueError(f"downstream_agent_shapes needs one (h, w) per stage, got {downstream_agent_shapes}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                         embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads),
                         window_size=max(7, int(window_size) // 8), mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         drop_rate=0.0, proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=drop_path_rate, agent_num=agent_num, attn_type=attn_type,
                         norm_layer=norm_layer)
        self.norm = nn.Identity()
        self.pos_drop = nn.Dropout(drop_rate)
        self.out_indices = tuple(int(i) for i in out_indices)
        self.downstream_agent_shapes = [_pair(s) for s in downstream_agent_shapes]
        dims = [int(embed_dim * 2 ** i) for i in range(len(depths))]
        self.out_norms = nn.ModuleList([norm_layer(d) if i in self.out_indices else nn.Identity()
                                        for i, d in enumerate(dims)])
        _make_dense_agents(self, self.downstream_agent_shapes, lambda name: int(name.split(".")[1]))
        for stage in self.layers:
            for j, blk in enumerate(stage.blocks):
                if isinstance(blk, WindowBlock):
                    blk.__class__ = _DenseWindowBlock
                    blk.dense_shift = 0 if j % 2 == 0 else blk.window_size[0] // 2
        if use_checkpoint:
            self.set_grad_checkpointing(True)
        if pretrained:
            load_dense_checkpoint(self, pretrained)

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


class AgentPVTDense(_agent.AgentPyramidVisionTransformer):
    """Official `AgentPVT` (mmdet / mmseg): official arguments; forward returns the 4 NCHW stage maps (no norms)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dims=(64, 128, 256, 512),
                 num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4), qkv_bias=False, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=None, depths=(3, 4, 6, 3),
                 sr_ratios=(8, 4, 2, 1), agent_sr_ratios="1111", num_stages=4, agent_num=(9, 16, 49, 49),
                 downstream_agent_shapes=((3, 3), (4, 4), (7, 7), (7, 7)), kernel_size=3, attn_type="BBBB",
                 scale=-0.5, init_cfg=None, pretrained=None, out_indices=(0, 1, 2, 3), **kwargs):
        check_no_extra(type(self).__name__, kwargs)
        _check_official(kernel_size=(kernel_size, (3,)), scale=(scale, (-0.5,)), qk_scale=(qk_scale, (None,)),
                        num_stages=(num_stages, (4,)))
        attn_type = "AAAA" if attn_type is None else attn_type
        if any(int(agent_sr_ratios[i]) != 1 for i in range(4) if attn_type[i] == "A"):
            raise ValueError("agent_sr_ratios must be 1 in agent stages (the official dense forward asserts it)")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                         embed_dims=tuple(embed_dims), num_heads=tuple(num_heads), mlp_ratios=tuple(mlp_ratios),
                         qkv_bias=qkv_bias, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=drop_path_rate, depths=tuple(depths), sr_ratios=tuple(sr_ratios),
                         agent_sr_ratios=agent_sr_ratios, agent_num=agent_num, attn_type=attn_type,
                         norm_layer=norm_layer)
        # the official class has no out_indices and returns the 4 maps (the mm wrapper picks its levels)
        self.out_indices = tuple(int(i) for i in out_indices)
        self.downstream_agent_shapes = [_pair(s) for s in downstream_agent_shapes]
        _make_dense_agents(self, self.downstream_agent_shapes, lambda name: int(name.split(".")[1]))
        if pretrained:
            load_dense_checkpoint(self, pretrained)

    def _pos_embed(self, i: int, hw: tuple[int, int]) -> torch.Tensor:
        stage = self.stages[i]
        pos = stage.pos_embed
        g0 = self.stages[0].grid_size
        # the official rule compares every stage's token count with stage 1's table
        if hw[0] * hw[1] == g0[0] * g0[1] and (i == 0 or tuple(hw) == tuple(stage.grid_size)):
            return pos
        gh, gw = stage.grid_size
        pos = pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        return F.interpolate(pos, size=hw, mode="bilinear").reshape(1, -1, hw[0] * hw[1]).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.permute(0, 2, 3, 1)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage.patch_embed(x.permute(0, 3, 1, 2))
            b, h, w, c = x.shape
            t = stage.pos_drop(x.reshape(b, h * w, c) + self._pos_embed(i, (h, w)))
            for blk in stage.blocks:
                t = blk(t, (h, w))
            x = t.reshape(b, h, w, c)
            outs.append(x.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official Agent-Swin / Agent-PVT classification or dense checkpoints (mmdet `backbone.*`, `norm{i}` output
    norms) -> the dense model's keys. The classifier (`head`, final `norm`) is dropped; tables tied to another
    input size are resized by the family filter."""
    sd = unwrap_state_dict(state_dict)
    sd = filter_with_out_norms(sd, model, _agent.checkpoint_filter_fn)
    return sd


def load_dense_checkpoint(model: nn.Module, path: str) -> None:
    """Load a checkpoint through `checkpoint_filter_fn`; every backbone tensor must come from it (the per-output
    norms may be absent: a classification file has none)."""
    from visionattn.checkpoint import load_state_dict_file

    from .loading import load_filtered

    load_filtered(model, checkpoint_filter_fn(load_state_dict_file(path), model), path,
                  optional=("out_norms.",))

