"""Argument checks of the NA and BRA functions (NATTEN's ``utils/checks.py``).

Every check raises ``ValueError`` naming the argument and the allowed range or shape. The NA checks return the
validated per-axis arguments as an ``NAConfig``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ._common import capturing

__all__ = ["NAConfig", "to_tuple", "check_int", "check_scale", "check_choice", "check_bool", "na_args", "na_rank",
           "na_av_args", "merge_args", "pair", "routed_args", "region_mean_args", "region_topk_args", "bra_args"]


class NAConfig(NamedTuple):
    """Validated per-axis arguments of one NA call."""

    kernel_size: tuple
    stride: tuple
    dilation: tuple
    is_causal: tuple
    scale: float


def _is_int(x) -> bool:
    # SymInt: a size computed from a symbolic shape (torch.export with dynamic height / width)
    return isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool)


def _shape_str(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def to_tuple(x, n: int, name: str, kind: type = int) -> tuple:
    """An int (bool for ``kind=bool``) or a length-n sequence of them -> an n-tuple; ValueError otherwise."""
    ok = (lambda v: isinstance(v, bool)) if kind is bool else _is_int
    if ok(x):
        return (x,) * n
    if isinstance(x, Sequence) and not isinstance(x, str) and len(x) == n and all(ok(v) for v in x):
        return tuple(x)
    what = "a bool" if kind is bool else "an int"
    raise ValueError(f"{name} must be {what} or a tuple of {n} (one per spatial axis), got {x!r}")


def check_int(name: str, x, lo: int, hi: int | None = None) -> int:
    """An int in [lo, hi] (hi None: unbounded); ValueError naming `name` and the range otherwise."""
    if not _is_int(x) or x < lo or (hi is not None and x > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {rng}, got {x!r}")
    return x


def check_scale(scale, default: float) -> float:
    """``None`` -> default; otherwise a finite real number."""
    if scale is None:
        return float(default)
    if isinstance(scale, Tensor) or isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def check_choice(name: str, x, choices) -> None:
    if x not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {x!r}")


def check_bool(name: str, x) -> None:
    if not isinstance(x, bool):
        raise ValueError(f"{name} must be a bool, got {x!r}")


# ---------------------------------------------------------------------------------------------------
# neighborhood attention


def _na_tensors(n: int, q: Tensor, k: Tensor, v: Tensor | None):
    named = (("query", q), ("key", k)) + ((("value", v),) if v is not None else ())
    for name, t in named:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != n + 3:
            raise ValueError(f"{name} must have rank {n + 3} ([B, {n} spatial axes, heads, head_dim]), got shape "
                             f"{tuple(t.shape)}")
    v = k if v is None else v
    if k.shape[:-2] != q.shape[:-2] or v.shape[:-1] != k.shape[:-1] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"query, key, value shapes must match (value may differ in head_dim; key/value may have "
                         f"fewer heads), got query {tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"query, key, value dtypes must match, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"query, key, value must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"query, key, value devices must match, got {q.device}, {k.device}, {v.device}")
    if q.shape[-2] < 1 or k.shape[-2] < 1 or q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"heads and head_dim must be >= 1, got query {tuple(q.shape)}, value {tuple(v.shape)} "
                         "([B, *spatial, heads, head_dim])")
    if q.shape[-2] % k.shape[-2]:
        raise ValueError(f"query heads ({q.shape[-2]}) must be a multiple of key/value heads ({k.shape[-2]}) "
                         "(GQA / MQA)")


def _na_extra(q: Tensor, k: Tensor, v: Tensor, ak, av):
    if (ak is None) != (av is None):
        raise ValueError("additional_keys and additional_values must be given together (both tensors or both None)")
    if ak is None:
        return
    for name, t, ref in (("additional_keys", ak, k), ("additional_values", av, v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, N_extra, kv_heads, head_dim], got {_shape_str(t)}")
        if t.shape[0] != q.shape[0] or t.shape[2:] != ref.shape[-2:]:
            raise ValueError(f"{name} must be [B={q.shape[0]}, N_extra, {ref.shape[-2]}, {ref.shape[-1]}] (batch, "
                             f"heads and head_dim of the {'key' if ref is k else 'value'}), got {tuple(t.shape)}")
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name} must have query's dtype and device ({q.dtype}, {q.device}), got {t.dtype}, "
                             f"{t.device}")
    if ak.shape[1] != av.shape[1] or ak.shape[1] < 1:
        raise ValueError(f"additional_keys and additional_values must hold the same number (>= 1) of tokens, got "
                         f"{ak.shape[1]} and {av.shape[1]}")


def na_args(n: int, q: Tensor, k: Tensor, v: Tensor | None, kernel_size, stride, dilation, is_causal, scale, rpb,
            ak=None, av=None) -> NAConfig:
    """Checks of an ``na{n}d`` call (``v`` None: a logits call); the validated per-axis arguments."""
    _na_tensors(n, q, k, v)
    if v is not None:
        _na_extra(q, k, v, ak, av)
    ks = to_tuple(kernel_size, n, "kernel_size")
    ss = to_tuple(stride, n, "stride")
    ds = to_tuple(dilation, n, "dilation")
    cs = to_tuple(is_causal, n, "is_causal", bool)
    spatial = tuple(q.shape[1:1 + n])
    for a in range(n):
        check_int("kernel_size", ks[a], 1)
        check_int("dilation", ds[a], 1)
        check_int("stride", ss[a], 1, ks[a])
        if ks[a] * ds[a] > spatial[a]:
            raise ValueError(f"kernel_size * dilation must not exceed the input size on every axis, got "
                             f"kernel_size {ks}, dilation {ds}, input spatial size {spatial}")
    if rpb is not None:
        want = (q.shape[-2], *(2 * kk - 1 for kk in ks))
        if not isinstance(rpb, Tensor) or tuple(rpb.shape) != want:
            raise ValueError(f"rpb must have shape [heads, 2k-1, ...] = {list(want)}, got {_shape_str(rpb)}")
        if rpb.dtype != q.dtype or rpb.device != q.device:
            raise ValueError(f"rpb must have query's dtype and device ({q.dtype}, {q.device}), got {rpb.dtype}, "
                             f"{rpb.device}")
    return NAConfig(ks, ss, ds, cs, check_scale(scale, q.shape[-1] ** -0.5))


def na_rank(x, name: str) -> int:
    """Spatial rank (1, 2 or 3) of a ``[B, *spatial, heads, head_dim]`` tensor."""
    n = x.dim() - 3 if isinstance(x, Tensor) else 0
    if n not in (1, 2, 3):
        raise ValueError(f"{name} must have rank 4, 5 or 6, got shape {tuple(getattr(x, 'shape', ()))}")
    return n


def na_av_args(n: int, attn: Tensor, value: Tensor, kernel_size, stride, dilation, is_causal) -> NAConfig:
    """Checks of an ``na{n}d_av`` call."""
    for name, t in (("attn", attn), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != n + 3:
            raise ValueError(f"{name} must have rank {n + 3}, got {_shape_str(t)}")
    spatial = tuple(value.shape[1:1 + n])
    if tuple(attn.shape[2:2 + n]) != spatial or attn.shape[0] != value.shape[0]:
        raise ValueError(f"attn [B, heads, *spatial, K] and value [B, *spatial, kv_heads, head_dim] must share batch "
                         f"and spatial size, got attn {tuple(attn.shape)}, value {tuple(value.shape)}")
    if attn.dtype != value.dtype or attn.device != value.device or not attn.is_floating_point():
        raise ValueError(f"attn and value must be floating point with one dtype and device, got {attn.dtype} "
                         f"{attn.device}, {value.dtype} {value.device}")
    if value.shape[-2] < 1 or value.shape[-1] < 1 or attn.shape[1] < 1 or attn.shape[1] % value.shape[-2]:
        raise ValueError(f"attn heads ({attn.shape[1]}) must be a positive multiple of value heads "
                         f"({value.shape[-2]}), head_dim >= 1")
    probe = value.new_empty(value.shape[0], *spatial, attn.shape[1], 1).expand(*value.shape[:-2], attn.shape[1], 1)
    cfg = na_args(n, probe, probe, None, kernel_size, stride, dilation, is_causal, 1.0, None)
    if attn.shape[-1] != math.prod(cfg.kernel_size):
        raise ValueError(f"attn must hold prod(kernel_size) = {math.prod(cfg.kernel_size)} weights per query, got "
                         f"{attn.shape[-1]}")
    return cfg


def merge_args(outputs, lses) -> None:
    """Checks of a ``merge_attentions`` call."""
    if not isinstance(outputs, (list, tuple)) or not isinstance(lses, (list, tuple)) or len(outputs) < 2 \
            or len(outputs) != len(lses):
        raise ValueError(f"outputs and lses must be lists of the same length >= 2, got "
                         f"{len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__} and "
                         f"{len(lses) if isinstance(lses, (list, tuple)) else type(lses).__name__}")
    shape = outputs[0].shape
    for i, (o, lse) in enumerate(zip(outputs, lses)):
        if not isinstance(o, Tensor) or o.shape != shape or o.dim() < 3:
            raise ValueError(f"outputs must share one shape [B, *seq, heads, D], got {_shape_str(o)} at {i} "
                             f"(first {tuple(shape)})")
        if not isinstance(lse, Tensor) or lse.shape != shape[:-1]:
            raise ValueError(f"lses[{i}] must have shape {tuple(shape[:-1])} (outputs without head_dim), got "
                             f"{_shape_str(lse)}")


# ---------------------------------------------------------------------------------------------------
# bi-level routing attention


def pair(x, name: str) -> tuple[int, int]:
    """An int >= 1 or a pair of them -> a pair."""
    out = to_tuple(x, 2, name)
    for v in out:
        check_int(name, v, 1)
    return out


def routed_args(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size) -> tuple[int, int]:
    """Checks of a ``routed_attention`` call; the region size ``(rows, cols)``."""
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor) or t.dim() != 5:
            raise ValueError(f"{name} must be a 5-D tensor [B, H, W, heads, head_dim], got {_shape_str(t)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"key shape {tuple(k.shape)} must equal query shape {tuple(q.shape)}")
    if v.shape[:4] != q.shape[:4]:
        raise ValueError(f"value shape {tuple(v.shape)} must match query shape {tuple(q.shape)} except the head dim")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"query, key, value must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[3] < 1 or q.shape[4] < 1 or v.shape[4] < 1:
        raise ValueError(f"heads and head_dim must be >= 1, got query {tuple(q.shape)}, value {tuple(v.shape)} "
                         "([B, H, W, heads, head_dim])")
    if not isinstance(index, Tensor):
        raise ValueError(f"index must be an int64 tensor, got {type(index).__name__}")
    if not (q.device == k.device == v.device == index.device):
        raise ValueError(f"query, key, value and index must be on one device, got {q.device}, {k.device}, "
                         f"{v.device}, {index.device}")
    rh, rw = pair(region_size, "region_size")
    B, H, W = q.shape[:3]
    if H % rh or W % rw:
        raise ValueError(f"spatial size {H}x{W} must be a multiple of region_size {rh}x{rw}")
    R = (H // rh) * (W // rw)
    if index.dtype != torch.int64:
        raise ValueError(f"index must be an int64 tensor, got {index.dtype}")
    if index.dim() != 3 or index.shape[0] != B or index.shape[1] != R:
        raise ValueError(f"index must have shape [B={B}, R={R}, topk], got {tuple(index.shape)}")
    topk = index.shape[2]
    if not 1 <= topk <= R:
        raise ValueError(f"topk (index.shape[-1]) must be in [1, {R}], got {topk}")
    # A value check is a device sync (one); skip it while capturing a graph.
    if not capturing() and index.numel():
        lo, hi = torch.stack(torch.aminmax(index)).tolist()
        if lo < 0 or hi >= R:
            raise ValueError(f"index values must be in [0, {R - 1}] (regions of the {H // rh}x{W // rw} grid), "
                             f"got values in [{lo}, {hi}]")
    return rh, rw


def region_mean_args(x: Tensor, region_grid) -> tuple[int, int]:
    """Checks of a ``region_mean`` call; the grid ``(rows, cols)``."""
    gh, gw = pair(region_grid, "region_grid")
    if x.dim() < 3:
        raise ValueError(f"x must be [B, H, W, ...], got shape {tuple(x.shape)}")
    H, W = x.shape[1:3]
    if H % gh or W % gw:
        raise ValueError(f"spatial size {H}x{W} must be a multiple of the region grid {gh}x{gw}")
    return gh, gw


def region_topk_args(q_region: Tensor, k_region: Tensor, topk: int, scale) -> float:
    """Checks of a ``region_topk`` call; the scale."""
    if q_region.dim() != 3 or k_region.dim() != 3:
        raise ValueError(
            f"q_region and k_region must be [B, R, C], got {tuple(q_region.shape)} and {tuple(k_region.shape)}"
        )
    if q_region.shape[0] != k_region.shape[0] or q_region.shape[2] != k_region.shape[2]:
        raise ValueError(
            f"q_region {tuple(q_region.shape)} and k_region {tuple(k_region.shape)} must share batch and channels"
        )
    check_int("topk", topk, 1, k_region.shape[1])
    return check_scale(scale, q_region.shape[-1] ** -0.5)


def bra_args(query: Tensor, n_win) -> tuple[int, int]:
    """Checks of a ``bi_level_routing_attention`` call (the rest is ``routed_args``); the grid ``(rows, cols)``."""
    if not isinstance(query, Tensor) or query.dim() != 5:
        raise ValueError(f"query must be a 5-D tensor [B, H, W, heads, head_dim], got "
                         f"{getattr(query, 'shape', query)}")
    gh, gw = pair(n_win, "n_win")
    H, W, nh, dq = query.shape[1:]
    if nh < 1 or dq < 1:
        raise ValueError(f"heads and head_dim must be >= 1, got query {tuple(query.shape)}")
    if H % gh or W % gw:
        raise ValueError(f"spatial size {H}x{W} must be a multiple of n_win {gh}x{gw}")
    return gh, gw
