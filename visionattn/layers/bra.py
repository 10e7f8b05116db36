"""Bi-level routing attention modules (BiFormer), with the official parameter names.

``BiLevelRoutingAttention``: the legacy NHWC module (ops/bra_legacy.py) of the released T/S/B/STL checkpoints.
``NchwBiLevelRoutingAttention``: the refactored NCHW module (ops/bra_nchw.py ``nchwBRA``) of STL-nchw.
The attention itself runs on ``visionattn.kernels.routed_attention`` (backend selectable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.kernels.bra import BRA_BACKENDS, region_mean, region_topk, routed_attention
from visionattn.official import register_official

__all__ = ["BiLevelRoutingAttention", "NchwBiLevelRoutingAttention", "QKVLinear"]


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_backend(backend: str) -> str:
    if backend not in BRA_BACKENDS:
        raise ValueError(f"backend must be one of {BRA_BACKENDS}, got {backend!r}")
    return backend


class QKVLinear(nn.Module):
    """One Linear producing ``[q | k | v]`` with split sizes ``(qk_dim, qk_dim, dim)`` (key ``qkv.qkv``)."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True):
        super().__init__()
        self.dim, self.qk_dim = dim, qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias)

    def forward(self, x):
        return self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)


class BiLevelRoutingAttention(nn.Module):
    """Legacy BRA on NHWC input (already normalized), as ``ops/bra_legacy.py:BiLevelRoutingAttention``.

    The map is cut into ``n_win x n_win`` regions; each query region attends to its ``topk`` regions by
    region-mean affinity. Scale is ``qk_scale or qk_dim ** -0.5`` (the full qk dim, not the head dim: the
    checkpoints were trained so). ``auto_pad`` zero-pads the input right/bottom to a multiple of ``n_win``
    before the projection (pad tokens carry the bias, count in the region means and are attended to) and
    crops the output. The KV-downsampling and routing options of the official signature are accepted only
    with the values every BiFormer config uses (identity downsampling, non-parametric hard routing).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        kv_per_win: int = 4,
        kv_downsample_ratio: int = 4,
        kv_downsample_kernel: int | None = None,
        kv_downsample_mode: str = "identity",
        topk: int = 4,
        param_attention: str = "qkvo",
        param_routing: bool = False,
        diff_routing: bool = False,
        soft_routing: bool = False,
        side_dwconv: int = 3,
        auto_pad: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.dim = _check_int("dim", dim)
        self.num_heads = _check_int("num_heads", num_heads)
        self.n_win = _check_int("n_win", n_win)
        self.qk_dim = _check_int("qk_dim", qk_dim or dim)
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(f"qk_dim ({self.qk_dim}) and dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.scale = qk_scale or self.qk_dim ** -0.5
        self.topk = _check_int("topk", topk)
        if topk > n_win * n_win:
            raise ValueError(f"topk must be in [1, n_win**2 = {n_win * n_win}], got {topk}")
        # kv_per_win / kv_downsample_ratio / kv_downsample_kernel only matter for the pooling modes.
        if kv_downsample_mode != "identity":
            raise ValueError(
                "kv_downsample_mode must be 'identity' (the only mode of the BiFormer configs), "
                f"got {kv_downsample_mode!r}"
            )
        if param_routing or diff_routing or soft_routing:
            raise ValueError(
                "param_routing, diff_routing and soft_routing must be False (no BiFormer config enables them), got "
                f"{param_routing}, {diff_routing}, {soft_routing}"
            )
        if param_attention not in ("qkvo", "qkv"):
            raise ValueError(f"param_attention must be 'qkvo' or 'qkv', got {param_attention!r}")
        if isinstance(side_dwconv, bool) or not isinstance(side_dwconv, int) or side_dwconv < 0:
            raise ValueError(f"side_dwconv must be an int >= 0, got {side_dwconv!r}")
        self.param_attention = param_attention
        self.auto_pad = bool(auto_pad)
        self.backend = _check_backend(backend)

        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        )
        self.qkv = QKVLinear(dim, self.qk_dim)
        self.wo = nn.Linear(dim, dim) if param_attention == "qkvo" else nn.Identity()

    def forward(self, x: torch.Tensor, return_index: bool = False):
        """x: ``[N, H, W, C]`` -> ``[N, H, W, C]`` (and the routing index ``[N, n_win**2, topk]`` if asked)."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be NHWC [N, H, W, {self.dim}], got {tuple(x.shape)}")
        N, H_in, W_in, C = x.shape
        S = self.n_win
        if self.auto_pad:
            pad_b, pad_r = (S - H_in % S) % S, (S - W_in % S) % S
            if pad_b or pad_r:
                x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        elif H_in % S or W_in % S:
            raise ValueError(f"input size {H_in}x{W_in} must be a multiple of n_win={S} (or set auto_pad=True)")
        H, W = x.shape[1:3]

        q, k, v = self.qkv(x)
        index = region_topk(region_mean(q, S), region_mean(k, S), self.topk, scale=self.scale)
        m = self.num_heads
        out = routed_attention(
            q.unflatten(-1, (m, -1)), k.unflatten(-1, (m, -1)), v.unflatten(-1, (m, -1)),
            index, (H // S, W // S), scale=self.scale, backend=self.backend,
        ).flatten(-2)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = self.wo(out)
        if H != H_in or W != W_in:
            out = out[:, :H_in, :W_in].contiguous()
        return (out, index) if return_index else out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, qk_dim={self.qk_dim}, "
                f"topk={self.topk}, auto_pad={self.auto_pad}, backend={self.backend!r}")


class NchwBiLevelRoutingAttention(nn.Module):
    """Refactored BRA on NCHW input, as ``ops/bra_nchw.py:nchwBRA``.

    Region size is ``(H // n_win, W // n_win)``; region descriptors are ceil-mode average pools that exclude
    the missing tokens of partial regions (so there may be more than ``n_win`` regions per side), routing
    logits are unscaled, q/k/v are zero-padded after the projection to whole regions (pad keys are attended
    to with logit 0) and cropped back; LePE runs on the unpadded V. Attention scale ``qk_scale or dim ** -0.5``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_scale: float | None = None,
        topk: int = 4,
        side_dwconv: int = 3,
        auto_pad: bool = False,
        attn_backend: str = "torch",
        backend: str = "auto",
    ):
        super().__init__()
        self.dim = _check_int("dim", dim)
        self.num_heads = _check_int("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.n_win = _check_int("n_win", n_win)
        self.topk = _check_int("topk", topk)
        self.scale = qk_scale or dim ** -0.5
        if isinstance(side_dwconv, bool) or not isinstance(side_dwconv, int) or side_dwconv < 0:
            raise ValueError(f"side_dwconv must be an int >= 0, got {side_dwconv!r}")
        # The official module ignores auto_pad (it always pads) and only has the 'torch' attention backend.
        if attn_backend != "torch":
            raise ValueError(
                f"attn_backend must be 'torch' (the only official option; see backend=...), got {attn_backend!r}"
            )
        self.backend = _check_backend(backend)
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        )
        self.qkv_linear = nn.Conv2d(dim, 3 * dim, kernel_size=1)
        self.output_linear = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor, return_index: bool = False):
        """x: ``[N, C, H, W]`` -> ``[N, C, H, W]`` (and the routing index ``[N, R, topk]`` if asked)."""
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"x must be NCHW [N, {self.dim}, H, W], got {tuple(x.shape)}")
        N, C, H, W = x.shape
        rh, rw = H // self.n_win, W // self.n_win
        if rh < 1 or rw < 1:
            raise ValueError(f"input size {H}x{W} must be at least n_win={self.n_win} per side")
        q, k, v = self.qkv_linear(x).chunk(3, dim=1)
        q_r = F.avg_pool2d(q.detach(), (rh, rw), ceil_mode=True, count_include_pad=False)
        k_r = F.avg_pool2d(k.detach(), (rh, rw), ceil_mode=True, count_include_pad=False)
        gh, gw = q_r.shape[-2:]
        n_regions = gh * gw
        if self.topk > n_regions:
            raise ValueError(f"topk must be in [1, {n_regions}] (regions of the {gh}x{gw} grid), got {self.topk}")
        index = region_topk(q_r.flatten(2).transpose(1, 2), k_r.flatten(2).transpose(1, 2), self.topk, scale=1.0)

        pad_b, pad_r = gh * rh - H, gw * rw - W
        m = self.num_heads

        def heads(t):  # [N, C, H, W] -> zero-padded [N, H', W', heads, C/heads]
            if pad_b or pad_r:
                t = F.pad(t, (0, pad_r, 0, pad_b))
            return t.unflatten(1, (m, -1)).permute(0, 3, 4, 1, 2)

        out = routed_attention(heads(q), heads(k), heads(v), index, (rh, rw), scale=self.scale, backend=self.backend)
        out = out[:, :H, :W].flatten(-2).permute(0, 3, 1, 2)
        if self.lepe is not None:
            out = out + self.lepe(v)
        out = self.output_linear(out)
        return (out, index) if return_index else out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, "
                f"backend={self.backend!r}")


def _official_kwargs(kwargs: dict) -> dict:
    # Fixtures may describe non-serialisable defaults with strings such as "default (...); not passed".
    return {k: v for k, v in kwargs.items() if not (isinstance(v, str) and "not passed" in v)}


@register_official("biformer", "ops/bra_legacy.py:BiLevelRoutingAttention")
def _official_bra_legacy(**kwargs) -> nn.Module:
    return BiLevelRoutingAttention(**_official_kwargs(kwargs))


@register_official("biformer", "ops/bra_nchw.py:nchwBRA")
def _official_bra_nchw(**kwargs) -> nn.Module:
    return NchwBiLevelRoutingAttention(**_official_kwargs(kwargs))
