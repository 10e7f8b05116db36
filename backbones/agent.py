"""Agent Attention backbones: Agent-DeiT, Agent-PVT, Agent-Swin, Agent-CSwin (Han et al., ECCV 2024).

Paper: https://arxiv.org/abs/2312.08874 -- official code: https://github.com/LeapLabTHU/Agent-Attention
(the repository has no licence file; this is a re-implementation from the paper and the project spec).

Agent attention routes softmax attention through n agent tokens A = AdaptiveAvgPool(Q) (n << N):

    V_A = softmax(s A K^T + B1) V,     O = softmax(s Q A^T + B2) V_A + DWC(V)

with agent position biases B1/B2 made of a 7x7 table per agent (bilinearly resized to the grid every forward)
plus per-row / per-column terms (`ah`/`aw`/`ha`/`wa`) whose length is the token-grid side.

Variants (official key names, so official checkpoints load through `checkpoint_filter_fn`):

* `agent_deit_{t,s,b}`, `agent_deit_s_448` -- DeiT with agent attention (DeiT-B: blocks 0-3 only, 81 agents).
* `agent_pvt_{t,s,m,l}`, `agent_pvt_m_256` -- PVT v1 with agent attention in every block (no spatial reduction).
* `agent_swin_{t,s,b}`, `agent_swin_s_288`, `agent_swin_b_384` -- Swin v1 with global agent attention in the
  first stages (timm Swin window blocks elsewhere; timm layout `layers.i.downsample` at the stage start).
* `agent_cswin_{t,s,b}`, `agent_cswin_b_384` -- CSWin (`visionattn.layers.cswin`) with single-branch agent
  attention in stages 1-2.

Input size: the official models are fixed to their construction size. Here any size works (sides multiple of
the patch size; CSwin stripe stages zero-pad like the official CSWin dense backbone): the grid-length agent biases
are linearly interpolated along their grid axis (as the official fine-tuning loader does), the 7x7 tables are
resized as always, DeiT/PVT position embeddings are resampled (DeiT bicubic like the official fine-tuning loader,
PVT bilinear like the official PVT forward). At the construction size nothing is resized, so outputs equal the
official model's.
`checkpoint_filter_fn` resizes the same tables (and Swin relative-position tables) once when a checkpoint made at
another size is loaded.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import (
    ClassifierHead,
    DropPath,
    Mlp,
    PatchEmbed,
    resample_abs_pos_embed,
    resize_rel_pos_bias_table_simple,
)
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from timm.models.vision_transformer import Block as VitBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from visionattn._registry import register_zoo_model
from visionattn.checkpoint import (
    build_model_with_pretrained_file,
    download_cached,
    load_state_dict_file,
    resample_square_pos_embed,
    shift_swin_downsample_keys,
    unwrap_state_dict,
)
from visionattn.layers.cswin import CSWinTransformer, LePEAttention
from visionattn.layers.pvt import PvtAttention
from visionattn.official import register_official
from visionattn.utils import LinearHeadMixin, drop_path_rates, trunc_normal_unless_meta

__all__ = [
    "AgentAttention",
    "AgentCSWinAttention",
    "AgentDeiT",
    "AgentPVT",
    "AgentSwinTransformer",
    "AgentCSWinTransformer",
    "agent_attention",
    "resize_agent_bias",
    "checkpoint_filter_fn",
]

# grid axis of each grid-length bias (shapes [1,H,n,L,1], [1,H,n,1,L], [1,H,L,1,n], [1,H,1,L,n])
_GRID_AXIS = {"ah_bias": (3, 0), "aw_bias": (4, 1), "ha_bias": (2, 0), "wa_bias": (3, 1)}


def resize_agent_bias(t: torch.Tensor, name: str, grid: tuple[int, int]) -> torch.Tensor:
    """Linearly resize a grid-length agent bias (`ah_bias`/`aw_bias`/`ha_bias`/`wa_bias`) to `grid` (H, W).

    1-D `interpolate(mode='linear', align_corners=False)` along the grid axis (the official fine-tuning rule);
    the tensor is returned unchanged when its length already matches.
    """
    dim, side = _GRID_AXIS[name]
    size = grid[side]
    if t.shape[dim] == size:
        return t
    moved = t.movedim(dim, -1)
    shape = moved.shape
    out = F.interpolate(moved.reshape(1, -1, shape[-1]).float(), size=size, mode="linear", align_corners=False)
    return out.to(t.dtype).reshape(*shape[:-1], size).movedim(-1, dim)


def agent_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    agents: torch.Tensor,
    bias_agent: torch.Tensor,
    bias_query: torch.Tensor,
    scale: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Two-step agent attention on heads-first tensors.

    q: (B, H, Nq, d); k, v: (B, H, Nk, d); agents: (B, H, n, d); bias_agent: (1|B, H, n, Nk);
    bias_query: (1|B, H, Nq, n). Returns softmax(s q A^T + bias_query) softmax(s A k^T + bias_agent) v.
    """
    bias_agent = bias_agent.to(q.dtype)
    bias_query = bias_query.to(q.dtype)
    agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=bias_agent, dropout_p=dropout_p, scale=scale)
    return F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=bias_query, dropout_p=dropout_p, scale=scale)


class _AgentBiasMixin:
    """Creates the agent position biases and evaluates them on a given query / key grid."""

    def _init_agent_biases(self, num_heads: int, agent_num: int, q_grid, kv_grid, cls_token: bool = False):
        p = math.isqrt(agent_num)
        if p * p != agent_num or agent_num < 1:
            raise ValueError(f"agent_num must be a perfect square >= 1, got {agent_num}")
        self.agent_num = agent_num
        self.pool_size = p
        h, n = num_heads, agent_num
        (qh, qw), (kh, kw) = q_grid, kv_grid
        self.an_bias = nn.Parameter(torch.zeros(h, n, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(h, n, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, h, n, kh, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, h, n, 1, kw))
        self.ha_bias = nn.Parameter(torch.zeros(1, h, qh, 1, n))
        self.wa_bias = nn.Parameter(torch.zeros(1, h, 1, qw, n))
        names = ["an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias"]
        if cls_token:
            self.ac_bias = nn.Parameter(torch.zeros(1, h, n, 1))
            self.ca_bias = nn.Parameter(torch.zeros(1, h, 1, n))
            names += ["ac_bias", "ca_bias"]
        for name in names:
            trunc_normal_unless_meta(getattr(self, name))

    def _agent_biases(self, q_hw, kv_hw, cls_token: bool = False):
        h, n = self.an_bias.shape[:2]
        an = F.interpolate(self.an_bias, size=kv_hw, mode="bilinear", align_corners=False)
        ah = resize_agent_bias(self.ah_bias, "ah_bias", kv_hw)
        aw = resize_agent_bias(self.aw_bias, "aw_bias", kv_hw)
        b1 = an.reshape(1, h, n, -1) + (ah + aw).reshape(1, h, n, -1)
        na = F.interpolate(self.na_bias, size=q_hw, mode="bilinear", align_corners=False)
        ha = resize_agent_bias(self.ha_bias, "ha_bias", q_hw)
        wa = resize_agent_bias(self.wa_bias, "wa_bias", q_hw)
        b2 = na.reshape(1, h, n, -1).transpose(-2, -1) + (ha + wa).reshape(1, h, -1, n)
        if cls_token:
            b1 = torch.cat([self.ac_bias, b1], dim=-1)
            b2 = torch.cat([self.ca_bias, b2], dim=-2)
        return b1, b2

    def _pool_agents(self, q: torch.Tensor, hw) -> torch.Tensor:
        b, _, c = q.shape
        a = F.adaptive_avg_pool2d(q.transpose(1, 2).reshape(b, c, hw[0], hw[1]), self.pool_size)
        return a.reshape(b, c, -1).transpose(1, 2)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


class AgentAttention(_AgentBiasMixin, nn.Module):
    """Global agent attention on a token grid (Agent-Swin / Agent-PVT / Agent-DeiT module).

    Args:
        grid_size: (H, W) the biases are made for (the stage grid at the construction size).
        separate_q: PVT layout (`q` + `kv` Linears) instead of one `qkv`.
        sr_ratio: PVT spatial reduction of keys/values (`sr` conv + `norm`), 1 = none.
        cls_token: DeiT layout: token 0 is a class token with its own bias slots (`ac_bias`, `ca_bias`); it is
            not pooled into agents and gets no DWC term.

    forward(x, hw): x (B, N, C) on grid hw (plus the class token first when cls_token).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        agent_num: int = 49,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        separate_q: bool = False,
        sr_ratio: int = 1,
        cls_token: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio must be >= 1, got {sr_ratio}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5  # qk_scale is ignored, as in the official modules
        self.separate_q = separate_q
        self.sr_ratio = sr_ratio
        self.cls_token = cls_token
        if separate_q:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)
        self.dwc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        gh, gw = grid_size
        self._init_agent_biases(num_heads, agent_num, (gh, gw), (gh // sr_ratio, gw // sr_ratio), cls_token)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, w = hw
        kv_hw = hw
        if self.separate_q:
            q = self.q(x)
            if self.sr_ratio > 1:
                xs = self.sr(x.transpose(1, 2).reshape(b, c, h, w))
                kv_hw = (xs.shape[2], xs.shape[3])
                xs = self.norm(xs.flatten(2).transpose(1, 2))
            else:
                xs = x
            k, v = self.kv(xs).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        off = 1 if self.cls_token else 0
        agents = self._pool_agents(q[:, off:], hw)
        b1, b2 = self._agent_biases(hw, kv_hw, self.cls_token)
        nh = self.num_heads
        out = agent_attention(
            _heads(q, nh), _heads(k, nh), _heads(v, nh), _heads(agents, nh), b1, b2, self.scale,
            self.attn_drop if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(b, n, c)
        vmap = v[:, off:].transpose(1, 2).reshape(b, c, kv_hw[0], kv_hw[1])
        if kv_hw != hw:
            vmap = F.interpolate(vmap, size=hw, mode="bilinear", align_corners=False)
        local = self.dwc(vmap).flatten(2).transpose(1, 2)
        if off:
            out = torch.cat([out[:, :1], out[:, 1:] + local], dim=1)
        else:
            out = out + local
        return self.proj_drop(self.proj(out))


class AgentCSWinAttention(_AgentBiasMixin, nn.Module):
    """Single-branch agent attention for `visionattn.layers.cswin.CSWinBlock` (its attention-factory API).

    Global over the stage grid; the DWC is the CSWin LePE conv `get_v`; no projection (the block's `proj`).
    `grid_size` is the stage grid the biases are made for.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: tuple[int, int],
        agent_num: int = 49,
        branch_idx: int = -1,
        attn_drop: float = 0.0,
        **_: Any,
    ):
        super().__init__()
        if branch_idx != -1:
            raise ValueError(
                "agent attention in CSWin is single-branch (the split size must reach the stage resolution, as in "
                f"every official config); got a stripe branch (branch_idx={branch_idx})"
            )
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        self._init_agent_biases(num_heads, agent_num, grid_size, grid_size)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = q.shape
        nh = self.num_heads
        agents = self._pool_agents(q, hw)
        b1, b2 = self._agent_biases(hw, hw)
        out = agent_attention(
            _heads(q, nh), _heads(k, nh), _heads(v, nh), _heads(agents, nh), b1, b2, self.scale,
            self.attn_drop if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(b, n, c)
        lepe = self.get_v(v.transpose(1, 2).reshape(b, c, hw[0], hw[1]))
        return out + lepe.flatten(2).transpose(1, 2)


def _init_linear_ln(m: nn.Module):
    if isinstance(m, nn.Linear):
        trunc_normal_unless_meta(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_divisible(x: torch.Tensor, m: int, what: str) -> None:
    if x.shape[-2] % m or x.shape[-1] % m:
        raise ValueError(f"input height and width must be multiples of {what} = {m}, got {tuple(x.shape[-2:])}")


def _check_agent_nums(agent_num, n: int = 4) -> tuple[int, ...]:
    if isinstance(agent_num, (int, str)):
        agent_num = [agent_num] * n
    agent_num = tuple(int(a) for a in agent_num)
    if len(agent_num) != n:
        raise ValueError(f"agent_num must have {n} entries, got {agent_num}")
    return agent_num


# ==============================================================================================================
# Agent-DeiT


class AgentDeiTBlock(nn.Module):
    """Pre-norm ViT block with agent attention (class token first)."""

    def __init__(self, dim, num_heads, grid_size, agent_num, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0,
                 attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = AgentAttention(dim, num_heads, grid_size, agent_num, qkv_bias, attn_drop, proj_drop,
                                   cls_token=True)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), hw))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class _PlainDeiTBlock(VitBlock):
    """timm ViT block that ignores the grid argument."""

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None, **kwargs) -> torch.Tensor:
        return super().forward(x)


# official agent_deit: block i takes agent_num[_DEIT_AGENT_SLOT[i // 2]]
_DEIT_AGENT_SLOT = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}


class AgentDeiT(nn.Module):
    """DeiT (ViT with class token) whose first `agent_layer` blocks use agent attention.

    Args:
        agent_num: 4 agent counts; block i uses agent_num[{0:0, 1:1, 2:2, 3:2, 4:2, 5:3}[i // 2]] (official rule).
        agent_layer: number of leading agent blocks (-1 = all); the rest are plain softmax ViT blocks.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        agent_num: Sequence[int] = (49, 49, 49, 49),
        agent_layer: int = -1,
        global_pool: str = "token",
    ):
        super().__init__()
        agent_num = _check_agent_nums(agent_num)
        n_agent_blocks = depth if agent_layer < 0 else agent_layer
        if n_agent_blocks > depth:
            raise ValueError(f"agent_layer must be -1 or in [0, depth={depth}], got {agent_layer}")
        if n_agent_blocks > 12:
            raise ValueError(f"agent blocks beyond index 11 have no agent count (official rule); agent_layer="
                             f"{agent_layer}, depth={depth}")
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, output_fmt="NHWC",
                                      strict_img_size=False)
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, depth)
        blocks = []
        for i in range(depth):
            if i < n_agent_blocks:
                blocks.append(AgentDeiTBlock(
                    embed_dim, num_heads, self.grid_size, agent_num[_DEIT_AGENT_SLOT[i // 2]], mlp_ratio, qkv_bias,
                    drop_rate, attn_drop_rate, dpr[i], norm_layer,
                ))
            else:
                blocks.append(_PlainDeiTBlock(
                    embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate, attn_drop=attn_drop_rate,
                    drop_path=dpr[i], norm_layer=norm_layer,
                ))
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size) for i in range(depth)]
        trunc_normal_unless_meta(self.pos_embed)
        trunc_normal_unless_meta(self.cls_token)
        self.apply(_init_linear_ln)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^cls_token|pos_embed|patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("token", "avg", ""):
                raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        _check_divisible(x, self.patch_embed.patch_size[0], "patch_size")
        x = self.patch_embed(x)
        hw = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2)
        pos = self.pos_embed
        if hw != tuple(self.grid_size):
            pos = resample_abs_pos_embed(pos, list(hw), list(self.grid_size), num_prefix_tokens=1,
                                         interpolation="bicubic", antialias=False)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        return self.pos_drop(x), hw

    def _block(self, blk, x, hw):
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            return checkpoint(blk, x, hw, use_reentrant=False)
        return blk(x, hw)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False,
                              return_prefix_tokens: bool = False):
        """Block outputs as NCHW patch maps (timm ViT convention; `norm` applies the final norm to each)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        b = x.shape[0]
        x, hw = self._embed(x)
        blocks = self.blocks if not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, blk in enumerate(blocks):
            x = self._block(blk, x, hw)
            if i in take_indices:
                y = self.norm(x) if norm else x
                prefix, y = y[:, :1], y[:, 1:]
                if output_fmt == "NCHW":
                    y = y.reshape(b, hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append((y, prefix) if return_prefix_tokens else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, hw = self._embed(x)
        for blk in self.blocks:
            x = self._block(blk, x, hw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, 1:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ==============================================================================================================
# Agent-PVT


class AgentPVTBlock(nn.Module):
    def __init__(self, dim, num_heads, grid_size, agent_num, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0,
                 attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm, sr_ratio=1, agent_sr_ratio=1, agent=True):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if agent:
            self.attn = AgentAttention(dim, num_heads, grid_size, agent_num, qkv_bias, attn_drop, drop,
                                       separate_q=True, sr_ratio=agent_sr_ratio)
        else:
            self.attn = PvtAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _parse_letters(value, n: int, name: str, allowed: str) -> str:
    s = "".join(value) if not isinstance(value, str) else value
    if len(s) < n or any(ch not in allowed for ch in s[:n]):
        raise ValueError(f"{name} must start with {n} letters from {allowed!r}, got {value!r}")
    return s


class AgentPVT(LinearHeadMixin, nn.Module):
    """PVT v1 (no class token, no final norm, head on the token mean) with agent attention.

    Args:
        attn_type: one letter per stage, 'A' agent attention, 'B' PVT spatial-reduction attention.
        sr_ratios: spatial reduction of the 'B' stages; agent_sr_ratios: of the agent stages (1 = none, the
            released models).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        depths: Sequence[int] = (2, 2, 2, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        agent_sr_ratios: Sequence[int] | str = (1, 1, 1, 1),
        agent_num: Sequence[int] = (9, 16, 49, 49),
        attn_type: str = "AAAA",
        global_pool: str = "avg",
    ):
        super().__init__()
        attn_type = _parse_letters(attn_type, 4, "attn_type", "AB")
        agent_sr = tuple(int(a) for a in agent_sr_ratios)
        agent_num = _check_agent_nums(agent_num)
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False
        self.num_stages = 4
        block_norm = partial(nn.LayerNorm, eps=1e-6)
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        self.grids = []
        self.feature_info = []
        for i in range(4):
            grid = (img[0] // patch_size // 2 ** i, img[1] // patch_size // 2 ** i)
            self.grids.append(grid)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, grid[0] * grid[1], embed_dims[i])))
        for i in range(4):
            pe = PatchEmbed(
                None, patch_size if i == 0 else 2, in_chans if i == 0 else embed_dims[i - 1], embed_dims[i],
                norm_layer=nn.LayerNorm, output_fmt="NHWC", strict_img_size=False,
            )
            setattr(self, f"patch_embed{i + 1}", pe)
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            setattr(self, f"block{i + 1}", nn.ModuleList([
                AgentPVTBlock(
                    embed_dims[i], num_heads[i], self.grids[i], agent_num[i], mlp_ratios[i], qkv_bias, qk_scale,
                    drop_rate, attn_drop_rate, dpr[sum(depths[:i]) + j], block_norm, sr_ratios[i], agent_sr[i],
                    agent=attn_type[i] == "A",
                )
                for j in range(depths[i])
            ]))
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=patch_size * 2 ** i, module=f"block{i + 1}"))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        for i in range(4):
            trunc_normal_unless_meta(getattr(self, f"pos_embed{i + 1}"))
        self.apply(_init_linear_ln)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f"pos_embed{i + 1}" for i in range(4)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed1|pos_embed1",
            blocks=[(r"^block(\d+)\.(\d+)", None), (r"^(?:patch_embed|pos_embed)(\d+)", (0,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def _pos_embed(self, i: int, hw: tuple[int, int]) -> torch.Tensor:
        pos = getattr(self, f"pos_embed{i + 1}")
        g = self.grids[i]
        if tuple(hw) == tuple(g):
            return pos
        # the official PVT resizes its position embeddings bilinearly at run time
        pos = pos.reshape(1, g[0], g[1], -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=hw, mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def _run_stage(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if i == 0:
            _check_divisible(x, self.patch_embed1.patch_size[0] * 8, "patch_size * 8 (four unpadded patch embeds)")
        x = getattr(self, f"patch_embed{i + 1}")(x)
        hw = (x.shape[1], x.shape[2])
        x = getattr(self, f"pos_drop{i + 1}")(x.flatten(1, 2) + self._pos_embed(i, hw))
        for blk in getattr(self, f"block{i + 1}"):
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                x = checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return x, hw

    @staticmethod
    def _to_map(x, hw):
        return x.transpose(1, 2).reshape(x.shape[0], -1, hw[0], hw[1])

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs as NCHW maps (PVT has no final norm; `norm` is accepted and ignored)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(4, indices)
        last = max_index + 1 if stop_early else 4
        intermediates = []
        for i in range(last):
            x, hw = self._run_stage(i, x)
            if i in take_indices:
                intermediates.append(self._to_map(x, hw))
            if i < 3:
                x = self._to_map(x, hw)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take_indices, max_index = feature_take_indices(4, indices)
        for i in range(max_index + 1, 4):
            setattr(self, f"block{i + 1}", nn.ModuleList())
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            x, hw = self._run_stage(i, x)
            if i < 3:
                x = self._to_map(x, hw)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ==============================================================================================================
# Agent-Swin


class AgentSwinBlock(nn.Module):
    """Swin block (NHWC in / out) whose attention is global agent attention over the whole stage grid."""

    def __init__(self, dim, num_heads, grid_size, agent_num, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0,
                 attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = AgentAttention(dim, num_heads, grid_size, agent_num, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        x = x + self.drop_path1(self.attn(self.norm1(x), (h, w)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)


class AgentSwinStage(nn.Module):
    """timm-style Swin stage: optional PatchMerging first, then `num_agent` agent blocks and window blocks."""

    def __init__(self, dim, out_dim, grid_size, depth, num_heads, num_agent, agent_num, window_size, downsample,
                 mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0, attn_drop=0.0, drop_path=(0.0,),
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.downsample = PatchMerging(dim, out_dim, norm_layer=norm_layer) if downsample else nn.Identity()
        self.grad_checkpointing = False
        blocks = []
        for j in range(depth):
            if j < num_agent:
                blocks.append(AgentSwinBlock(out_dim, num_heads, grid_size, agent_num, mlp_ratio, qkv_bias, proj_drop,
                                             attn_drop, drop_path[j], norm_layer))
            else:
                blocks.append(SwinTransformerBlock(
                    out_dim, grid_size, num_heads, window_size=window_size,
                    shift_size=0 if j % 2 == 0 else window_size // 2, dynamic_mask=True, mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop, drop_path=drop_path[j],
                    norm_layer=norm_layer,
                ))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


def _parse_swin_attn_type(attn_type: str, depths: Sequence[int]) -> tuple[int, ...]:
    """Number of leading agent blocks per stage: 'A' all, 'B' none, 'M' the count given after the 4 letters."""
    s = _parse_letters(attn_type, 4, "attn_type", "ABM")
    counts = []
    for i, ch in enumerate(s[:4]):
        if ch == "A":
            counts.append(depths[i])
        elif ch == "B":
            counts.append(0)
        else:
            if not s[4:].isdigit():
                raise ValueError(f"attn_type {attn_type!r}: an 'M' stage needs its agent block count after the "
                                 "4 stage letters (e.g. 'AAMB2')")
            counts.append(min(int(s[4:]), depths[i]))
    return tuple(counts)


class AgentSwinTransformer(nn.Module):
    """Swin v1 with global agent attention (`attn_type` letters per stage, see `_parse_swin_attn_type`).

    Args:
        window_size: window of the softmax window-attention blocks (official: max(7, WINDOW_SIZE // 8)).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        agent_num: Sequence[int] = (9, 16, 49, 49),
        attn_type: str = "AAAB",
        global_pool: str = "avg",
    ):
        super().__init__()
        num_agent = _parse_swin_attn_type(attn_type, depths)
        agent_num = _check_agent_nums(agent_num)
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.window_size = window_size
        dims = [embed_dim * 2 ** i for i in range(4)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = PatchEmbed(img, patch_size, in_chans, embed_dim, norm_layer=nn.LayerNorm,
                                      output_fmt="NHWC", strict_img_size=False)
        grid = self.patch_embed.grid_size
        dpr = drop_path_rates(drop_path_rate, sum(depths))
        stages = []
        self.feature_info = []
        for i in range(4):
            g = (grid[0] // 2 ** i, grid[1] // 2 ** i)
            stages.append(AgentSwinStage(
                dims[max(i - 1, 0)], dims[i], g, depths[i], num_heads[i], num_agent[i], agent_num[i], window_size,
                downsample=i > 0, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt="NHWC")
        self.apply(_init_linear_ln)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+).downsample", (0,)), (r"^layers\.(\d+)\.\w+\.(\d+)", None), (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_intermediates(self, x, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs as NCHW maps (the last through the final norm when `norm`)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        x = self._patch_embed(x)
        stages = self.layers if not stop_early else self.layers[: max_index + 1]
        intermediates = []
        last = len(self.layers) - 1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous())
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def _patch_embed(self, x: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, self.patch_embed.patch_size[0], "patch_size")
        return self.patch_embed(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self._patch_embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ==============================================================================================================
# Agent-CSwin


class AgentCSWinTransformer(CSWinTransformer):
    """CSWin with single-branch global agent attention in the stages marked 'A' in `attn_type`.

    `la_split_size` (official CSWIN_LA_SPLIT_SIZE) is the split of the agent stages; it must reach the stage
    resolution (single branch), as in every official config; None = each stage's grid at `img_size`.
    """

    def __init__(
        self,
        img_size: int = 224,
        embed_dim: int = 64,
        depth: Sequence[int] = (2, 4, 32, 2),
        split_size: Sequence[int] = (1, 2, 7, 7),
        la_split_size: Sequence[int] | str | None = None,
        num_heads: Sequence[int] = (2, 4, 8, 16),
        agent_num: Sequence[int] = (9, 16, 49, 49),
        attn_type: str = "AABB",
        **kwargs,
    ):
        attn_type = _parse_letters(attn_type, 4, "attn_type", "AB")
        agent_num = _check_agent_nums(agent_num)
        grids = [img_size // 4 // 2 ** i for i in range(4)]
        if la_split_size is None:
            la_split_size = grids
        elif isinstance(la_split_size, str):
            la_split_size = [int(s) for s in la_split_size.split("-")]
        splits, layers, single = [], [], []
        for i in range(4):
            if attn_type[i] == "A":
                if la_split_size[i] < grids[i]:
                    raise ValueError(
                        f"la_split_size[{i}]={la_split_size[i]} is below the stage-{i + 1} resolution {grids[i]}: "
                        "stripe-window agent attention is not supported (no official config uses it)"
                    )
                splits.append(la_split_size[i])
                layers.append(partial(AgentCSWinAttention, grid_size=(grids[i], grids[i]), agent_num=agent_num[i]))
                single.append(True)
            else:
                splits.append(split_size[i])
                layers.append(LePEAttention)
                single.append(i == 3 or split_size[i] >= grids[i])
        super().__init__(img_size=img_size, embed_dim=embed_dim, depth=depth, split_size=splits,
                         num_heads=num_heads, attn_layer=layers, single_branch=single, **kwargs)


# ==============================================================================================================
# checkpoints

# buffers the official models save and these models rebuild (the official fine-tuning loader drops them too)
_REBUILT_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")


def _model_grid(model: nn.Module, key: str) -> tuple[int, int] | None:
    if key == "pos_embed" and isinstance(model, AgentDeiT):
        return tuple(model.grid_size)
    m = re.fullmatch(r"pos_embed(\d)", key)
    if m and isinstance(model, AgentPVT):
        return tuple(model.grids[int(m.group(1)) - 1])
    return None


def _resize_like(key: str, v: torch.Tensor, target: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resize a size-dependent tensor of a checkpoint made at another input size to the model's shape."""
    name = key.rsplit(".", 1)[-1]
    if name in _GRID_AXIS:
        dim, side = _GRID_AXIS[name]
        grid = [0, 0]
        grid[side] = target.shape[dim]
        return resize_agent_bias(v, name, tuple(grid))
    if name.startswith("pos_embed"):
        grid = _model_grid(model, key)
        if grid is not None:
            return resample_square_pos_embed(v, grid, 1 if isinstance(model, AgentDeiT) else 0, key)
    if name == "relative_position_bias_table":
        w = (math.isqrt(target.shape[0]) + 1) // 2
        return resize_rel_pos_bias_table_simple(v, (w, w), tuple(target.shape))
    return v


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official Agent-Attention checkpoint onto this module.

    Opens trainer envelopes (`model`, `state_dict`, DDP `module.`), moves official Swin `layers.i.downsample` to
    timm's `layers.{i+1}.downsample` and `head.*` to `head.fc.*`, drops rebuilt buffers (`attn_mask`,
    `relative_position_index`), and resizes the tables tied to the input size when the checkpoint was made at
    another size than the model: agent `ah/aw/ha/wa` biases (linear, along the grid axis), position embeddings
    (bicubic, cls slot kept), Swin relative-position tables (bicubic, timm `resize_rel_pos_bias_table_simple`).
    """
    sd = unwrap_state_dict(state_dict)
    # official Swin layout: downsample at the end of a stage (so layers.0 has one), plain `head`
    if isinstance(model, AgentSwinTransformer) and any(k.startswith("layers.0.downsample.") for k in sd):
        sd = shift_swin_downsample_keys(sd)
        sd = {("head.fc." + k[len("head."):] if k in ("head.weight", "head.bias") else k): v for k, v in sd.items()}
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in _REBUILT_BUFFERS and k not in own:
            continue
        if k in own and own[k].shape != v.shape:
            v = _resize_like(k, v, own[k], model)
        out[k] = v
    return out


def load_official_checkpoint(path_or_url: str, file_name: str | None = None) -> dict:
    """An official Agent-Attention checkpoint (trainer dict with a yacs config, read safely), downloaded first
    when a URL is given."""
    if "://" in path_or_url:
        path_or_url = download_cached(path_or_url, file_name)
    return load_state_dict_file(path_or_url)


# ==============================================================================================================
# timm registration

_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
_URLS = {
    "agent_deit_t": "57e0904221824ee7b7af",
    "agent_deit_s": "fdd43304372541db8ea7",
    "agent_deit_s_448": "a228f86241c445f1969b",
    "agent_deit_b": "5115f15fdd7e4ab58fbc",
    "agent_pvt_t": "13fdf0e0a7c5498c934f",
    "agent_pvt_s": "36b8be9a8863456685a3",
    "agent_pvt_m": "4d00ecacf18b45f9b88c",
    "agent_pvt_m_256": "654df734121643b19c52",
    "agent_pvt_l": "040cfe0cfbbe4762ad09",
    "agent_swin_t": "a2ddc1190c224f768a41",
    "agent_swin_s": "f607172c9fea4d6e99bb",
    "agent_swin_s_288": "09760394e93b4046a25e",
    "agent_swin_b": "4fcd2d0114bb490483c3",
    "agent_swin_b_384": "bb84ee9058954706a557",
    "agent_cswin_t": "8c562a74441e46d5902b",
    "agent_cswin_s": "30eb8af675bc4b7a8747",
    "agent_cswin_b": "c8035b0839b2410c8c9f",
    "agent_cswin_b_384": "1239be0df44b47719432",
}
_FIRST_CONV = {"deit": "patch_embed.proj", "pvt": "patch_embed1.proj", "swin": "patch_embed.proj",
               "cswin": "stage1_conv_embed.0"}


def _cfg(variant: str, size: int = 224, crop_pct: float = 0.875, **kwargs) -> dict:
    family = variant.split("_")[1]
    return {
        "url": _TSINGHUA.format(_URLS[variant]),
        "num_classes": 1000,
        "input_size": (3, size, size),
        "pool_size": None,
        "crop_pct": crop_pct,
        "crop_mode": "squash",  # official eval: square resize to S/crop_pct, then center crop
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": _FIRST_CONV[family],
        "classifier": "head.fc" if family == "swin" else "head",
        "license": "unknown",  # the official repository has no licence file
        "paper_name": "Agent Attention: On the Integration of Softmax and Linear Attention",
        "paper_ids": "arXiv:2312.08874",
        "origin_url": "https://github.com/LeapLabTHU/Agent-Attention",
        "notes": (f"official TsinghuaCloud checkpoint (trainer dict, weights under 'model'), file name {variant}.pth",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "agent_deit_t.in1k": _cfg("agent_deit_t"),
    "agent_deit_s.in1k": _cfg("agent_deit_s"),
    "agent_deit_s_448.in1k": _cfg("agent_deit_s_448", 448),
    "agent_deit_b.in1k": _cfg("agent_deit_b"),
    "agent_pvt_t.in1k": _cfg("agent_pvt_t"),
    "agent_pvt_s.in1k": _cfg("agent_pvt_s"),
    "agent_pvt_m.in1k": _cfg("agent_pvt_m"),
    "agent_pvt_m_256.in1k": _cfg("agent_pvt_m_256", 256),
    "agent_pvt_l.in1k": _cfg("agent_pvt_l"),
    "agent_swin_t.in1k": _cfg("agent_swin_t"),
    "agent_swin_s.in1k": _cfg("agent_swin_s"),
    "agent_swin_s_288.in1k": _cfg("agent_swin_s_288", 288, crop_pct=1.0),
    "agent_swin_b.in1k": _cfg("agent_swin_b"),
    "agent_swin_b_384.in1k": _cfg("agent_swin_b_384", 384, crop_pct=1.0),
    "agent_cswin_t.in1k": _cfg("agent_cswin_t"),
    "agent_cswin_s.in1k": _cfg("agent_cswin_s"),
    "agent_cswin_b.in1k": _cfg("agent_cswin_b"),
    "agent_cswin_b_384.in1k": _cfg("agent_cswin_b_384", 384),
})


# every TsinghuaCloud link ends in '?dl=1': cache each file under its official name instead
_CACHE_NAMES = {_TSINGHUA.format(key): f"{variant}.pth" for variant, key in _URLS.items()}


def _create(cls, variant: str, pretrained: bool = False, feature_cfg: dict | None = None, **kwargs):
    return build_model_with_pretrained_file(
        cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        cache_file_names=_CACHE_NAMES,
        feature_cfg=feature_cfg or dict(out_indices=(0, 1, 2, 3), feature_cls="getter"), **kwargs,
    )


def _create_agent_deit(variant: str, pretrained: bool = False, **kwargs) -> AgentDeiT:
    out_indices = kwargs.pop("out_indices", 3)
    return _create(AgentDeiT, variant, pretrained, dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


def _create_agent_pvt(variant: str, pretrained: bool = False, **kwargs) -> AgentPVT:
    return _create(AgentPVT, variant, pretrained, **kwargs)


def _create_agent_swin(variant: str, pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    return _create(AgentSwinTransformer, variant, pretrained, **kwargs)


def _create_agent_cswin(variant: str, pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    return _create(AgentCSWinTransformer, variant, pretrained, **kwargs)


def _args(defaults: dict, kwargs: dict) -> dict:
    return {**defaults, **kwargs}


_DEIT = dict(patch_size=16, depth=12, mlp_ratio=4.0, qkv_bias=True)
_PVT = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
            qkv_bias=True, sr_ratios=(8, 4, 2, 1), agent_num=(9, 16, 49, 49), attn_type="AAAA")
_SWIN = dict(patch_size=4, window_size=7, agent_num=(9, 16, 49, 49))
_CSWIN = dict(split_size=(1, 2, 7, 7), agent_num=(9, 16, 49, 49), attn_type="AABB")


@register_zoo_model("agent_attention")
def agent_deit_t(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-T (6.0M params, 1.2 GFLOPs, 74.9% IN-1k top-1)."""
    args = _args(dict(_DEIT, embed_dim=192, num_heads=3, agent_num=(49, 49, 49, 49)), kwargs)
    return _create_agent_deit("agent_deit_t", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_deit_s(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-S (22.7M params, 4.4 GFLOPs, 80.5%)."""
    args = _args(dict(_DEIT, embed_dim=384, num_heads=6, agent_num=(49, 49, 49, 49)), kwargs)
    return _create_agent_deit("agent_deit_s", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_deit_s_448(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-S at 448 (23.1M params, 17.7 GFLOPs, 83.1%)."""
    args = _args(dict(_DEIT, img_size=448, embed_dim=384, num_heads=6, agent_num=(49, 49, 49, 49)), kwargs)
    return _create_agent_deit("agent_deit_s_448", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_deit_b(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-B (87.2M params, 17.6 GFLOPs, 82.0%): agent attention in blocks 0-3, 81 agents."""
    args = _args(dict(_DEIT, embed_dim=768, num_heads=12, agent_num=(81, 81, 81, 81), agent_layer=4), kwargs)
    return _create_agent_deit("agent_deit_b", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_pvt_t(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-T (11.6M params, 2.0 GFLOPs, 78.4%)."""
    return _create_agent_pvt("agent_pvt_t", pretrained, **_args(dict(_PVT, depths=(2, 2, 2, 2)), kwargs))


@register_zoo_model("agent_attention")
def agent_pvt_s(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-S (20.6M params, 4.0 GFLOPs, 82.2%)."""
    return _create_agent_pvt("agent_pvt_s", pretrained, **_args(dict(_PVT, depths=(3, 4, 6, 3)), kwargs))


@register_zoo_model("agent_attention")
def agent_pvt_m(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M (35.9M params, 7.0 GFLOPs, 83.4%)."""
    return _create_agent_pvt("agent_pvt_m", pretrained, **_args(dict(_PVT, depths=(3, 4, 18, 3)), kwargs))


@register_zoo_model("agent_attention")
def agent_pvt_m_256(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M at 256 (36.1M params, 9.2 GFLOPs, 83.8%)."""
    args = _args(dict(_PVT, img_size=256, depths=(3, 4, 18, 3)), kwargs)
    return _create_agent_pvt("agent_pvt_m_256", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_pvt_l(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-L (48.7M params, 10.4 GFLOPs, 83.7%)."""
    return _create_agent_pvt("agent_pvt_l", pretrained, **_args(dict(_PVT, depths=(3, 8, 27, 3)), kwargs))


@register_zoo_model("agent_attention")
def agent_swin_t(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-T (29M params, 4.5 GFLOPs, 82.6%)."""
    args = _args(dict(_SWIN, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_type="AAAB"), kwargs)
    return _create_agent_swin("agent_swin_t", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_s(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S (50M params, 8.7 GFLOPs, 83.7%)."""
    args = _args(dict(_SWIN, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), attn_type="AABB"),
                 kwargs)
    return _create_agent_swin("agent_swin_s", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_s_288(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S at 288 (50M params, 14.6 GFLOPs, 84.1%; window blocks 9x9)."""
    args = _args(dict(_SWIN, img_size=288, window_size=9, embed_dim=96, depths=(2, 2, 18, 2),
                      num_heads=(3, 6, 12, 24), attn_type="AABB"), kwargs)
    return _create_agent_swin("agent_swin_s_288", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_b(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B (88M params, 15.4 GFLOPs, 84.0%)."""
    args = _args(dict(_SWIN, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), attn_type="AAMB2"),
                 kwargs)
    return _create_agent_swin("agent_swin_b", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_b_384(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B at 384 (88M params, 46.3 GFLOPs, 84.9%; window blocks 12x12)."""
    args = _args(dict(_SWIN, img_size=384, window_size=12, embed_dim=128, depths=(2, 2, 18, 2),
                      num_heads=(4, 8, 16, 32), attn_type="AAMB2"), kwargs)
    return _create_agent_swin("agent_swin_b_384", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_t(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSwin-T (21M params, 4.3 GFLOPs, 83.1%)."""
    args = _args(dict(_CSWIN, embed_dim=64, depth=(2, 4, 18, 1), num_heads=(2, 4, 8, 16)), kwargs)
    return _create_agent_cswin("agent_cswin_t", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_s(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSwin-S (33M params, 6.8 GFLOPs, 83.9%)."""
    args = _args(dict(_CSWIN, embed_dim=64, depth=(3, 6, 29, 2), num_heads=(2, 4, 8, 16)), kwargs)
    return _create_agent_cswin("agent_cswin_s", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_b(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSwin-B (73M params, 14.9 GFLOPs, 84.7%)."""
    args = _args(dict(_CSWIN, embed_dim=96, depth=(3, 6, 29, 2), num_heads=(4, 8, 16, 32)), kwargs)
    return _create_agent_cswin("agent_cswin_b", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_b_384(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSwin-B at 384 (73M params, 46.3 GFLOPs, 85.8%; stripes of 12)."""
    args = _args(dict(_CSWIN, img_size=384, split_size=(1, 2, 12, 12), embed_dim=96, depth=(3, 6, 29, 2),
                      num_heads=(4, 8, 16, 32)), kwargs)
    return _create_agent_cswin("agent_cswin_b_384", pretrained, **args)


# ==============================================================================================================
# official constructors (visionattn.from_official)

_OFFICIAL_ROOT = "agent_transformer/models/"


def _expect(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported here; allowed: {allowed}")


def _drop_descriptive(kwargs: dict, *names: str) -> dict:
    """Drop official arguments that only take their default (fixtures spell such values as strings)."""
    out = dict(kwargs)
    for n in names:
        v = out.pop(n, None)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"official argument {n}={v!r} is not supported (only its default)")
    return out


@register_official("agent_attention", _OFFICIAL_ROOT + "agent_deit.py:VisionTransformer", checkpoint_filter_fn)
def _official_deit(representation_size=None, distilled=False, qk_scale=None, **kwargs) -> AgentDeiT:
    _expect("representation_size", representation_size, (None,))
    _expect("distilled", distilled, (False,))
    kwargs = _drop_descriptive(kwargs, "norm_layer", "embed_layer", "act_layer", "weight_init", "hybrid_backbone")
    return AgentDeiT(**kwargs).eval()


def _official_deit_fn(defaults: dict):
    def build(pretrained=False, **kwargs) -> AgentDeiT:
        _expect("pretrained", pretrained, (False,))
        return AgentDeiT(**{**_DEIT, **defaults, **kwargs}).eval()
    return build


for _fn, _d in {
    "agent_deit_tiny": dict(embed_dim=192, num_heads=3),
    "agent_deit_small": dict(embed_dim=384, num_heads=6),
    "agent_deit_base": dict(embed_dim=768, num_heads=12, agent_layer=4),
}.items():
    register_official("agent_attention", _OFFICIAL_ROOT + f"agent_deit.py:{_fn}", checkpoint_filter_fn)(
        _official_deit_fn(_d))


@register_official("agent_attention", _OFFICIAL_ROOT + "agent_pvt.py:PyramidVisionTransformer", checkpoint_filter_fn)
def _official_pvt(num_stages=4, **kwargs) -> AgentPVT:
    _expect("num_stages", num_stages, (4,))
    norm = kwargs.pop("norm_layer", None)
    if norm is not None and not (isinstance(norm, str) and "1e-6" in norm):
        raise ValueError(f"norm_layer must be the LayerNorm(eps=1e-6) of the released configs, got {norm!r}")
    return AgentPVT(**kwargs).eval()


def _official_pvt_fn(depths):
    def build(pretrained=False, **kwargs) -> AgentPVT:
        _expect("pretrained", pretrained, (False,))
        return AgentPVT(**{**_PVT, "depths": depths, **kwargs}).eval()
    return build


for _fn, _d in {"agent_pvt_tiny": (2, 2, 2, 2), "agent_pvt_small": (3, 4, 6, 3), "agent_pvt_medium": (3, 4, 18, 3),
                "agent_pvt_large": (3, 8, 27, 3)}.items():
    register_official("agent_attention", _OFFICIAL_ROOT + f"agent_pvt.py:{_fn}", checkpoint_filter_fn)(
        _official_pvt_fn(_d))


@register_official("agent_attention", _OFFICIAL_ROOT + "agent_swin.py:AgentSwinTransformer", checkpoint_filter_fn)
def _official_swin(img_size=224, patch_size=4, window_size=7, ape=False, patch_norm=True, qk_scale=None,
                   use_checkpoint=False, **kwargs) -> AgentSwinTransformer:
    _expect("ape", ape, (False,))
    _expect("patch_norm", patch_norm, (True,))
    _expect("qk_scale", qk_scale, (None,))
    kwargs = _drop_descriptive(kwargs, "norm_layer")
    grid = img_size // patch_size
    if window_size < grid:
        raise ValueError(f"window_size={window_size} below the stage-1 grid {grid}: windowed agent attention is not "
                         "supported (every official config makes agent blocks global)")
    model = AgentSwinTransformer(img_size=img_size, patch_size=patch_size, window_size=max(7, window_size // 8),
                                 **kwargs)
    model.set_grad_checkpointing(bool(use_checkpoint))
    return model.eval()


@register_official("agent_attention", _OFFICIAL_ROOT + "agent_cswin.py:CSWinTransformer", checkpoint_filter_fn)
def _official_cswin(patch_size=4, use_chk=False, hybrid_backbone=None, **kwargs) -> AgentCSWinTransformer:
    _expect("patch_size", patch_size, (4,))
    _expect("hybrid_backbone", hybrid_backbone, (None,))
    kwargs = _drop_descriptive(kwargs, "norm_layer")
    model = AgentCSWinTransformer(**kwargs)
    model.set_grad_checkpointing(bool(use_chk))
    return model.eval()


def _official_cswin_fn(defaults: dict):
    def build(pretrained=False, **kwargs) -> AgentCSWinTransformer:
        _expect("pretrained", pretrained, (False,))
        return AgentCSWinTransformer(**{**defaults, **kwargs}).eval()
    return build


for _fn, _d in {
    "Agent_CSWin_64_24181_tiny_224": dict(embed_dim=64, depth=(2, 4, 18, 1), split_size=(1, 2, 7, 7),
                                          num_heads=(2, 4, 8, 16)),
    "Agent_CSWin_64_36292_small_224": dict(embed_dim=64, depth=(3, 6, 29, 2), split_size=(1, 2, 7, 7),
                                           num_heads=(2, 4, 8, 16)),
    "Agent_CSWin_96_36292_base_224": dict(embed_dim=96, depth=(3, 6, 29, 2), split_size=(1, 2, 7, 7),
                                          num_heads=(4, 8, 16, 32)),
    "Agent_CSWin_96_36292_base_384": dict(embed_dim=96, depth=(3, 6, 29, 2), split_size=(1, 2, 12, 12),
                                          num_heads=(4, 8, 16, 32)),
}.items():
    register_official("agent_attention", _OFFICIAL_ROOT + f"agent_cswin.py:{_fn}", checkpoint_filter_fn)(
        _official_cswin_fn(_d))
