"""Neighborhood attention (NA / DiNA / GNA), 1-D, 2-D and 3-D, with relative positional bias: the public API.

NATTEN >= 0.20's functional API (names and order; everything after ``kernel_size`` keyword-only) plus ``rpb``
(NATTEN <= 0.17's table), heads-last layout ``[B, *spatial, heads, head_dim]``::

    out = na2d(q, k, v, 7, dilation=2, rpb=table)
    out, lse = na2d(q, k, v, 7, additional_keys=ek, additional_values=ev, return_lse=True)

Backends (``BACKENDS``): ``reference`` (na_reference.py), ``torch`` and ``gather`` (na_torch.py), ``triton``
(na_triton.py), ``cpu`` (_na_cpu.py), ``natten`` (na_natten.py); ``auto`` is ``dispatch.na_auto``. Semantics,
numerics and non-finite inputs: docs/kernels.md.
"""
from __future__ import annotations

from functools import partial

from torch import Tensor

from . import checks, dispatch, na_natten, na_torch, ops
from ._common import untraced
from .na_reference import na_reference

__all__ = ["na1d", "na2d", "na3d", "na_logits", "na1d_logits", "na2d_logits", "na3d_logits", "na1d_av",
           "na2d_av", "na3d_av", "merge_attentions", "BACKENDS"]

BACKENDS = dispatch.NA_BACKENDS

# backend -> (q, k, v, rpb, cfg, additional_keys, additional_values, need_lse) -> (out, lse or None)
_RUN = {
    "reference": na_reference,
    "torch": partial(ops.na, "torch"),
    "gather": na_torch.gather,
    "triton": partial(ops.na, "triton"),
    "cpu": partial(ops.na, "cpu"),
    "natten": na_natten.forward,
}


def _na(n, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
        additional_values, return_lse, backend):
    with untraced():  # concrete shapes: the checks leave nothing in a torch.jit.trace
        cfg = checks.na_args(n, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb,
                             additional_keys, additional_values)
        checks.check_bool("return_lse", return_lse)
    impl = dispatch.na_backend(backend, query, key, value, rpb, cfg, additional_keys, additional_values)
    out, lse = _RUN[impl](query, key, value, rpb, cfg, additional_keys, additional_values, return_lse)
    return (out, lse) if return_lse else out


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, return_lse: bool = False, backend: str = "auto"):
    """1-D neighborhood attention of ``[B, L, heads, head_dim]`` query, key and value.

    Args:
        key, value: same length, ``kv_heads`` dividing ``heads`` (GQA / MQA); value may have its own head_dim.
        kernel_size, stride, dilation: ints; is_causal: bool. scale: logit scale (default head_dim ** -0.5).
        rpb: relative positional bias ``[heads, 2k-1]``, added unscaled (NATTEN <= 0.17).
        additional_keys, additional_values: ``[B, N_extra, kv_heads, head_dim]`` tokens every query attends to
            besides its window (one softmax over both).
        return_lse: also return the natural logsumexp ``[B, L, heads]`` (float32; float64 for float64).
        backend: one of ``BACKENDS``.
    Returns: ``[B, L, heads, value head_dim]`` (and the logsumexp).
    """
    return _na(1, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
               additional_values, return_lse, backend)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, return_lse: bool = False, backend: str = "auto"):
    """2-D neighborhood attention of ``[B, H, W, heads, head_dim]`` query, key and value.

    Args:
        key, value: same spatial size, ``kv_heads`` dividing ``heads`` (GQA / MQA); value may have its own head_dim.
        kernel_size, stride, dilation: int or ``(rows, cols)``; is_causal: bool or a pair.
        scale: logit scale (default head_dim ** -0.5).
        rpb: relative positional bias ``[heads, 2kh-1, 2kw-1]``, added unscaled (NATTEN <= 0.17).
        additional_keys, additional_values: ``[B, N_extra, kv_heads, head_dim]`` tokens every query attends to
            besides its window (one softmax over both).
        return_lse: also return the natural logsumexp ``[B, H, W, heads]`` (float32; float64 for float64).
        backend: one of ``BACKENDS``.
    Returns: ``[B, H, W, heads, value head_dim]`` (and the logsumexp).
    """
    return _na(2, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
               additional_values, return_lse, backend)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, return_lse: bool = False, backend: str = "auto"):
    """3-D neighborhood attention of ``[B, X, Y, Z, heads, head_dim]`` query, key and value.

    Args:
        key, value: same spatial size, ``kv_heads`` dividing ``heads`` (GQA / MQA); value may have its own head_dim.
        kernel_size, stride, dilation: int or a triple; is_causal: bool or a triple.
        scale: logit scale (default head_dim ** -0.5).
        rpb: relative positional bias ``[heads, 2kx-1, 2ky-1, 2kz-1]``, added unscaled (NATTEN <= 0.17).
        additional_keys, additional_values: ``[B, N_extra, kv_heads, head_dim]`` tokens every query attends to
            besides its window (one softmax over both).
        return_lse: also return the natural logsumexp ``[B, X, Y, Z, heads]`` (float32; float64 for float64).
        backend: one of ``BACKENDS``.
    Returns: ``[B, X, Y, Z, heads, value head_dim]`` (and the logsumexp).
    """
    return _na(3, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
               additional_values, return_lse, backend)


def merge_attentions(outputs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Merge attention outputs over disjoint key sets of the same queries, as one softmax over their union.

    ``outputs[i]``: ``[B, *seq, heads, D]``; ``lses[i]``: their natural logsumexp ``[B, *seq, heads]`` (e.g. from
    ``na2d(..., return_lse=True)`` and an attention over other keys). Returns the merged output (dtype of
    ``outputs[0]``) and logsumexp (float32; float64 for float64). Differentiable in every input (plain torch ops).
    """
    checks.merge_args(outputs, lses)
    return na_torch.merge(outputs, lses)


# ---------------------------------------------------------------------------------------------------
# split calls: logits (QK) and AV, NATTEN's neighbour order


def _logits(n, query, key, kernel_size, stride, dilation, is_causal, scale, rpb) -> Tensor:
    with untraced():
        cfg = checks.na_args(n, query, key, None, kernel_size, stride, dilation, is_causal, scale, rpb)
    return na_torch.qk(query, key, rpb, cfg)


def na_logits(query: Tensor, key: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
              scale: float | None = None, rpb: Tensor | None = None) -> Tensor:
    """Pre-softmax logits (query * scale) . key + rpb, ``[B, heads, *spatial, prod(kernel_size)]`` (any rank).

    Neighbours in row-major window order (first axis slowest), as NATTEN's ``natten2dqkrpb``;
    keys outside a causal window are -inf.
    """
    return _logits(checks.na_rank(query, "query"), query, key, kernel_size, stride, dilation, is_causal, scale,
                   rpb)


def na1d_logits(query: Tensor, key: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
                scale: float | None = None, rpb: Tensor | None = None) -> Tensor:
    """``na_logits`` of ``[B, L, heads, head_dim]`` -> ``[B, heads, L, k]``."""
    return _logits(1, query, key, kernel_size, stride, dilation, is_causal, scale, rpb)


def na2d_logits(query: Tensor, key: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
                scale: float | None = None, rpb: Tensor | None = None) -> Tensor:
    """``na_logits`` of ``[B, H, W, heads, head_dim]`` -> ``[B, heads, H, W, kh * kw]``."""
    return _logits(2, query, key, kernel_size, stride, dilation, is_causal, scale, rpb)


def na3d_logits(query: Tensor, key: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
                scale: float | None = None, rpb: Tensor | None = None) -> Tensor:
    """``na_logits`` of ``[B, X, Y, Z, heads, head_dim]`` -> ``[B, heads, X, Y, Z, kx * ky * kz]``."""
    return _logits(3, query, key, kernel_size, stride, dilation, is_causal, scale, rpb)


def na1d_av(attn: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False) -> Tensor:
    """AV half of 1-D NA: weights ``[B, heads, L, k]`` (``na1d_logits`` order) x value windows -> ``[B, L, heads,
    Dv]``; ``na1d_av(softmax(na1d_logits(q, k, ks)), v, ks)`` equals ``na1d(q, k, v, ks)``."""
    return na_torch.av(attn, value, checks.na_av_args(1, attn, value, kernel_size, stride, dilation, is_causal))


def na2d_av(attn: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False) -> Tensor:
    """AV half of 2-D NA: weights ``[B, heads, H, W, kh * kw]`` x value windows -> ``[B, H, W, heads, Dv]``."""
    return na_torch.av(attn, value, checks.na_av_args(2, attn, value, kernel_size, stride, dilation, is_causal))


def na3d_av(attn: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False) -> Tensor:
    """AV half of 3-D NA: weights ``[B, heads, X, Y, Z, prod(k)]`` x value windows -> ``[B, X, Y, Z, heads, Dv]``."""
    return na_torch.av(attn, value, checks.na_av_args(3, attn, value, kernel_size, stride, dilation, is_causal))
