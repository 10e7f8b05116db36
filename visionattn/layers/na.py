"""Neighborhood attention modules with NATTEN's parameter names (``rpb``, ``qkv``, ``proj``).

Same function and state dict as ``natten.NeighborhoodAttention1D/2D`` of NATTEN <= 0.15, the version the
NAT/DiNAT checkpoints were trained with, including its behaviour on maps smaller than kernel * dilation
(``pad_small_inputs``).

The shape-dependent steps (padding small maps, cropping back) and the kernel call are leaf functions for
``torch.fx`` (``torch.fx.wrap``), so models built on these modules trace with ``torch.fx.symbolic_trace`` and
timm's FX feature extraction while keeping their checks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import checks, na_torch
from ..kernels._common import untraced
from ..kernels.na import BACKENDS as NA_BACKENDS
from ..kernels.na import na1d, na2d
from ..utils import check_backend, trunc_normal_unless_meta

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D"]

# the kernel calls are graph leaves for torch.fx (their argument checks are Python control flow)
torch.fx.wrap("na1d")
torch.fx.wrap("na2d")


def _per_axis(value, n: int, name: str) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != n or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be an int >= 1 or a tuple of {n} of them, got {value!r}")
    return values


@torch.fx.wrap
def _pad_small_input(x: torch.Tensor, need: tuple[int, ...], allow: bool) -> torch.Tensor:
    """NATTEN <= 0.15: zero-pad a channels-last map right/bottom up to `need` (kernel * dilation) per axis."""
    n = len(need)
    if x.dim() != n + 2:
        raise ValueError(f"x must be [B, {n} spatial axes, C], got shape {tuple(x.shape)}")
    spatial = x.shape[1:-1]
    if allow and any(isinstance(s, torch.SymInt) for s in spatial):
        # symbolic sizes (an export with dynamic height / width): pad by max(need, size) - size without branching on
        # the size, so the graph holds at every size (a zero pad is a no-op)
        pad = [0, 0]
        for s, w in zip(reversed(spatial), reversed(need)):
            pad += [0, torch.sym_max(w, s) - s]  # the padded size is then max(w, s), a simple expression
        return F.pad(x, pad)
    pads = [max(0, w - s) for s, w in zip(spatial, need)]
    if not any(pads):
        return x
    if not allow:
        raise ValueError(f"input spatial size {tuple(spatial)} is smaller than kernel_size * dilation {need}; set "
                         "pad_small_inputs=True for the NATTEN <= 0.15 behaviour (zero-pad, then crop)")
    pad = [0, 0]
    for p in reversed(pads):
        pad += [0, p]
    return F.pad(x, pad)


@torch.fx.wrap
def _crop_like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`y` cropped to the spatial size of `x` (both channels-last)."""
    if any(isinstance(s, torch.SymInt) for s in x.shape[1:-1]):  # symbolic sizes: crop unconditionally (see above)
        for a, s in enumerate(x.shape[1:-1]):
            y = y.narrow(1 + a, 0, s)
        return y
    if y.shape[1:-1] == x.shape[1:-1]:
        return y
    return y[(slice(None), *(slice(0, s) for s in x.shape[1:-1]))]


class _NeighborhoodAttention(nn.Module):
    _ndim = 2
    backends = NA_BACKENDS  # the names `backend` accepts (visionattn.utils.set_attn_backend)

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
        if dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = _per_axis(kernel_size, n, "kernel_size")
        self.dilation = _per_axis(1 if dilation is None else dilation, n, "dilation")
        self.backend = check_backend(backend, self.backends, "backend")
        self.pad_small_inputs = pad_small_inputs
        self._need = tuple(k * d for k, d in zip(self.kernel_size, self.dilation))
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
        if self.attn_drop and self.training:
            # every NAT/DiNAT config uses 0; the NA ops never materialise the weights to drop them
            raise ValueError(f"attn_drop must be 0 when training (got {self.attn_drop}): the NA kernels have no "
                             "attention dropout")
        # old NATTEN on maps smaller than kernel * dilation: pad BEFORE qkv (pad tokens carry the qkv bias and
        # are attended to, unmasked), crop after attention
        padded = _pad_small_input(x, self._need, self.pad_small_inputs)
        if torch.onnx.is_in_onnx_export() and self.backend in ("auto", "torch"):
            return self.proj_drop(self._export_forward(padded, x))
        q, k, v = self.qkv(padded).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        out = _crop_like(self._attend(q, k, v).flatten(-2), x)
        return self.proj_drop(self.proj(out))

    def _export_forward(self, padded, x):
        """The ONNX graph of qkv -> NA -> proj (``na_torch.plain_qkv``: q / k / v gathered from the projection
        itself). Of the qkv bias only the query's is applied (to the gathered query tiles, a third of the adds): the
        key's shifts every logit of a query equally (softmax drops it) and the value's, under weights summing to
        one, is a constant added to the output, folded into the proj bias (onnxruntime folds it at load)."""
        h, d = self.num_heads, self.head_dim
        bias = self.qkv.bias
        qkv = F.linear(padded, self.qkv.weight).unflatten(-1, (3, h, d))
        q, k, v = qkv.unbind(-3)  # for the argument checks only (views; the graph does not use them)
        rpb = self._bias(q)
        with untraced():
            cfg = checks.na_args(self._ndim, q, k, v, self.kernel_size, 1, self.dilation, False, self.scale, rpb)
        out = na_torch.plain_qkv(qkv, rpb, cfg, q_bias=None if bias is None else bias[:h * d].view(h, d))
        out = _crop_like(out.flatten(-2), x)
        proj_bias = self.proj.bias
        if bias is not None:
            shift = self.proj.weight @ bias[2 * h * d:]
            proj_bias = shift if proj_bias is None else proj_bias + shift
        return F.linear(out, self.proj.weight, proj_bias)

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
    backend: kernel backend of ``visionattn.kernels.na2d`` (one of ``backends``; switch it later with
        ``visionattn.set_attn_backend``).
    """

    _ndim = 2

    def _attend(self, q, k, v):
        return na2d(q, k, v, self.kernel_size, dilation=self.dilation, rpb=self._bias(q), scale=self.scale,
                    backend=self.backend)


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D (dilated) neighborhood attention on ``[B, L, C]`` (NATTEN's NeighborhoodAttention1D)."""

    _ndim = 1

    def _attend(self, q, k, v):
        return na1d(q, k, v, self.kernel_size, dilation=self.dilation, rpb=self._bias(q), scale=self.scale,
                    backend=self.backend)
