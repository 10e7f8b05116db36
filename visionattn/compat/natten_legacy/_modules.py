"""``natten.NeighborhoodAttention{1,2,3}D`` of NATTEN 0.17.4, with the small-map padding of NATTEN <= 0.15.

The 1-D and 2-D classes are ``visionattn.layers.NeighborhoodAttention1D/2D`` (same parameters ``qkv``,
``rpb``, ``proj``, same padding) behind NATTEN's constructor; 3-D shares their base.
"""
from __future__ import annotations

import torch.nn.functional as F

from ... import kernels as _kernels
from ...layers import na as _layers_na
from ...layers.fused import set_fused_linear
from . import functional as _fn

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D"]


class _LegacyNA:
    """NATTEN's constructor and attention paths over a ``visionattn.layers`` neighborhood-attention module.

    ``rel_pos_bias`` (0.17) and ``bias`` (0.14/0.15, keyword only) both switch the ``rpb`` table; the default
    is 0.17's (no table), and the official NAT/DiNAT files pass one of them explicitly. Maps smaller than
    kernel_size * dilation are zero-padded before ``qkv`` and cropped after attention (NATTEN <= 0.15, the
    semantics the NAT/DiNAT checkpoints were trained with; 0.17 raised there). ``attn_drop`` is applied on the
    unfused path (QK, softmax, dropout, AV) while training; otherwise the fused visionattn kernel runs.
    ``use_experimental_ops`` is accepted and ignored (every path here compiles and exports).
    """

    _ndim = 2

    def __init__(self, dim: int, num_heads: int, kernel_size, dilation=1, is_causal=False,
                 rel_pos_bias: bool = False, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, use_experimental_ops: bool = False, *,
                 bias: bool | None = None):
        n = self._ndim
        if bias is not None:
            if rel_pos_bias and not bias:
                raise ValueError("bias=False contradicts rel_pos_bias=True (they name the same RPB switch)")
            rel_pos_bias = bool(bias)
        ks, ds, cs = _fn.check_args(n, kernel_size, dilation, is_causal)
        if not 0.0 <= attn_drop < 1.0:
            raise ValueError(f"attn_drop must be in [0, 1), got {attn_drop!r}")
        super().__init__(dim, num_heads, kernel_size=ks, dilation=ds, rpb=bool(rel_pos_bias), qkv_bias=qkv_bias,
                         qk_scale=qk_scale, attn_drop=0.0, proj_drop=proj_drop)
        set_fused_linear(self)  # qkv / proj keep the fused CPU inference path of the zoo's modules
        self.is_causal = cs
        self.attn_drop_rate = float(attn_drop)
        self.use_experimental_ops = use_experimental_ops

    def _attend(self, q, k, v):
        """q, k, v heads-last ``[B, *spatial, heads, D]`` -> same layout."""
        n = self._ndim
        rpb = self._bias(q)
        if self.training and self.attn_drop_rate > 0:
            # NATTEN's unfused module path: weights materialised, so dropout can act on them
            q, k, v = (t.movedim(-2, 1) for t in (q, k, v))
            attn = _fn._na_qk(n, q * self.scale, k, self.kernel_size, self.dilation, None, self.is_causal, rpb)
            attn = F.dropout(attn.softmax(-1), self.attn_drop_rate, training=True)
            out = _fn._na_av(n, attn, v, self.kernel_size, self.dilation, None, self.is_causal)
            return out.movedim(1, -2)
        if _fn.jit_tracing():
            return _fn._FUSED_OPS[n].apply(q, k, v, rpb, None, None, self.kernel_size, self.dilation,
                                           self.is_causal, self.scale, self.backend)
        return getattr(_kernels, f"na{n}d")(q, k, v, self.kernel_size, dilation=self.dilation,
                                            is_causal=self.is_causal, rpb=rpb, scale=self.scale,
                                            backend=self.backend)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, is_causal={self.is_causal}, has_bias={self.rpb is not None}, "
                f"attn_drop={self.attn_drop_rate}")


class NeighborhoodAttention1D(_LegacyNA, _layers_na.NeighborhoodAttention1D):
    """1-D neighborhood attention on ``[B, L, C]`` (``natten.NeighborhoodAttention1D``)."""

    _ndim = 1


class NeighborhoodAttention2D(_LegacyNA, _layers_na.NeighborhoodAttention2D):
    """2-D neighborhood attention on NHWC ``[B, H, W, C]`` (``natten.NeighborhoodAttention2D``)."""

    _ndim = 2


class NeighborhoodAttention3D(_LegacyNA, _layers_na._NeighborhoodAttention):
    """3-D neighborhood attention on ``[B, X, Y, Z, C]`` (``natten.NeighborhoodAttention3D``)."""

    _ndim = 3
