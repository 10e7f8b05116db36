"""Neighborhood attention modules with NATTEN's parameter names (``rpb``, ``qkv``, ``proj``).

Same function and state dict as ``natten.NeighborhoodAttention1D/2D`` of NATTEN <= 0.15, the version the
NAT/DiNAT checkpoints were trained with, including its behaviour on maps smaller than kernel * dilation
(``pad_small_inputs``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.layers.helpers import to_1tuple
from torch import nn

from ..kernels.na import na1d, na2d
from ..utils import trunc_normal_unless_meta

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D"]


class _NeighborhoodAttention(nn.Module):
    _ndim = 2

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size=7,
        dilation=1,
        rpb: bool = True,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        backend: str = "auto",
        pad_small_inputs: bool = True,
    ):
        super().__init__()
        n = self._ndim
        tup = to_2tuple if n == 2 else to_1tuple
        if dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = tuple(tup(kernel_size))
        self.dilation = tuple(tup(1 if dilation is None else dilation))
        if any(k < 1 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if any(d < 1 for d in self.dilation):
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.backend = backend
        self.pad_small_inputs = pad_small_inputs
        # a direct parameter registered before the Linears: official state-dict order
        if rpb:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            trunc_normal_unless_meta(self.rpb, std=0.02)
        else:
            self.register_parameter("rpb", None)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _attend(self, q, k, v):
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: channels-last ``[B, *spatial, C]``."""
        n = self._ndim
        if self.attn_drop and self.training:
            # every NAT/DiNAT config uses 0; the NA ops never materialise the weights to drop them
            raise ValueError(f"attn_drop must be 0 when training (got {self.attn_drop}): the NA kernels have no "
                             "attention dropout")
        if x.dim() != n + 2:
            raise ValueError(f"x must be [B, {n} spatial axes, C], got shape {tuple(x.shape)}")
        spatial = x.shape[1:-1]
        need = [k * d for k, d in zip(self.kernel_size, self.dilation)]
        pads = [max(0, w - s) for s, w in zip(spatial, need)]
        if any(pads):
            if not self.pad_small_inputs:
                raise ValueError(
                    f"input spatial size {tuple(spatial)} is smaller than kernel_size * dilation {tuple(need)}; "
                    "set pad_small_inputs=True for the NATTEN <= 0.15 behaviour (zero-pad, then crop)")
            # old NATTEN: zero-pad the input right/bottom BEFORE qkv (pad tokens carry the qkv bias and
            # are attended to, unmasked), crop after attention
            pad = []
            for p in reversed(pads):
                pad += [0, p]
            x = F.pad(x, [0, 0] + pad)
        B, C = x.shape[0], x.shape[-1]
        qkv = self.qkv(x).reshape(B, *x.shape[1:-1], 3, self.num_heads, self.head_dim)
        q, k, v = qkv.unbind(-3)
        x = self._attend(q, k, v).reshape(B, *x.shape[1:-1], C)
        if any(pads):
            x = x[(slice(None), *(slice(0, s) for s in spatial))]
        return self.proj_drop(self.proj(x))

    def _bias(self, q):
        # under autocast q is bf16/fp16 while the table stays fp32; the kernels take one dtype
        return None if self.rpb is None else self.rpb.to(q.dtype)

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, head_dim={self.head_dim}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, rpb={self.rpb is not None}, backend={self.backend!r}, "
                f"pad_small_inputs={self.pad_small_inputs}")


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D (dilated) neighborhood attention on NHWC ``[B, H, W, C]`` (NATTEN's NeighborhoodAttention2D).

    pad_small_inputs: when H or W < kernel * dilation, zero-pad the input right/bottom before ``qkv``
        and crop after attention, as NATTEN <= 0.15 did (NAT/DiNAT results depend on it); False raises.
    backend: kernel backend of ``visionattn.kernels.na2d`` (an attribute the models may override).
    """

    _ndim = 2

    def _attend(self, q, k, v):
        return na2d(q, k, v, self.kernel_size, self.dilation, rpb=self._bias(q), scale=self.scale,
                    backend=self.backend)


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D (dilated) neighborhood attention on ``[B, L, C]`` (NATTEN's NeighborhoodAttention1D)."""

    _ndim = 1

    def _attend(self, q, k, v):
        return na1d(q, k, v, self.kernel_size, self.dilation, rpb=self._bias(q), scale=self.scale,
                    backend=self.backend)
