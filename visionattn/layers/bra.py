"""Bi-level routing attention modules (BiFormer), with the official parameter names.

``BiLevelRoutingAttention``: the legacy NHWC module (ops/bra_legacy.py) of the released T/S/B/STL checkpoints.
``NchwBiLevelRoutingAttention``: the refactored NCHW module (ops/bra_nchw.py ``nchwBRA``) of STL-nchw.
The attention itself runs on ``visionattn.kernels.routed_attention`` (backend selectable).

The modules hold the parameters; the shape-dependent steps (padding to whole regions, routing, region
attention, cropping) are plain functions that ``torch.fx`` keeps as graph leaves (``torch.fx.wrap``), so the
models trace with ``torch.fx.symbolic_trace`` / timm's FX feature extraction with every check in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.kernels.bra import BRA_BACKENDS, region_mean, region_topk, routed_attention
from visionattn.utils import check_backend, pad_right_bottom

__all__ = ["BiLevelRoutingAttention", "NchwBiLevelRoutingAttention", "QKVLinear"]


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@torch.fx.wrap
def _pad_to_regions(x: torch.Tensor, dim: int, n_win: int, auto_pad: bool) -> torch.Tensor:
    """Legacy BRA input check and padding: NHWC `x` zero-padded right/bottom to multiples of `n_win`."""
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f"x must be NHWC [N, H, W, {dim}], got {tuple(x.shape)}")
    if auto_pad:
        return pad_right_bottom(x, n_win, channels_last=True)
    H, W = x.shape[1:3]
    if H % n_win or W % n_win:
        raise ValueError(f"input size {H}x{W} must be a multiple of n_win={n_win} (or set auto_pad=True)")
    return x


@torch.fx.wrap
def _legacy_routed_attention(q, k, v, n_win: int, num_heads: int, topk: int, scale: float, backend: str):
    """Route the region means of q and k, then attend over the routed regions; (out [N, H, W, C_v], index)."""
    H, W = q.shape[1:3]
    index = region_topk(region_mean(q, n_win), region_mean(k, n_win), topk, scale=scale)
    out = routed_attention(q.unflatten(-1, (num_heads, -1)), k.unflatten(-1, (num_heads, -1)),
                           v.unflatten(-1, (num_heads, -1)), index, (H // n_win, W // n_win), scale=scale,
                           backend=backend)
    return out.flatten(-2), index


@torch.fx.wrap
def _crop_hw(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """NHWC `y` cropped to the height and width of NHWC `x`."""
    if isinstance(x.shape[1], torch.SymInt) or isinstance(x.shape[2], torch.SymInt):  # symbolic: crop always
        return y.narrow(1, 0, x.shape[1]).narrow(2, 0, x.shape[2])
    if y.shape[1:3] == x.shape[1:3]:
        return y
    return y[:, : x.shape[1], : x.shape[2]].contiguous()


@torch.fx.wrap
def _check_nchw(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != dim:
        raise ValueError(f"x must be NCHW [N, {dim}, H, W], got {tuple(x.shape)}")
    return x


@torch.fx.wrap
def _nchw_routed_attention(x, q, k, v, n_win: int, num_heads: int, topk: int, scale: float, backend: str):
    """nchwBRA's routing (ceil-mode region means of whole and partial regions, unscaled logits) and attention
    on q/k/v zero-padded to whole regions; (out [N, C, H, W] cropped back, index)."""
    N, C, H, W = x.shape
    rh, rw = H // n_win, W // n_win
    if rh < 1 or rw < 1:
        raise ValueError(f"input size {H}x{W} must be at least n_win={n_win} per side")
    q_r = F.avg_pool2d(q.detach(), (rh, rw), ceil_mode=True, count_include_pad=False)
    k_r = F.avg_pool2d(k.detach(), (rh, rw), ceil_mode=True, count_include_pad=False)
    gh, gw = q_r.shape[-2:]
    if topk > gh * gw:
        raise ValueError(f"topk must be in [1, {gh * gw}] (regions of the {gh}x{gw} grid), got {topk}")
    index = region_topk(q_r.flatten(2).transpose(1, 2), k_r.flatten(2).transpose(1, 2), topk, scale=1.0)
    pad_b, pad_r = gh * rh - H, gw * rw - W

    def heads(t):  # [N, C, H, W] -> zero-padded [N, H', W', heads, C/heads]
        if pad_b or pad_r:
            t = F.pad(t, (0, pad_r, 0, pad_b))
        return t.unflatten(1, (num_heads, -1)).permute(0, 3, 4, 1, 2)

    out = routed_attention(heads(q), heads(k), heads(v), index, (rh, rw), scale=scale, backend=backend)
    return out[:, :H, :W].flatten(-2).permute(0, 3, 1, 2), index


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
    ``backend``: one of ``backends`` (``visionattn.kernels.routed_attention``).
    """

    backends = BRA_BACKENDS  # the names `backend` accepts (visionattn.utils.set_attn_backend)

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
        self.backend = check_backend(backend, self.backends, "backend")

        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        )
        self.qkv = QKVLinear(dim, self.qk_dim)
        self.wo = nn.Linear(dim, dim) if param_attention == "qkvo" else nn.Identity()

    def forward(self, x: torch.Tensor, return_index: bool = False):
        """x: ``[N, H, W, C]`` -> ``[N, H, W, C]`` (and the routing index ``[N, n_win**2, topk]`` if asked)."""
        padded = _pad_to_regions(x, self.dim, self.n_win, self.auto_pad)
        q, k, v = self.qkv(padded)
        out, index = _legacy_routed_attention(q, k, v, self.n_win, self.num_heads, self.topk, self.scale,
                                              self.backend)
        if self.lepe is not None:
            out = out + self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = _crop_hw(self.wo(out), x)
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
    ``attn_backend`` is the official argument (only 'torch' exists there); ``backend`` picks our kernel.
    """

    backends = BRA_BACKENDS

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
        self.backend = check_backend(backend, self.backends, "backend")
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None
        )
        self.qkv_linear = nn.Conv2d(dim, 3 * dim, kernel_size=1)
        self.output_linear = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor, return_index: bool = False):
        """x: ``[N, C, H, W]`` -> ``[N, C, H, W]`` (and the routing index ``[N, R, topk]`` if asked)."""
        q, k, v = self.qkv_linear(_check_nchw(x, self.dim)).chunk(3, dim=1)
        out, index = _nchw_routed_attention(x, q, k, v, self.n_win, self.num_heads, self.topk, self.scale,
                                            self.backend)
        if self.lepe is not None:
            out = out + self.lepe(v)
        out = self.output_linear(out)
        return (out, index) if return_index else out

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, n_win={self.n_win}, topk={self.topk}, "
                f"backend={self.backend!r}")
