"""Agent Attention backbones: Agent-DeiT, Agent-PVT, Agent-Swin, Agent-CSWin (Han et al., ECCV 2024).

Paper: https://arxiv.org/abs/2312.08874 -- official code: https://github.com/LeapLabTHU/Agent-Attention (no licence
file; re-implemented from the paper and the spec). Softmax attention routed through n pooled agent tokens,
`softmax(s Q A^T + B2) softmax(s A K^T + B1) V + DWC(V)`, on the shared hosts (`_deit`, `_pvt`, `_swin`, `_cswin`).
Any input size whose sides are multiples of the patch size runs (bias tables and position embeddings are resized
to the grid; at the construction size nothing is); `checkpoint_filter_fn` maps and resizes official checkpoints.
Design notes: docs/models.md.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function, resize_rel_pos_bias_table_simple
from timm.models import generate_default_cfgs
from torch import nn

from visionattn._registry import register_zoo_model
from visionattn.checkpoint import build_model_with_pretrained_file, resample_square_pos_embed, unwrap_state_dict
from visionattn.layers.cswin import LePEAttention
from visionattn.layers.fused import set_fused_linear
from visionattn.layers.pvt import PvtAttention
from visionattn.utils import is_graph_capture, trunc_normal_unless_meta

from . import _cswin, _pvt, _swin
from ._common import in1k_cfg, inference_cached, to_nhwc
from ._cswin import CSWinTransformer
from ._deit import GridAttention, GridVisionTransformer
from ._pvt import PyramidVisionTransformerV1
from ._swin import SwinTransformerHost, WindowBlock

__all__ = [
    "AgentAttention",
    "AgentCSWinAttention",
    "AgentVisionTransformer",
    "AgentPyramidVisionTransformer",
    "AgentSwinTransformer",
    "AgentCSWinTransformer",
    "agent_attention",
    "resize_agent_bias",
    "checkpoint_filter_fn",
]

# fewest query tokens (batch x grid) for which the per-head token-major inference path pays off (AMD EPYC, AVX2)
_TOKEN_MAJOR_MIN_TOKENS = 8192
# most heads x agents for the block-diagonal all-heads path (`_agent_attention_block_diag`): its attention FLOPs grow
# with the heads, its saved copies with the tokens (Agent-Swin stage 1: 3 x 9; DeiT 3 x 49 is slower)
_BLOCK_DIAG_MAX = 32
# grid axis of each grid-length bias (shapes [1,H,n,L,1], [1,H,n,1,L], [1,H,L,1,n], [1,H,1,L,n])
_GRID_AXIS = {"ah_bias": (3, 0), "aw_bias": (4, 1), "ha_bias": (2, 0), "wa_bias": (3, 1)}


@register_notrace_function
@torch.fx.wrap
def resize_agent_bias(t: torch.Tensor, name: str, grid: tuple[int, int]) -> torch.Tensor:
    """Linearly resize a grid-length agent bias (`ah_bias`/`aw_bias`/`ha_bias`/`wa_bias`) to `grid` (H, W).

    1-D `interpolate(mode='linear', align_corners=False)` along the grid axis (the official fine-tuning rule);
    the tensor is returned unchanged when its length already matches.
    """
    dim, side = _GRID_AXIS[name]
    size = int(grid[side])
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
    a = agents * scale  # s Q A^T == Q (s A)^T: the scale goes on the n agents, not the N queries
    s1 = torch.matmul(a, k.transpose(-2, -1)).add_(bias_agent.to(q.dtype)).softmax(dim=-1)
    agent_v = torch.matmul(F.dropout(s1, dropout_p) if dropout_p else s1, v)
    s2 = torch.matmul(q, a.transpose(-2, -1)).add_(bias_query.to(q.dtype)).softmax(dim=-1)
    return torch.matmul(F.dropout(s2, dropout_p) if dropout_p else s2, agent_v)


def _agent_attention_tokens(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        agents: torch.Tensor,
        bias_agent: torch.Tensor,
        bias_query: torch.Tensor,
        scale: float,
        local: torch.Tensor,
        num_heads: int,
) -> torch.Tensor:
    """`agent_attention` (no dropout) on token-major (B, N, C) tensors plus the (B, N, C) `local` term, one head at
    a time: each head's q / k / v is a strided slice bmm reads in place, so the heads-first copies of q, k and v
    and the final merge pass are skipped (about a third of the attention time at batch 8 on the 56x56 stage)."""
    c = q.shape[-1]
    d = c // num_heads
    a = agents * scale
    outs = []
    for i in range(num_heads):
        sl = slice(i * d, (i + 1) * d)
        ai = a[..., sl]
        s1 = torch.bmm(ai, k[..., sl].transpose(1, 2)).add_(bias_agent[:, i]).softmax(dim=-1)
        s2 = torch.bmm(q[..., sl], ai.transpose(1, 2)).add_(bias_query[:, i]).softmax(dim=-1)
        outs.append(torch.baddbmm(local[..., sl], s2, torch.bmm(s1, v[..., sl])))
    return torch.cat(outs, dim=-1)


def _agent_attention_block_diag(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        agents: torch.Tensor,
        bias_agent: torch.Tensor,
        bias_query: torch.Tensor,
        scale: float,
        local: torch.Tensor,
        num_heads: int,
        dropout_p: float = 0.0,
) -> torch.Tensor:
    """`agent_attention` plus the `local` term on token-major tensors, all heads in one bmm per step.

    q: (B, Nq, C); k, v: (B, Nk, C) (strided views of the qkv output are read in place); agents: (B, n, C);
    bias_agent: (1|B, H, n, Nk); bias_query: (1|B, Nq, H, n) (query-major); local: (B, Nq, C). Returns (B, Nq, C).
    The agents become a block-diagonal (H*n, C) matrix (row block h holds head h's channels), so the per-head
    products are one matmul over all channels: H times the (small, for few heads and agents) attention FLOPs, but
    no heads-first copies of q / k / v and no head merge. The zeros add exactly: same values as `agent_attention`
    up to summation order.
    """
    b, nq, c = q.shape
    n = agents.shape[1]
    d = c // num_heads
    eye = torch.eye(num_heads, dtype=q.dtype, device=q.device).reshape(1, num_heads, 1, num_heads, 1)
    a = ((agents * scale).reshape(b, 1, n, num_heads, d) * eye).reshape(b, num_heads * n, c)
    s1 = torch.bmm(a, k.transpose(1, 2)).add_(bias_agent.reshape(bias_agent.shape[0], num_heads * n, -1))
    s1 = s1.softmax(dim=-1)
    agent_v = torch.bmm(F.dropout(s1, dropout_p) if dropout_p else s1, v)
    agent_v = (agent_v.reshape(b, num_heads, n, num_heads, d) * eye).reshape(b, num_heads * n, c)
    s2 = torch.bmm(q, a.transpose(1, 2)).reshape(b, nq, num_heads, n).add_(bias_query).softmax(dim=-1)
    s2 = s2.reshape(b, nq, num_heads * n)
    return torch.baddbmm(local, F.dropout(s2, dropout_p) if dropout_p else s2, agent_v)


def _agent_attention_merged(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        agents: torch.Tensor,
        bias_agent: torch.Tensor,
        bias_query: torch.Tensor,
        scale: float,
        local: torch.Tensor,
        num_heads: int,
        dropout_p: float = 0.0,
) -> torch.Tensor:
    """`agent_attention` on token-major (B, N, C) q / k / v / agents, heads merged, plus `local` (B, N, C).

    Inference on many tokens takes the per-head path (`_agent_attention_tokens`, the same products per head). An
    FX leaf: a traced graph makes the same run-time choice as eager, so its outputs stay bit-equal to eager's.
    """
    if (not dropout_p and not torch.is_grad_enabled() and not is_graph_capture()
            and q.shape[0] * q.shape[1] >= _TOKEN_MAJOR_MIN_TOKENS):
        return _agent_attention_tokens(q, k, v, agents, bias_agent, bias_query, scale, local, num_heads)
    out = agent_attention(_heads(q, num_heads), _heads(k, num_heads), _heads(v, num_heads), _heads(agents, num_heads),
                          bias_agent, bias_query, scale, dropout_p)
    return _merge_heads_add(out, local)


torch.fx.wrap("_agent_attention_merged")


class _AgentBiasMixin:
    """Creates the agent position biases and evaluates them on a given query / key grid."""

    def _init_agent_biases(self, num_heads: int, agent_num: int, q_grid, kv_grid, cls_token: bool = False):
        p = math.isqrt(agent_num)
        if p * p != agent_num or agent_num < 1:
            raise ValueError(f"agent_num must be a perfect square >= 1, got {agent_num}")
        self.agent_num = agent_num
        self.pool_size = p
        # few heads x agents: all heads in one matmul (`_agent_attention_block_diag`); a fixed choice per module,
        # so training, eval, FX, tracing and export run the same code (AMD EPYC AVX2: faster up to 3 x 9 agents)
        # one head saves no copy (heads-first is a view) and its training step measured ~9 % slower (PVT stage 1)
        self.block_diag = 1 < num_heads and num_heads * agent_num <= _BLOCK_DIAG_MAX and not cls_token
        h, n = num_heads, agent_num
        (qh, qw), (kh, kw) = q_grid, kv_grid
        self.an_bias = nn.Parameter(torch.zeros(h, n, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(h, n, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, h, n, kh, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, h, n, 1, kw))
        self.ha_bias = nn.Parameter(torch.zeros(1, h, qh, 1, n))
        self.wa_bias = nn.Parameter(torch.zeros(1, h, 1, qw, n))
        self._bias_names = ["an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias"]
        if cls_token:
            self.ac_bias = nn.Parameter(torch.zeros(1, h, n, 1))
            self.ca_bias = nn.Parameter(torch.zeros(1, h, 1, n))
            self._bias_names += ["ac_bias", "ca_bias"]
        for name in self._bias_names:
            trunc_normal_unless_meta(getattr(self, name))

    def _compute_biases(self, q_hw, kv_hw, cls_token: bool):
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

    def _scores_layout(self, biases):
        # the query bias sum is laid out like its transposed operand: added in place to the (query, agent) scores it
        # would be read across rows; make it the layout the scores have (subclasses' _compute_biases stay heads-first)
        b1, b2 = biases
        return b1, (b2.transpose(1, 2).contiguous() if self.block_diag else b2.contiguous())

    def _agent_biases(self, q_hw, kv_hw, cls_token: bool = False):
        """(bias_agent (1, H, n, Nk), bias_query): (1, H, Nq, n), or query-major (1, Nq, H, n) when `block_diag`."""
        params = [getattr(self, n) for n in self._bias_names]
        return inference_cached(self, ("bias", q_hw, kv_hw), params,
                                lambda: self._scores_layout(self._compute_biases(q_hw, kv_hw, cls_token)))

    def _pool_agents(self, q: torch.Tensor, hw) -> torch.Tensor:
        """(B, N, C) queries on grid hw -> (B, n, C) agents (pooled on the channels-last view: no copy)."""
        b, _, c = q.shape
        a = F.adaptive_avg_pool2d(to_nhwc(q, hw).permute(0, 3, 1, 2), self.pool_size)
        return a.reshape(b, c, self.agent_num).transpose(1, 2)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads_add(out: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) attention output + (B, N, C) local term -> (B, N, C), in one pass."""
    b, h, n, d = out.shape
    return (local.reshape(b, n, h, d) + out.transpose(1, 2)).reshape(b, n, h * d)


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
        kv_hw = hw
        if self.separate_q:
            q = self.q(x)
            xs = x
            if self.sr_ratio > 1:
                xs = self.sr(to_nhwc(x, hw).permute(0, 3, 1, 2))
                kv_hw = (xs.shape[2], xs.shape[3])
                xs = self.norm(xs.flatten(2).transpose(1, 2))
            k, v = self.kv(xs).reshape(b, xs.shape[1], 2, c).unbind(2)
        else:
            q, k, v = self.qkv(x).reshape(b, n, 3, c).unbind(2)
        off = 1 if self.cls_token else 0
        agents = self._pool_agents(q[:, off:], hw)
        b1, b2 = self._agent_biases(hw, kv_hw, self.cls_token)
        nh = self.num_heads
        drop = self.attn_drop if self.training else 0.0
        if not off:
            local = self._local(v, kv_hw, hw).reshape(b, n, c)
            b1, b2 = b1.to(q.dtype), b2.to(q.dtype)
            if self.block_diag:
                out = _agent_attention_block_diag(q, k, v, agents, b1, b2, self.scale, local, nh, drop)
            else:
                out = _agent_attention_merged(q, k, v, agents, b1, b2, self.scale, local, nh, drop)
            return self.proj_drop(self.proj(out))
        out = agent_attention(_heads(q, nh), _heads(k, nh), _heads(v, nh), _heads(agents, nh), b1, b2, self.scale, drop)
        # the class token gets no local term (out of place: FX graph pruning drops unused in-place ops)
        local = self._local(v[:, off:], kv_hw, hw)
        out = out.transpose(1, 2).reshape(b, n, c)
        out = torch.cat([out[:, :1], out[:, 1:] + local.reshape(b, n - 1, c)], dim=1)
        return self.proj_drop(self.proj(out))


    def _local(self, v: torch.Tensor, kv_hw, hw) -> torch.Tensor:
        """DWC term (B, H, W, C) of the (B, Nk, C) values on grid kv_hw, upsampled to hw under spatial reduction."""
        vmap = to_nhwc(v, kv_hw).permute(0, 3, 1, 2)
        if self.sr_ratio > 1:
            vmap = F.interpolate(vmap, size=hw, mode="bilinear", align_corners=False)
        return self.dwc(vmap).permute(0, 2, 3, 1)  # channels-last conv output: NHWC is a view


class AgentCSWinAttention(_AgentBiasMixin, nn.Module):
    """Single-branch agent attention for the CSWin blocks (their attention-factory API).

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
        nh = self.num_heads
        agents = self._pool_agents(q, hw)
        b1, b2 = self._agent_biases(hw, hw)
        if self.block_diag:
            lepe = self.get_v(to_nhwc(v, hw).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(q.shape)
            return _agent_attention_block_diag(q, k, v, agents, b1.to(q.dtype), b2.to(q.dtype), self.scale, lepe, nh,
                                               self.attn_drop if self.training else 0.0)
        out = agent_attention(
            _heads(q, nh), _heads(k, nh), _heads(v, nh), _heads(agents, nh), b1, b2, self.scale,
            self.attn_drop if self.training else 0.0,
        )
        lepe = self.get_v(to_nhwc(v, hw).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return _merge_heads_add(out, lepe)


def _check_agent_nums(agent_num, n: int = 4) -> tuple[int, ...]:
    if isinstance(agent_num, (int, str)):
        agent_num = [agent_num] * n
    agent_num = tuple(int(a) for a in agent_num)
    if len(agent_num) != n:
        raise ValueError(f"agent_num must have {n} entries, got {agent_num}")
    return agent_num


def _parse_letters(value, n: int, name: str, allowed: str) -> str:
    s = "".join(value) if not isinstance(value, str) else value
    if len(s) < n or any(ch not in allowed for ch in s[:n]):
        raise ValueError(f"{name} must start with {n} letters from {allowed!r}, got {value!r}")
    return s


# ==============================================================================================================
# Agent-DeiT

# official agent_deit: block i takes agent_num[_DEIT_AGENT_SLOT[i // 2]]
_DEIT_AGENT_SLOT = {0: 0, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3}


def _deit_attn(dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, grid_size=(14, 14), block_idx=0,
               agent_num=(49, 49, 49, 49), n_agent_blocks=12, **_):
    if block_idx < n_agent_blocks:
        return AgentAttention(dim, num_heads, grid_size, agent_num[_DEIT_AGENT_SLOT[block_idx // 2]], qkv_bias,
                              attn_drop, proj_drop, cls_token=True)
    return GridAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)


class AgentVisionTransformer(GridVisionTransformer):
    """DeiT (timm ViT with class token) whose first `agent_layer` blocks use agent attention.

    Args:
        agent_num: 4 agent counts; block i uses agent_num[{0:0, 1:1, 2:2, 3:2, 4:2, 5:3}[i // 2]] (official rule).
        agent_layer: number of leading agent blocks (-1 = all); the rest are plain softmax ViT blocks.
        norm_layer: default LayerNorm(eps=1e-6).
        kwargs: timm's `VisionTransformer` (img_size, embed_dim, num_heads, drop_rate, pos_drop_rate, ...).
    """

    def __init__(
            self,
            depth: int = 12,
            agent_num: Sequence[int] = (49, 49, 49, 49),
            agent_layer: int = -1,
            global_pool: str = "token",
            norm_layer=None,
            **kwargs,
    ):
        agent_num = _check_agent_nums(agent_num)
        n_agent_blocks = depth if agent_layer < 0 else agent_layer
        if n_agent_blocks > depth:
            raise ValueError(f"agent_layer must be -1 or in [0, depth={depth}], got {agent_layer}")
        if n_agent_blocks > 12:
            raise ValueError(f"agent blocks beyond index 11 have no agent count (official rule); agent_layer="
                             f"{agent_layer}, depth={depth}")
        if global_pool not in ("token", "avg", ""):
            raise ValueError(f"global_pool must be 'token', 'avg' or '', got {global_pool!r}")
        super().__init__(
            depth=depth, global_pool=global_pool, fc_norm=False,
            norm_layer=norm_layer or partial(nn.LayerNorm, eps=1e-6),
            attn_layer=partial(_deit_attn, agent_num=agent_num, n_agent_blocks=n_agent_blocks), **kwargs,
        )


# ==============================================================================================================
# Agent-PVT


def _pvt_attn(dim, num_heads, grid_size, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, *, agent: bool,
              agent_num: int, sr_ratio: int, agent_sr_ratio: int):
    if agent:
        return AgentAttention(dim, num_heads, grid_size, agent_num, qkv_bias, attn_drop, proj_drop, separate_q=True,
                              sr_ratio=agent_sr_ratio)
    return PvtAttention(dim, num_heads, qkv_bias, None, attn_drop, proj_drop, sr_ratio)


class AgentPyramidVisionTransformer(PyramidVisionTransformerV1):
    """PVT v1 (no class token, no final norm, head on the token mean) with agent attention.

    Args:
        attn_type: one letter per stage, 'A' agent attention, 'B' PVT spatial-reduction attention.
        sr_ratios: spatial reduction of the 'B' stages; agent_sr_ratios: of the agent stages (1 = none, the
            released models).
        norm_layer: block norms (default LayerNorm(eps=1e-6)); the patch embeddings use LayerNorm(eps=1e-5).
        kwargs: `PyramidVisionTransformerV1`'s (img_size, embed_dims, depths, drop_rate, pos_drop_rate, ...).
    """

    def __init__(
            self,
            sr_ratios: Sequence[int] = (8, 4, 2, 1),
            agent_sr_ratios: Sequence[int] | str = (1, 1, 1, 1),
            agent_num: Sequence[int] = (9, 16, 49, 49),
            attn_type: str = "AAAA",
            norm_layer=None,
            **kwargs,
    ):
        attn_type = _parse_letters(attn_type, 4, "attn_type", "AB")
        agent_sr = tuple(int(a) for a in agent_sr_ratios)
        agent_num = _check_agent_nums(agent_num)
        attn = [partial(_pvt_attn, agent=attn_type[i] == "A", agent_num=agent_num[i], sr_ratio=sr_ratios[i],
                        agent_sr_ratio=agent_sr[i]) for i in range(4)]
        super().__init__(attn_layer=attn, norm_layer=norm_layer or partial(nn.LayerNorm, eps=1e-6),
                         embed_norm_layer=nn.LayerNorm, **kwargs)


# ==============================================================================================================
# Agent-Swin


class AgentSwinBlock(nn.Module):
    """Swin block (NHWC in / out) whose attention is global agent attention over the whole stage grid."""

    def __init__(self, dim, input_resolution, num_heads, agent_num=49, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0,
                 attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = AgentAttention(dim, num_heads, input_resolution, agent_num, qkv_bias, attn_drop, proj_drop)
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


def _swin_block(dim, input_resolution, num_heads, *, stage_idx, block_idx, drop_path, norm_layer, num_agent,
                agent_num, window_size, mlp_ratio, qkv_bias, proj_drop, attn_drop):
    if block_idx < num_agent[stage_idx]:
        return AgentSwinBlock(dim, input_resolution, num_heads, agent_num[stage_idx], mlp_ratio, qkv_bias, proj_drop,
                              attn_drop, drop_path, norm_layer)
    return WindowBlock(dim, input_resolution, num_heads, window_size=window_size,
                       shift_size=0 if block_idx % 2 == 0 else window_size // 2, dynamic_mask=True,
                       mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                       drop_path=drop_path, norm_layer=norm_layer)


class AgentSwinTransformer(SwinTransformerHost):
    """Swin v1 with global agent attention (`attn_type` letters per stage, see `_parse_swin_attn_type`).

    Args:
        window_size: window of the softmax window-attention blocks (official: max(7, WINDOW_SIZE // 8)).
        kwargs: `SwinTransformerHost`'s (img_size, embed_dim, num_heads, drop_rate, pos_drop_rate, ...).
    """

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 6, 2),
            window_size: int = 7,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            agent_num: Sequence[int] = (9, 16, 49, 49),
            attn_type: str = "AAAB",
            **kwargs,
    ):
        if len(depths) != 4:
            raise ValueError(f"depths must have 4 entries, got {depths}")
        block = partial(_swin_block, num_agent=_parse_swin_attn_type(attn_type, depths),
                        agent_num=_check_agent_nums(agent_num), window_size=window_size, mlp_ratio=mlp_ratio,
                        qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate)
        super().__init__(depths=depths, block_fn=block, **kwargs)
        self.window_size = window_size


# ==============================================================================================================
# Agent-CSWin


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

def _resize_like(key: str, v: torch.Tensor, target: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resize a size-dependent tensor of a checkpoint made at another input size to the model's shape."""
    name = key.rsplit(".", 1)[-1]
    if name in _GRID_AXIS:
        dim, side = _GRID_AXIS[name]
        grid = [0, 0]
        grid[side] = target.shape[dim]
        return resize_agent_bias(v, name, tuple(grid))
    if name == "pos_embed":
        if isinstance(model, AgentVisionTransformer):
            return resample_square_pos_embed(v, tuple(model.grid_size), model.num_prefix_tokens, key)
        if isinstance(model, AgentPyramidVisionTransformer):
            return resample_square_pos_embed(v, tuple(model.get_submodule(key.rsplit(".", 1)[0]).grid_size), 0, key)
    if name == "relative_position_bias_table":
        w = (math.isqrt(target.shape[0]) + 1) // 2
        return resize_rel_pos_bias_table_simple(v, (w, w), tuple(target.shape))
    return v


_HOST_KEYS = ((SwinTransformerHost, _swin.official_to_timm), (PyramidVisionTransformerV1, _pvt.official_to_timm),
              (CSWinTransformer, _cswin.official_to_timm))


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official Agent-Attention checkpoint onto this module.

    Opens trainer envelopes (`model`, `state_dict`, DDP `module.`, mmdet `backbone.`), renames the official
    layouts to the timm-style ones (PVT `patch_embed{i}/pos_embed{i}/block{i}` -> `stages.{i-1}.*`; Swin
    `layers.i.downsample` -> `layers.{i+1}.downsample`, `head` -> `head.fc`; CSWin `stage1_conv_embed` -> `stem`,
    `stage{i}.{j}` -> `stages.{i-1}.blocks.{j}`, `merge{i}` -> `stages.{i}.downsample`), drops rebuilt buffers
    (`attn_mask`, `relative_position_index`), and resizes the tables tied to the input size when the checkpoint
    was made at another size than the model: agent `ah/aw/ha/wa` biases (linear, along the grid axis), position
    embeddings (bicubic, cls slot kept), Swin relative-position tables (bicubic).
    """
    sd = unwrap_state_dict(state_dict)
    for host, official_to_timm in _HOST_KEYS:
        if isinstance(model, host):
            sd = official_to_timm(sd)
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] in _REBUILT_BUFFERS and k not in own:
            continue
        if k in own and own[k].shape != v.shape:
            v = _resize_like(k, v, own[k], model)
        out[k] = v
    return out


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
_FIRST_CONV = {"deit": "patch_embed.proj", "pvt": "stages.0.patch_embed.proj", "swin": "patch_embed.proj",
               "cswin": "stem.conv"}


def _cfg(variant: str, size: int = 224, crop_pct: float = 0.875, **kwargs) -> dict:
    family = variant.split("_")[1]
    # the final feature grid at the default size (DeiT: its patch grid, NLC tokens after the class token)
    pool = (size // 16, size // 16) if family == "deit" else (size // 32, size // 32)
    return in1k_cfg(
        _TSINGHUA.format(_URLS[variant]), input_size=(3, size, size), pool_size=pool, crop_pct=crop_pct,
        crop_mode="squash",  # official eval: square resize to S/crop_pct, then center crop
        first_conv=_FIRST_CONV[family], classifier="head.fc" if family == "swin" else "head",
        license="unknown",  # the official repository has no licence file
        paper_name="Agent Attention: On the Integration of Softmax and Linear Attention", paper_ids="arXiv:2312.08874",
        origin_url="https://github.com/LeapLabTHU/Agent-Attention",
        notes=(f"official TsinghuaCloud checkpoint (trainer dict, weights under 'model'), file name {variant}.pth",),
        **kwargs,
    )


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


def _create(cls, variant: str, pretrained: bool = False, out_indices=(0, 1, 2, 3), **kwargs):
    model = build_model_with_pretrained_file(
        cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, cache_file_names=_CACHE_NAMES,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )
    return set_fused_linear(model)


def _create_agent_deit(variant: str, pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    return _create(AgentVisionTransformer, variant, pretrained, out_indices=kwargs.pop("out_indices", 3), **kwargs)


def _create_agent_pvt(variant: str, pretrained: bool = False, **kwargs) -> AgentPyramidVisionTransformer:
    return _create(AgentPyramidVisionTransformer, variant, pretrained, **kwargs)


def _create_agent_swin(variant: str, pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    return _create(AgentSwinTransformer, variant, pretrained, **kwargs)


def _create_agent_cswin(variant: str, pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    return _create(AgentCSWinTransformer, variant, pretrained, **kwargs)


# the arguments every released variant of a host shares
_DEIT_ARGS = dict(patch_size=16, depth=12, mlp_ratio=4.0, qkv_bias=True)
_PVT_ARGS = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                qkv_bias=True, sr_ratios=(8, 4, 2, 1), agent_num=(9, 16, 49, 49), attn_type="AAAA")
_SWIN_ARGS = dict(patch_size=4, window_size=7, agent_num=(9, 16, 49, 49))
_CSWIN_ARGS = dict(split_size=(1, 2, 7, 7), agent_num=(9, 16, 49, 49), attn_type="AABB")


def _args(defaults: dict, kwargs: dict) -> dict:
    return {**defaults, **kwargs}


@register_zoo_model("agent_attention")
def agent_deit_t(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-T (6.0M params, 1.2 GFLOPs, 74.9% IN-1k top-1)."""
    args = _args(dict(_DEIT_ARGS, embed_dim=192, num_heads=3, agent_num=(49, 49, 49, 49)), kwargs)
    return _create_agent_deit("agent_deit_t", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_deit_s(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-S (22.7M params, 4.4 GFLOPs, 80.5%)."""
    args = _args(dict(_DEIT_ARGS, embed_dim=384, num_heads=6, agent_num=(49, 49, 49, 49)), kwargs)
    return _create_agent_deit("agent_deit_s", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_deit_s_448(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-S at 448 (23.1M params, 17.7 GFLOPs, 83.1%)."""
    args = _args(dict(_DEIT_ARGS, img_size=448, embed_dim=384, num_heads=6, agent_num=(49, 49, 49, 49)), kwargs)
    return _create_agent_deit("agent_deit_s_448", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_deit_b(pretrained: bool = False, **kwargs) -> AgentVisionTransformer:
    """Agent-DeiT-B (87.2M params, 17.6 GFLOPs, 82.0%): agent attention in blocks 0-3, 81 agents."""
    args = _args(dict(_DEIT_ARGS, embed_dim=768, num_heads=12, agent_num=(81, 81, 81, 81), agent_layer=4), kwargs)
    return _create_agent_deit("agent_deit_b", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_pvt_t(pretrained: bool = False, **kwargs) -> AgentPyramidVisionTransformer:
    """Agent-PVT-T (11.6M params, 2.0 GFLOPs, 78.4%)."""
    return _create_agent_pvt("agent_pvt_t", pretrained, **_args(dict(_PVT_ARGS, depths=(2, 2, 2, 2)), kwargs))


@register_zoo_model("agent_attention")
def agent_pvt_s(pretrained: bool = False, **kwargs) -> AgentPyramidVisionTransformer:
    """Agent-PVT-S (20.6M params, 4.0 GFLOPs, 82.2%)."""
    return _create_agent_pvt("agent_pvt_s", pretrained, **_args(dict(_PVT_ARGS, depths=(3, 4, 6, 3)), kwargs))


@register_zoo_model("agent_attention")
def agent_pvt_m(pretrained: bool = False, **kwargs) -> AgentPyramidVisionTransformer:
    """Agent-PVT-M (35.9M params, 7.0 GFLOPs, 83.4%)."""
    return _create_agent_pvt("agent_pvt_m", pretrained, **_args(dict(_PVT_ARGS, depths=(3, 4, 18, 3)), kwargs))


@register_zoo_model("agent_attention")
def agent_pvt_m_256(pretrained: bool = False, **kwargs) -> AgentPyramidVisionTransformer:
    """Agent-PVT-M at 256 (36.1M params, 9.2 GFLOPs, 83.8%)."""
    args = _args(dict(_PVT_ARGS, img_size=256, depths=(3, 4, 18, 3)), kwargs)
    return _create_agent_pvt("agent_pvt_m_256", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_pvt_l(pretrained: bool = False, **kwargs) -> AgentPyramidVisionTransformer:
    """Agent-PVT-L (48.7M params, 10.4 GFLOPs, 83.7%)."""
    return _create_agent_pvt("agent_pvt_l", pretrained, **_args(dict(_PVT_ARGS, depths=(3, 8, 27, 3)), kwargs))


@register_zoo_model("agent_attention")
def agent_swin_t(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-T (29M params, 4.5 GFLOPs, 82.6%)."""
    args = _args(dict(_SWIN_ARGS, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), attn_type="AAAB"),
                 kwargs)
    return _create_agent_swin("agent_swin_t", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_s(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S (50M params, 8.7 GFLOPs, 83.7%)."""
    args = _args(dict(_SWIN_ARGS, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), attn_type="AABB"),
                 kwargs)
    return _create_agent_swin("agent_swin_s", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_s_288(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S at 288 (50M params, 14.6 GFLOPs, 84.1%; window blocks 9x9)."""
    args = _args(dict(_SWIN_ARGS, img_size=288, window_size=9, embed_dim=96, depths=(2, 2, 18, 2),
                      num_heads=(3, 6, 12, 24), attn_type="AABB"), kwargs)
    return _create_agent_swin("agent_swin_s_288", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_b(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B (88M params, 15.4 GFLOPs, 84.0%)."""
    args = _args(dict(_SWIN_ARGS, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), attn_type="AAMB2"),
                 kwargs)
    return _create_agent_swin("agent_swin_b", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_swin_b_384(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B at 384 (88M params, 46.3 GFLOPs, 84.9%; window blocks 12x12)."""
    args = _args(dict(_SWIN_ARGS, img_size=384, window_size=12, embed_dim=128, depths=(2, 2, 18, 2),
                      num_heads=(4, 8, 16, 32), attn_type="AAMB2"), kwargs)
    return _create_agent_swin("agent_swin_b_384", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_t(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSWin-T (21M params, 4.3 GFLOPs, 83.1%)."""
    args = _args(dict(_CSWIN_ARGS, embed_dim=64, depth=(2, 4, 18, 1), num_heads=(2, 4, 8, 16)), kwargs)
    return _create_agent_cswin("agent_cswin_t", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_s(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSWin-S (33M params, 6.8 GFLOPs, 83.9%)."""
    args = _args(dict(_CSWIN_ARGS, embed_dim=64, depth=(3, 6, 29, 2), num_heads=(2, 4, 8, 16)), kwargs)
    return _create_agent_cswin("agent_cswin_s", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_b(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSWin-B (73M params, 14.9 GFLOPs, 84.7%)."""
    args = _args(dict(_CSWIN_ARGS, embed_dim=96, depth=(3, 6, 29, 2), num_heads=(4, 8, 16, 32)), kwargs)
    return _create_agent_cswin("agent_cswin_b", pretrained, **args)


@register_zoo_model("agent_attention")
def agent_cswin_b_384(pretrained: bool = False, **kwargs) -> AgentCSWinTransformer:
    """Agent-CSWin-B at 384 (73M params, 46.3 GFLOPs, 85.8%; stripes of 12)."""
    args = _args(dict(_CSWIN_ARGS, img_size=384, split_size=(1, 2, 12, 12), embed_dim=96, depth=(3, 6, 29, 2),
                      num_heads=(4, 8, 16, 32)), kwargs)
    return _create_agent_cswin("agent_cswin_b_384", pretrained, **args)
