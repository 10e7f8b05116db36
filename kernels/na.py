"""Neighborhood attention (NA / DiNA / GNA), 1-D, 2-D and 3-D, with relative positional bias.

Functional API of NATTEN >= 0.20 (names and order; everything after ``kernel_size`` keyword-only) plus ``rpb``,
heads-last layout ``[B, *spatial, heads, head_dim]``::

    out = na2d(q, k, v, 7, dilation=2, rpb=table)
    out, lse = na2d(q, k, v, 7, additional_keys=ek, additional_values=ev, return_lse=True)

Semantics are NATTEN's (see ``_na_index``): windows shifted inward at borders, dilation groups,
stride (GNA) and per-axis causal masks. ``scale`` (default head_dim**-0.5) multiplies q before the dot
product; the RPB table (``[heads, 2k-1]``, ``[heads, 2k-1, 2k-1]``, ...) is added unscaled at index
(key - query) / dilation + k - 1, as in NATTEN <= 0.17 (the NAT/DiNAT checkpoints). Also as NATTEN >= 0.20:
``additional_keys`` / ``additional_values`` ``[B, N_extra, kv_heads, D]`` are attended by every query besides its
window (one softmax over both), ``return_lse`` returns the natural logsumexp ``[B, *spatial, heads]`` (float32;
float64 for float64 inputs) for ``merge_attentions``, key / value may have fewer heads than query (GQA / MQA:
query head i reads key/value head i // (heads / kv_heads)) and value its own head_dim.

Backends:
    ``reference``: dense attention with an explicit [N, N] mask and bias (the test oracle; tiny sizes).
    ``torch``: queries in small tiles, each attending densely to the key region its windows cover, with a
        cached mask/RPB index (memory O(N * region); plain gather/matmul/softmax).
    ``gather``: every query's k^d keys gathered explicitly (unfold-style, memory O(N k^d D)).
    ``triton``: the fused kernel of ``na_triton`` (CUDA, or the Triton interpreter).
    ``cpu``: the compiled C++ CPU kernel of ``_na_cpu`` (built on first use with the host's C++ compiler; float16 /
        bfloat16 run in float32); unavailable without a compiler (one warning), and never while exporting.
    ``natten``: NATTEN's own ops when installed (no RPB).
    ``auto``: cpu on CPU tensors when the compiled kernel is available (not while exporting), else torch; on CUDA
        triton with ``VISIONATTN_NA_AUTO_TRITON=1`` (where it runs the arguments), else torch: the fused kernel is
        interpreter-tested and compiles for sm_90 but has not run on a GPU yet.

``torch``, ``triton`` and ``cpu`` run as the custom ops ``visionattn::na_forward`` / ``visionattn::na_backward`` (fake
implementations, autograd, autocast), so ``torch.compile`` (fullgraph) and ``torch.export`` keep them as one op
per call. While exporting to ONNX (or ``torch.jit.trace``) the torch path runs as plain torch ops instead, its
index tensors becoming graph constants.

Non-finite inputs stay in the windows that hold them: a NaN / inf query, key, value or RPB entry reaches exactly
the outputs of the queries whose window (or extra keys) contain it, as in the reference (the fused kernel lets a
non-finite *value* reach the queries of its tile, see ``na_triton``).
"""
from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ._common import (
    LOG2E,
    Backend,
    capturing,
    check_int,
    check_scale,
    choose_backend,
    exporting,
    register_autocast,
    to_tuple,
)
from ._na_index import axis_dense, axis_tiles, axis_windows

__all__ = ["na1d", "na2d", "na3d", "na_logits", "na1d_logits", "na2d_logits", "na3d_logits", "na1d_av",
           "na2d_av", "na3d_av", "merge_attentions", "BACKENDS", "NAConfig"]

# queries per tile along each axis (measured on CPU for NAT-like shapes: small tiles keep the work in cache)
_TILE = {1: (32,), 2: (4, 8), 3: (2, 2, 8)}
_CACHE: dict = {}
_CACHE_MAX = 256
_LN2 = math.log(2.0)


class NAConfig(NamedTuple):
    """Validated per-axis arguments of one NA call."""

    kernel_size: tuple
    stride: tuple
    dilation: tuple
    is_causal: tuple
    scale: float


def _acc(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / logsumexp dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------------
# arguments


def _shape_str(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_tensors(n: int, q: Tensor, k: Tensor, v: Tensor | None):
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


def _check_extra(q: Tensor, k: Tensor, v: Tensor, ak, av):
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


def _check_args(n: int, q: Tensor, k: Tensor, v: Tensor | None, kernel_size, stride, dilation, is_causal, scale,
                rpb, ak=None, av=None) -> NAConfig:
    _check_tensors(n, q, k, v)
    if v is not None:
        _check_extra(q, k, v, ak, av)
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


# ---------------------------------------------------------------------------------------------------
# index tensors (numpy, built once per configuration)


def _cached(key, build):
    """Index tensors per configuration; never cached while capturing a graph (they must be graph constants)."""
    if capturing():
        return build()
    val = _CACHE.get(key)
    if val is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        val = _CACHE[key] = build()
    return val


def _t(x: np.ndarray, device) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), device=device)


def _outer(parts: list[np.ndarray], n: int, block: int) -> list[np.ndarray]:
    """View per-axis tensors shaped [x_a, y_a, ...] so they broadcast into [x_1..x_n, y_1..y_n, ...]."""
    out = []
    for a, p in enumerate(parts):
        shape = [1] * (block * n)
        for b in range(block):
            shape[b * n + a] = p.shape[b]
        out.append(p.reshape(shape))
    return out


def _rpb_strides(ks) -> list[int]:
    sizes = [2 * kk - 1 for kk in ks]
    return [math.prod(sizes[a + 1:]) for a in range(len(ks))]


def _combine(parts: list[np.ndarray], n: int, block: int, op) -> np.ndarray:
    p = _outer(parts, n, block)
    out = p[0]
    for x in p[1:]:
        out = op(out, x)
    return out


class DenseIndex(NamedTuple):
    mask: Tensor  # [N, N] key in the query's window
    rpb_idx: Tensor  # [N, N] flat RPB-table index


@torch.compiler.assume_constant_result
def _dense_index(spatial, ks, ss, ds, cs, device: str) -> DenseIndex:
    def build():
        n = len(spatial)
        masks, rels = zip(*(axis_dense(spatial[a], ks[a], ds[a], ss[a], cs[a]) for a in range(n)))
        mask = _combine(list(masks), n, 2, np.logical_and)
        st = _rpb_strides(ks)
        idx = _combine([rel * st[a] for a, rel in enumerate(rels)], n, 2, np.add)
        N = math.prod(spatial)
        return DenseIndex(_t(mask.reshape(N, N), device), _t(idx.reshape(N, N), device))

    return _cached(("dense", spatial, ks, ss, ds, cs, device), build)


class WindowIndex(NamedTuple):
    pos: tuple  # per axis [S_a, k_a] key positions
    valid: Tensor | None  # [*S, K] causal validity (None without causal axes)
    rpb_idx: Tensor  # [*S, K] flat RPB-table index


@torch.compiler.assume_constant_result
def _gather_index(spatial, ks, ss, ds, cs, device: str) -> WindowIndex:
    def build():
        n = len(spatial)
        wins = [axis_windows(spatial[a], ks[a], ds[a], ss[a], cs[a]) for a in range(n)]
        pos = tuple(_t(w.pos, device) for w in wins)
        valid = None
        if any(cs):
            valid = _t(_combine([w.valid for w in wins], n, 2, np.logical_and).reshape(*spatial, -1), device)
        st = _rpb_strides(ks)
        idx = _combine([w.rel * st[a] for a, w in enumerate(wins)], n, 2, np.add)
        return WindowIndex(pos, valid, _t(idx.reshape(*spatial, -1), device))

    return _cached(("gather", spatial, ks, ss, ds, cs, device), build)


def _gather_windows(x: Tensor, pos) -> Tensor:
    """[B, *S, h, D] -> [B, *S, h, K, D] with K = prod(k_a), window order row-major over the axes."""
    n = len(pos)
    B, h, D = x.shape[0], x.shape[-2], x.shape[-1]
    for a, p in enumerate(pos):
        # axis a of the input sits at dim 1 + 2a once the previous axes have become (S_b, k_b) pairs
        dim = 1 + 2 * a
        x = x.index_select(dim, p.reshape(-1))
        x = x.reshape(*x.shape[:dim], p.shape[0], p.shape[1], *x.shape[dim + 1:])
    # x: [B, S1, k1, S2, k2, ..., h, D]
    perm = [0] + [1 + 2 * a for a in range(n)] + [2 * n + 1] + [2 + 2 * a for a in range(n)] + [2 * n + 2]
    x = x.permute(perm)
    # a list, not a generator: dynamo cannot trace math.prod over a generator (fullgraph compile)
    return x.reshape(B, *x.shape[1:n + 1], h, math.prod([p.shape[1] for p in pos]), D)


def _flat(parts: list[np.ndarray], spatial) -> np.ndarray:
    """Per-axis positions [n_a, x_a] -> flat spatial index [prod(n_a) * prod(x_a)] (tile-major)."""
    n = len(parts)
    strides = [math.prod(spatial[a + 1:]) for a in range(n)]
    return _combine([x * strides[a] for a, x in enumerate(parts)], n, 2, np.add).reshape(-1)


class TileIndex(NamedTuple):
    qflat: Tensor | None  # [NT * T] flat query position per tile slot (None: the identity)
    kflat: Tensor  # [NT * R] flat key position per tile region slot
    inv: Tensor | None  # [N] tile slot holding each query's result (None: the identity)
    outside: Tensor  # [NT, T, R] key outside the query's window
    rpb_idx: Tensor  # [NT, T, R] flat RPB-table index
    mask_bias: Tensor  # [NT, T, R] 0 inside, -inf outside (float32)
    n_tiles: int
    tile: int  # queries per tile
    region: int  # keys per tile region


@torch.compiler.assume_constant_result  # dynamo runs it at trace time: the indices become graph constants
def _tile_index(spatial, ks, ss, ds, cs, tile, device: str) -> TileIndex:
    def build():
        n = len(spatial)
        tl = [axis_tiles(spatial[a], ks[a], ds[a], ss[a], cs[a], tile[a]) for a in range(n)]
        nt = [x.qpos.shape[0] for x in tl]
        t = [x.t for x in tl]
        NT, T, R = math.prod(nt), math.prod(t), math.prod(x.r for x in tl)
        qflat = _flat([x.qpos for x in tl], spatial)
        kflat = _flat([x.kpos for x in tl], spatial)
        # where each position's result sits in the [NT * T] tile-major order
        tile_of = _outer([x.inv // x.t * math.prod(nt[a + 1:]) for a, x in enumerate(tl)], n, 1)
        slot_of = _outer([x.inv % x.t * math.prod(t[a + 1:]) for a, x in enumerate(tl)], n, 1)
        inv = (sum(tile_of[1:], tile_of[0]) * T + sum(slot_of[1:], slot_of[0])).reshape(-1)
        mask = _combine([x.mask for x in tl], n, 3, np.logical_and).reshape(NT, T, R)
        st = _rpb_strides(ks)
        idx = _combine([x.rel * st[a] for a, x in enumerate(tl)], n, 3, np.add).reshape(NT, T, R)
        bias = np.where(mask, 0.0, -np.inf).astype(np.float32)
        ident_q = qflat.size == inv.size and bool(np.array_equal(qflat, np.arange(qflat.size)))
        return TileIndex(None if ident_q else _t(qflat, device), _t(kflat, device),
                         None if ident_q else _t(inv, device), _t(~mask, device), _t(idx, device),
                         _t(bias, device), NT, T, R)

    return _cached(("tile", spatial, ks, ss, ds, cs, tile, device), build)


@functools.lru_cache(maxsize=256)
def _tile_shape(spatial, ks, ss, ds, cs, tile) -> tuple[int, int, int]:
    """(tiles, queries per tile, keys per tile region) of `_tile_index`, without building tensors (fake impls)."""
    tl = [axis_tiles(spatial[a], ks[a], ds[a], ss[a], cs[a], tile[a]) for a in range(len(spatial))]
    return math.prod(x.qpos.shape[0] for x in tl), math.prod(x.t for x in tl), math.prod(x.r for x in tl)


# ---------------------------------------------------------------------------------------------------
# shared pieces


def _kv_heads(x: Tensor, heads: int) -> Tensor:
    """GQA for the explicit backends: key/value heads repeated to the query heads ([.., kv_heads, D])."""
    g = heads // x.shape[-2]
    return x if g == 1 else x.repeat_interleave(g, dim=-2)


def _lse(logits: Tensor) -> Tensor:
    return logits.to(_acc(logits.dtype)).logsumexp(-1)


def _extra_attention(q: Tensor, ak: Tensor, av: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Dense attention of every query over the additional tokens: output ``[B, *S, h, Dv]`` and natural
    logsumexp ``[B, *S, h]`` (for merging with the window part)."""
    B, h, D = q.shape[0], q.shape[-2], q.shape[-1]
    hk, Dv = ak.shape[2], av.shape[-1]
    N = math.prod(q.shape[1:-2])
    g = h // hk
    qg = q.reshape(B, N, hk, g, D).permute(0, 2, 3, 1, 4).reshape(B, hk, g * N, D)
    logits = (qg * scale) @ ak.permute(0, 2, 3, 1)  # [B, hk, gN, Na]
    out = logits.softmax(-1) @ av.transpose(1, 2)  # [B, hk, gN, Dv]
    out = out.reshape(B, hk, g, N, Dv).permute(0, 3, 1, 2, 4).reshape(*q.shape[:-1], Dv)
    lse = _lse(logits).reshape(B, hk, g, N).permute(0, 3, 1, 2).reshape(q.shape[:-1])
    return out, lse


def merge_attentions(outputs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Merge attention outputs over disjoint key sets of the same queries, as one softmax over their union.

    ``outputs[i]``: ``[B, *seq, heads, D]``; ``lses[i]``: their natural logsumexp ``[B, *seq, heads]`` (e.g. from
    ``na2d(..., return_lse=True)`` and an attention over other keys). Returns the merged output (dtype of
    ``outputs[0]``) and logsumexp (float32; float64 for float64). Differentiable in every input (plain torch ops).
    """
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
    acc = _acc(outputs[0].dtype)
    stacked = torch.stack([x.to(acc) for x in lses])
    lse = stacked.logsumexp(0)
    w = (stacked - lse).exp().unsqueeze(-1)
    out = sum(w[i] * o.to(acc) for i, o in enumerate(outputs))
    return out.to(outputs[0].dtype), lse


# ---------------------------------------------------------------------------------------------------
# reference: dense masked attention (the oracle)


def _na_reference(q, k, v, rpb, cfg: NAConfig, ak=None, av=None, need_lse=False):
    B, *spatial, h, D = q.shape
    N = math.prod(spatial)
    Dv = v.shape[-1]
    index = _dense_index(tuple(spatial), *cfg[:4], str(q.device))
    k, v = _kv_heads(k, h), _kv_heads(v, h)
    qf = (q * cfg.scale).reshape(B, N, h, D).transpose(1, 2)
    kf = k.reshape(B, N, h, D).transpose(1, 2)
    vf = v.reshape(B, N, h, Dv).transpose(1, 2)
    logits = qf @ kf.transpose(-1, -2)
    if rpb is not None:
        logits = logits + rpb.reshape(h, -1)[:, index.rpb_idx]
    logits = logits.masked_fill(~index.mask, float("-inf"))
    if ak is not None:
        akf, avf = _kv_heads(ak, h).transpose(1, 2), _kv_heads(av, h).transpose(1, 2)  # [B, h, Na, D]
        logits = torch.cat([logits, qf @ akf.transpose(-1, -2)], -1)
    p = logits.softmax(-1)
    pw = p[..., :N]
    if capturing() or bool(torch.isfinite(vf).all()):
        out = pw @ vf
    else:  # 0 * inf outside the windows would spread a non-finite value to every query
        out = torch.where(index.mask[..., None], pw[..., None] * vf[..., None, :, :], 0).sum(-2)
    if ak is not None:
        out = out + p[..., N:] @ avf
    out = out.transpose(1, 2).reshape(B, *spatial, h, Dv)
    lse = _lse(logits).transpose(1, 2).reshape(B, *spatial, h) if need_lse else None
    return out, lse


# ---------------------------------------------------------------------------------------------------
# gather: explicit windows (also the logits / AV split functions)


def _gather_logits(q, k, rpb, cfg: NAConfig):
    """[B, *S, h, K] pre-softmax logits (invalid causal slots -inf) and the window index."""
    spatial = tuple(q.shape[1:-2])
    index = _gather_index(spatial, *cfg[:4], str(q.device))
    kw = _gather_windows(_kv_heads(k, q.shape[-2]), index.pos)
    logits = ((q * cfg.scale).unsqueeze(-2) @ kw.transpose(-1, -2)).squeeze(-2)
    if rpb is not None:
        logits = logits + rpb.reshape(rpb.shape[0], -1)[:, index.rpb_idx].movedim(0, -2)
    if index.valid is not None:
        logits = logits.masked_fill(~index.valid.unsqueeze(-2), float("-inf"))
    return logits, index


def _window_av(p: Tensor, v: Tensor, index: WindowIndex) -> Tensor:
    """[B, *S, h, K] weights x the value windows -> [B, *S, h, Dv]."""
    vw = _gather_windows(_kv_heads(v, p.shape[-2]), index.pos)
    return (p.unsqueeze(-2) @ vw).squeeze(-2)


def _na_gather(q, k, v, rpb, cfg: NAConfig, ak=None, av=None, need_lse=False):
    logits, index = _gather_logits(q, k, rpb, cfg)
    K = logits.shape[-1]
    if ak is not None:
        h = q.shape[-2]
        extra = torch.einsum("b...hd,bnhd->b...hn", q * cfg.scale, _kv_heads(ak, h))
        logits = torch.cat([logits, extra], -1)
    p = logits.softmax(-1)
    out = _window_av(p[..., :K], v, index)
    if ak is not None:
        out = out + torch.einsum("b...hn,bnhd->b...hd", p[..., K:], _kv_heads(av, q.shape[-2]))
    return out, (_lse(logits) if need_lse else None)


# ---------------------------------------------------------------------------------------------------
# torch: tiles of queries, dense inside the key region of the tile
#
# The hot loop is `_na_torch_forward` / `_na_torch_backward` below: per call one gather of q (tile order) and of
# k / v (tile key regions), then batched [T, D] x [D, R] matmuls over all tiles at once, masked_fill, softmax,
# [T, R] x [R, Dv]. Layout inside: [B, kv_heads, tiles, g * T, .] with the g = heads / kv_heads query heads of a
# key/value head stacked on the query rows (g = 1 without GQA: plain views of [B, heads, tiles, T, .]).


def _heads_first(x: Tensor, flat: Tensor | None) -> Tensor:
    """[B, *S, h, D] -> [B, h, len(flat), D]: one transpose copy, then one contiguous gather."""
    B, h, D = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.reshape(B, math.prod(x.shape[1:-2]), h, D).transpose(1, 2).contiguous()
    return x if flat is None else x.index_select(2, flat)


def _group(x: Tensor, hk: int) -> Tensor:
    """[B, h, NT, T, C] -> [B, hk, NT, g*T, C] (query heads of one key/value head on the rows)."""
    B, h, NT, T, C = x.shape
    if h == hk:
        return x
    return x.view(B, hk, h // hk, NT, T, C).transpose(2, 3).reshape(B, hk, NT, h // hk * T, C)


def _ungroup(x: Tensor, h: int) -> Tensor:
    """Inverse of `_group`: [B, hk, NT, g*T, C] -> [B, h, NT * T, C]."""
    B, hk, NT, gT, C = x.shape
    if h != hk:
        x = x.view(B, hk, NT, h // hk, gT * hk // h, C).transpose(2, 3)
    return x.reshape(B, h, NT * (gT * hk // h), C)


def _group_rows(x: Tensor, h: int, hk: int) -> Tensor:
    """Per-head tile tables [h, NT, T, R] -> [hk, NT, g*T, R]."""
    if h == hk:
        return x
    _, NT, T, R = x.shape
    return x.view(hk, h // hk, NT, T, R).transpose(1, 2).reshape(hk, NT, h // hk * T, R)


def _tile_q(x: Tensor, ix: TileIndex, hk: int) -> Tensor:
    """[B, *S, h, C] -> [B, hk, NT, g*T, C] in tile order (queries computed twice appear twice)."""
    B, h, C = x.shape[0], x.shape[-2], x.shape[-1]
    return _group(_heads_first(x, ix.qflat).view(B, h, ix.n_tiles, ix.tile, C), hk)


def _tile_grad(x: Tensor, ix: TileIndex, hk: int) -> Tensor:
    """Like `_tile_q` for a gradient w.r.t. the output: only the slot each query's result is read from gets it
    (a query computed twice by overlapping tiles counts once)."""
    B, h, C = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.reshape(B, math.prod(x.shape[1:-2]), h, C).transpose(1, 2)
    if ix.inv is not None:
        x = x.new_zeros(B, h, ix.n_tiles * ix.tile, C).index_copy_(2, ix.inv, x)
    return _group(x.reshape(B, h, ix.n_tiles, ix.tile, C), hk)


def _untile(x: Tensor, ix: TileIndex, spatial, h: int) -> Tensor:
    """[B, hk, NT, g*T, C] -> [B, *S, h, C] reading each query's result from its slot."""
    x = _ungroup(x, h)
    if ix.inv is not None:
        x = x.index_select(2, ix.inv)
    return x.transpose(1, 2).reshape(x.shape[0], *spatial, h, x.shape[-1])


def _rows(x: Tensor, h: int, hk: int) -> Tensor:
    """A per-tile table [NT, T, R] repeated for the g query heads on the rows: [NT, g*T, R]."""
    if h == hk:
        return x
    NT, T, R = x.shape
    return x.unsqueeze(1).expand(NT, h // hk, T, R).reshape(NT, h // hk * T, R)


def _finite(*ts) -> bool:
    """All of ``ts`` finite (one cheap reduction each; an overflowing sum only costs the exact path)."""
    return bool(torch.isfinite(sum(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
                                   for t in ts if t is not None)))


def _na_torch_forward(q, k, v, rpb, cfg: NAConfig, ak=None, av=None, need_lse=False, need_p=False, tile=None):
    """(out [B, *S, h, Dv], natural lse [B, *S, h] or None, probabilities [B, hk, NT, g*T, R + N_extra] or None).

    Plain differentiable torch ops: run under no_grad inside the custom op, with autograd while exporting."""
    n = q.dim() - 3
    B, *spatial, h, D = q.shape
    spatial = tuple(spatial)
    hk, Dv = k.shape[-2], v.shape[-1]
    ix = _tile_index(spatial, *cfg[:4], tuple(tile or _TILE[n]), str(q.device))
    NT, R = ix.n_tiles, ix.region
    qt = _tile_q(q, ix, hk)  # [B, hk, NT, gT, D]
    # scale q before the dot product (as NATTEN); in place when the gather made a fresh tensor
    qt = qt * cfg.scale if ix.qflat is None else qt.mul_(cfg.scale)
    kt = _heads_first(k, ix.kflat).view(B, hk, NT, R, D)
    vt = _heads_first(v, ix.kflat).view(B, hk, NT, R, Dv)
    logits = qt @ kt.transpose(-1, -2)  # [B, hk, NT, gT, R]
    # Finite key / value / RPB (checked eagerly): one additive bias with -inf outside the windows. Otherwise (and
    # while exporting) masked_fill, so that a non-finite key stays out of the windows that do not contain it.
    exact = capturing() or not _finite(k, v, rpb)
    bias = None if rpb is None else _group_rows(rpb.reshape(h, -1)[:, ix.rpb_idx], h, hk)
    if exact:
        if bias is not None:
            logits = logits.add_(bias)
        logits = logits.masked_fill_(_rows(ix.outside, h, hk), float("-inf"))
    elif bias is not None:
        logits = logits.add_(bias.masked_fill(_rows(ix.outside, h, hk), float("-inf")))
    else:
        logits = logits.add_(_rows(ix.mask_bias, h, hk).to(q.dtype))
    if ak is not None:
        logits = torch.cat([logits, qt @ ak.permute(0, 2, 3, 1).unsqueeze(2)], -1)  # + [B, hk, NT, gT, Na]
    p = logits.softmax(-1)
    if ak is None:
        out = p @ vt  # [B, hk, NT, gT, Dv]
    else:
        out = p[..., :R] @ vt + p[..., R:] @ av.transpose(1, 2).unsqueeze(2)
    out = _untile(out, ix, spatial, h)
    if exact and not capturing() and not _finite(v):
        # a key region is shared by a tile of queries: 0 * inf would reach queries whose window misses the value
        out = _na_gather(q, k, v, rpb, cfg, ak, av)[0]
    lse = _untile(_lse(logits).unsqueeze(-1), ix, spatial, h).squeeze(-1) if need_lse else None
    return out, lse, (p if need_p else None)


def _na_torch_backward(dout, dlse, q, k, v, rpb, ak, av, out, p, cfg: NAConfig, need_drpb: bool, tile=None):
    """Gradients of `_na_torch_forward` from its saved probabilities ``p`` (softmax backward, as autograd)."""
    n = q.dim() - 3
    B, *spatial, h, D = q.shape
    spatial = tuple(spatial)
    N = math.prod(spatial)
    hk, Dv = k.shape[-2], v.shape[-1]
    ix = _tile_index(spatial, *cfg[:4], tuple(tile or _TILE[n]), str(q.device))
    NT, R = ix.n_tiles, ix.region
    qt = _tile_q(q, ix, hk)
    qt = qt * cfg.scale if ix.qflat is None else qt.mul_(cfg.scale)
    kt = _heads_first(k, ix.kflat).view(B, hk, NT, R, D)
    vt = _heads_first(v, ix.kflat).view(B, hk, NT, R, Dv)
    dot = _tile_grad(dout.to(q.dtype), ix, hk)  # [B, hk, NT, gT, Dv], zero in the slots not read back
    dp = dot @ vt.transpose(-1, -2)
    if ak is not None:
        akt, avt = ak.transpose(1, 2).unsqueeze(2), av.transpose(1, 2).unsqueeze(2)  # [B, hk, 1, Na, .]
        dp = torch.cat([dp, dot @ avt.transpose(-1, -2)], -1)
    delta = (dp.unsqueeze(-2) @ p.unsqueeze(-1)).squeeze(-1)  # rowsum(dp * p) without a [.., R] temporary
    if dlse is not None:
        delta = delta - _tile_grad(dlse.unsqueeze(-1).to(q.dtype), ix, hk)
    ds = dp.sub_(delta).mul_(p)  # d logits (q already scaled), in place of dp
    dsw, pw = (ds, p) if ak is None else (ds[..., :R], p[..., :R])
    dq = dsw @ kt
    if ak is not None:
        dq = dq + ds[..., R:] @ akt
    dq = _untile(dq * cfg.scale, ix, spatial, h)
    dk = q.new_zeros(B, hk, N, D).index_add_(2, ix.kflat, (dsw.transpose(-1, -2) @ qt).reshape(B, hk, NT * R, D))
    dv = q.new_zeros(B, hk, N, Dv).index_add_(2, ix.kflat, (pw.transpose(-1, -2) @ dot).reshape(B, hk, NT * R, Dv))
    dk = dk.transpose(1, 2).reshape(k.shape)
    dv = dv.transpose(1, 2).reshape(v.shape)
    dak = dav = None
    if ak is not None:
        rows = lambda x: x.reshape(B, hk, -1, x.shape[-1])  # noqa: E731  all tiles' rows of one kv head
        dak = (rows(ds[..., R:]).transpose(-1, -2) @ rows(qt)).transpose(1, 2)
        dav = (rows(p[..., R:]).transpose(-1, -2) @ rows(dot)).transpose(1, 2)
    drpb = None
    if need_drpb:
        dsum = _ungroup(dsw.sum(0, keepdim=True), h).reshape(h, -1)  # [h, NT * T * R]
        drpb = rpb.new_zeros(h, rpb[0].numel()).index_add_(1, ix.rpb_idx.reshape(-1), dsum).reshape(rpb.shape)
    return dq, dk, dv, drpb, dak, dav


# ---------------------------------------------------------------------------------------------------
# triton glue (extra keys merged by logsumexp; backward from the merged logsumexp, as one softmax)


def _group_all(x: Tensor, hk: int) -> Tensor:
    """[B, *S, h, C] -> [B, hk, g*N, C] (all queries of a key/value head as rows)."""
    B, h, C = x.shape[0], x.shape[-2], x.shape[-1]
    N = math.prod(x.shape[1:-2])
    return x.reshape(B, N, hk, h // hk, C).permute(0, 2, 3, 1, 4).reshape(B, hk, h // hk * N, C)


def _ungroup_all(x: Tensor, like: Tensor) -> Tensor:
    B, hk, gN, C = x.shape
    h = like.shape[-2]
    return x.reshape(B, hk, h // hk, gN * hk // h, C).permute(0, 3, 1, 2, 4).reshape(*like.shape[:-1], C)


def _extra_backward(dout, q, ak, av, lse, delta, scale):
    """dq, d additional_keys, d additional_values of the extra-token part of a merged softmax (natural lse)."""
    acc = _acc(q.dtype)
    hk = ak.shape[2]
    qg = _group_all(q, hk).to(acc) * scale
    dog = _group_all(dout, hk).to(acc)
    akh, avh = ak.transpose(1, 2).to(acc), av.transpose(1, 2).to(acc)
    p = (qg @ akh.transpose(-1, -2) - _group_all(lse.unsqueeze(-1), hk)).exp()
    ds = p * (dog @ avh.transpose(-1, -2) - _group_all(delta.unsqueeze(-1), hk))
    dq = _ungroup_all(ds @ akh * scale, q)
    dak = (ds.transpose(-1, -2) @ qg).transpose(1, 2)
    dav = (p.transpose(-1, -2) @ dog).transpose(1, 2)
    return dq.to(q.dtype), dak.to(ak.dtype), dav.to(av.dtype)


def _triton_forward(q, k, v, rpb, cfg: NAConfig, ak=None, av=None):
    """(out, base-2 logsumexp of the whole softmax)."""
    from . import na_triton

    out, lse2 = na_triton.forward(q, k, v, rpb, cfg)
    if ak is None:
        return out, lse2
    ox, lsex = _extra_attention(q, ak, av, cfg.scale)
    out, lse = merge_attentions([out, ox], [lse2 * _LN2, lsex])
    return out, lse * LOG2E


def _triton_backward(dout, dlse, q, k, v, rpb, ak, av, out, lse2, cfg: NAConfig, need_drpb: bool):
    from . import na_triton

    acc = _acc(q.dtype)
    delta = (dout.to(acc) * out.to(acc)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(acc)
    dq, dk, dv, drpb = na_triton.backward(dout, q, k, v, rpb, lse2, delta, cfg, need_drpb)
    dak = dav = None
    if ak is not None:
        dqx, dak, dav = _extra_backward(dout, q, ak, av, lse2 * _LN2, delta, cfg.scale)
        dq = dq + dqx
    return dq, dk, dv, drpb, dak, dav


def _triton_check(q, k, v, rpb, cfg: NAConfig, ak=None, av=None) -> str | None:
    if exporting():
        return "the fused kernel cannot be exported to ONNX or traced by torch.jit; use backend='torch'"
    try:
        from .na_triton import unsupported
    except ImportError as e:
        return f"needs triton ({e}); use backend='torch'"
    return unsupported(q, k, v, rpb, cfg)


def _cpu_forward(q, k, v, rpb, cfg: NAConfig, ak=None, av=None):
    """(out, natural logsumexp of the whole softmax)."""
    from . import _na_cpu

    out, lse = _na_cpu.forward(q, k, v, rpb, cfg)
    if ak is None:
        return out, lse
    ox, lsex = _extra_attention(q, ak, av, cfg.scale)
    return merge_attentions([out, ox], [lse, lsex])


def _cpu_backward(dout, dlse, q, k, v, rpb, ak, av, out, lse, cfg: NAConfig, need_drpb: bool):
    from . import _na_cpu

    acc = _acc(q.dtype)
    delta = (dout.to(acc) * out.to(acc)).sum(-1)
    if dlse is not None:
        delta = delta - dlse.to(acc)
    dq, dk, dv, drpb = _na_cpu.backward(dout, q, k, v, rpb, lse, delta, cfg, need_drpb)
    dak = dav = None
    if ak is not None:
        dqx, dak, dav = _extra_backward(dout, q, ak, av, lse, delta, cfg.scale)
        dq = dq + dqx
    return dq, dk, dv, drpb, dak, dav


def _cpu_check(q, k, v, rpb, cfg: NAConfig, ak=None, av=None) -> str | None:
    from ._na_cpu import unsupported

    return unsupported(q, k, v, rpb, cfg)


def _auto_triton() -> bool:
    # The fused kernel passes the interpreter tests and compiles for sm_90, but has not yet been executed on
    # a GPU; until it has, `auto` keeps CUDA tensors on the torch path unless the user opts in.
    return os.environ.get("VISIONATTN_NA_AUTO_TRITON", "0") == "1"


# ---------------------------------------------------------------------------------------------------
# custom ops: visionattn::na_forward / visionattn::na_backward
#
# backend "torch" (any device), "triton" (CUDA / interpreter), "cpu" (the compiled CPU kernel) or "auto" (triton
# on CUDA when opted in and the kernel runs the arguments, cpu on CPU when built, else torch). `aux` is what the
# backward needs: the softmax probabilities of the torch path ([B, kv_heads, tiles, g * T, R + N_extra], only
# when need_aux), the base-2 logsumexp of the fused kernel or the natural one of the CPU kernel ([B, *S, heads]).


def _op_impl(backend: str, q, k, v, rpb, cfg: NAConfig, ak, av) -> str:
    if backend == "auto":
        if q.is_cuda:
            ok = _auto_triton() and _triton_check(q, k, v, rpb, cfg, ak, av) is None
            return "triton" if ok else "torch"
        return "cpu" if _cpu_check(q, k, v, rpb, cfg, ak, av) is None else "torch"
    if backend not in ("torch", "triton", "cpu"):
        raise ValueError(f"backend must be one of ('auto', 'torch', 'triton', 'cpu') for visionattn::na_forward, "
                         f"got {backend!r}")
    return backend


def _op_cfg(kernel_size, stride, dilation, is_causal, scale) -> NAConfig:
    return NAConfig(tuple(int(x) for x in kernel_size), tuple(int(x) for x in stride),
                    tuple(int(x) for x in dilation), tuple(bool(x) for x in is_causal), float(scale))


@torch.library.custom_op("visionattn::na_forward", mutates_args=())
def na_forward(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, additional_keys: Tensor | None,
               additional_values: Tensor | None, kernel_size: list[int], stride: list[int], dilation: list[int],
               is_causal: list[bool], scale: float, backend: str, need_lse: bool,
               need_aux: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Neighborhood attention (arguments validated as by ``na1d/2d/3d``): ``(out, lse, aux)``; ``lse`` (natural)
    is empty unless ``need_lse``, ``aux`` is saved for the backward (see above)."""
    cfg = _op_cfg(kernel_size, stride, dilation, is_causal, scale)
    ak, av = additional_keys, additional_values
    impl = _op_impl(backend, query, key, value, rpb, cfg, ak, av)
    empty = query.new_empty(0, dtype=_acc(query.dtype))
    if impl == "triton":
        out, lse2 = _triton_forward(query, key, value, rpb, cfg, ak, av)
        return out.contiguous(), (lse2 * _LN2 if need_lse else empty), lse2.contiguous()
    if impl == "cpu":
        out, lse = _cpu_forward(query, key, value, rpb, cfg, ak, av)
        return out.contiguous(), (lse.clone() if need_lse else empty), lse.contiguous()
    out, lse, p = _na_torch_forward(query, key, value, rpb, cfg, ak, av, need_lse, need_aux)
    # fresh contiguous outputs, as the fake implementation promises
    return out.contiguous(), (lse.contiguous() if need_lse else empty), (p if need_aux else query.new_empty(0))


@na_forward.register_fake
def _na_forward_fake(query, key, value, rpb, additional_keys, additional_values, kernel_size, stride, dilation,
                     is_causal, scale, backend, need_lse, need_aux):
    cfg = _op_cfg(kernel_size, stride, dilation, is_causal, scale)
    impl = _op_impl(backend, query, key, value, rpb, cfg, additional_keys, additional_values)
    acc = _acc(query.dtype)
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    lse = query.new_empty(query.shape[:-1] if need_lse else (0,), dtype=acc)
    if impl in ("triton", "cpu"):
        aux = query.new_empty(query.shape[:-1], dtype=acc)
    elif need_aux:
        n = query.dim() - 3
        spatial = tuple(int(x) for x in query.shape[1:1 + n])
        NT, T, R = _tile_shape(spatial, *cfg[:4], _TILE[n])
        h, hk = query.shape[-2], key.shape[-2]
        extra = 0 if additional_keys is None else additional_keys.shape[1]
        aux = query.new_empty(query.shape[0], hk, NT, h // hk * T, R + extra)
    else:
        aux = query.new_empty(0)
    return out, lse, aux


@torch.library.custom_op("visionattn::na_backward", mutates_args=())
def na_backward(grad_out: Tensor, grad_lse: Tensor | None, query: Tensor, key: Tensor, value: Tensor,
                rpb: Tensor | None, additional_keys: Tensor | None, additional_values: Tensor | None,
                out: Tensor, aux: Tensor, kernel_size: list[int], stride: list[int], dilation: list[int],
                is_causal: list[bool], scale: float, backend: str,
                need_rpb_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``na_forward`` (backend "torch" or "triton", as the forward ran): (d query, d key, d value,
    d rpb, d additional_keys, d additional_values); absent ones are empty."""
    cfg = _op_cfg(kernel_size, stride, dilation, is_causal, scale)
    ak, av = additional_keys, additional_values
    args = (grad_out, grad_lse, query, key, value, rpb, ak, av, out, aux, cfg, need_rpb_grad and rpb is not None)
    impl = _op_impl(backend, query, key, value, rpb, cfg, ak, av)
    if impl == "triton":
        grads = _triton_backward(*args)
    elif impl == "cpu":
        grads = _cpu_backward(*args)
    else:
        grads = _na_torch_backward(*args)
    return tuple(query.new_empty(0) if g is None else g.contiguous() for g in grads)


@na_backward.register_fake
def _na_backward_fake(grad_out, grad_lse, query, key, value, rpb, additional_keys, additional_values, out, aux,
                      kernel_size, stride, dilation, is_causal, scale, backend, need_rpb_grad):
    like = lambda t: query.new_empty(0) if t is None else torch.empty_like(t)  # noqa: E731
    return (like(query), like(key), like(value), like(rpb if need_rpb_grad else None), like(additional_keys),
            like(additional_values))


def _na_setup_context(ctx, inputs, output):
    q, k, v, rpb, ak, av, ks, ss, ds, cs, scale, backend, need_lse, need_aux = inputs
    _, _, aux = output
    cfg = _op_cfg(ks, ss, ds, cs, scale)
    ctx.save_for_backward(q, k, v, rpb, ak, av, output[0], aux)
    ctx.meta = (list(ks), list(ss), list(ds), list(cs), float(scale), _op_impl(backend, q, k, v, rpb, cfg, ak, av),
                need_lse)


def _na_backward_rule(ctx, grad_out, grad_lse, grad_aux):
    q, k, v, rpb, ak, av, out, aux = ctx.saved_tensors
    ks, ss, ds, cs, scale, impl, need_lse = ctx.meta
    need_drpb = rpb is not None and ctx.needs_input_grad[3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, drpb, dak, dav = torch.ops.visionattn.na_backward(
        grad_out, grad_lse if need_lse else None, q, k, v, rpb, ak, av, out, aux, ks, ss, ds, cs, scale, impl,
        need_drpb)
    return (dq, dk, dv, drpb if need_drpb else None, None if ak is None else dak, None if av is None else dav,
            None, None, None, None, None, None, None, None)


na_forward.register_autograd(_na_backward_rule, setup_context=_na_setup_context)

register_autocast(na_forward, "na_forward")


@register_flop_formula(torch.ops.visionattn.na_forward)
def _na_forward_flops(q, k, v, rpb, ak, av, kernel_size, *args, out_shape=None, **kwargs) -> int:
    """FLOPs NA needs (torch.utils.flop_counter; the op is opaque to it): q.k and p.v multiply-adds over each
    query's full window and the extra keys."""
    keys = math.prod(kernel_size) + (0 if ak is None else ak[1])
    return 2 * math.prod(q[:-1]) * keys * (q[-1] + v[-1])


@register_flop_formula(torch.ops.visionattn.na_backward)
def _na_backward_flops(dout, dlse, q, k, v, rpb, ak, av, out, aux, kernel_size, *args, out_shape=None,
                       **kwargs) -> int:
    """Twice the forward's (dP, dQ, dK, dV)."""
    return 2 * _na_forward_flops(q, k, v, rpb, ak, av, kernel_size)


# ---------------------------------------------------------------------------------------------------
# dispatch


def _run_op(impl: str, q, k, v, rpb, cfg: NAConfig, ak, av, need_lse: bool):
    need_aux = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, rpb, ak, av))
    out, lse, _ = torch.ops.visionattn.na_forward(q, k, v, rpb, ak, av, list(cfg.kernel_size), list(cfg.stride),
                                                  list(cfg.dilation), list(cfg.is_causal), cfg.scale, impl,
                                                  need_lse, need_aux)
    return out, (lse if need_lse else None)


def _run_torch(q, k, v, rpb, cfg: NAConfig, ak=None, av=None, need_lse=False):
    if exporting():  # ONNX / jit.trace: plain torch ops, the index tensors become graph constants
        return _na_torch_forward(q, k, v, rpb, cfg, ak, av, need_lse)[:2]
    return _run_op("torch", q, k, v, rpb, cfg, ak, av, need_lse)


def _run_triton(q, k, v, rpb, cfg: NAConfig, ak=None, av=None, need_lse=False):
    return _run_op("triton", q, k, v, rpb, cfg, ak, av, need_lse)


def _run_cpu(q, k, v, rpb, cfg: NAConfig, ak=None, av=None, need_lse=False):
    return _run_op("cpu", q, k, v, rpb, cfg, ak, av, need_lse)


def _na_natten(q, k, v, rpb, cfg: NAConfig, ak=None, av=None, need_lse=False):
    import natten

    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[q.dim() - 3]
    res = fn(q, k, v, kernel_size=cfg.kernel_size, stride=cfg.stride, dilation=cfg.dilation,
             is_causal=cfg.is_causal, scale=cfg.scale, additional_keys=ak, additional_values=av,
             return_lse=need_lse)
    return res if need_lse else (res, None)


def _natten_check(q, k, v, rpb, cfg: NAConfig, ak=None, av=None) -> str | None:
    if rpb is not None:
        return "rpb is not supported by NATTEN >= 0.20 (no positional bias); use backend='torch' or 'triton'"
    if any(kk < 2 for kk in cfg.kernel_size):
        return f"kernel_size must be >= 2 for NATTEN, got {cfg.kernel_size}"
    try:
        import natten
    except ImportError:
        return "needs natten installed"
    if getattr(natten, "__visionattn_compat__", False):
        # visionattn.compat's NATTEN 0.17 emulation sits in sys.modules: it is these kernels, not NATTEN >= 0.20
        return "needs NATTEN >= 0.20, but 'natten' is visionattn.compat's 0.17 emulation"
    return None


def _always(*args) -> None:
    return None


_BACKENDS = {
    "reference": Backend(_na_reference, _always),
    "torch": Backend(_run_torch, _always),
    "gather": Backend(_na_gather, _always),
    "triton": Backend(_run_triton, _triton_check),
    "cpu": Backend(_run_cpu, _cpu_check),
    "natten": Backend(_na_natten, _natten_check),
}
BACKENDS = ("auto", *_BACKENDS)


def _auto_order(q: Tensor) -> tuple:
    if q.is_cuda and _auto_triton() and not exporting():
        return ("triton", "torch")
    if q.device.type == "cpu":
        return ("cpu", "torch")  # the compiled kernel where it is built (its check says why not otherwise)
    return ("torch",)


def _na(n, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
        additional_values, return_lse, backend):
    cfg = _check_args(n, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
                      additional_values)
    if not isinstance(return_lse, bool):
        raise ValueError(f"return_lse must be a bool, got {return_lse!r}")
    args = (query, key, value, rpb, cfg, additional_keys, additional_values)
    name = choose_backend(backend, _BACKENDS, _auto_order(query), *args)
    out, lse = _BACKENDS[name].run(*args, need_lse=return_lse)
    return (out, lse) if return_lse else out


_DOC = """{n}-D neighborhood attention on ``{layout}``; rpb ``{rpb}``.

    Args (NATTEN >= 0.20 names; everything after ``kernel_size`` keyword-only):
        query: ``{layout}``; key, value: same spatial size, ``kv_heads`` dividing ``heads`` (GQA / MQA),
            value with its own head_dim.
        kernel_size, stride, dilation: int or per-axis tuple; is_causal: bool or per-axis tuple.
        scale: logit scale (default head_dim ** -0.5); rpb: relative positional bias table (NATTEN <= 0.17).
        additional_keys, additional_values: ``[B, N_extra, kv_heads, head_dim]`` tokens every query attends to
            besides its window (one softmax over both).
        return_lse: also return the natural logsumexp ``[B, *spatial, heads]`` (float32; float64 for float64).
        backend: one of ``BACKENDS``.
    Returns: ``[B, *spatial, heads, value head_dim]`` (and the logsumexp).
    """


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, return_lse: bool = False, backend: str = "auto"):
    return _na(1, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
               additional_values, return_lse, backend)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, return_lse: bool = False, backend: str = "auto"):
    return _na(2, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
               additional_values, return_lse, backend)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, return_lse: bool = False, backend: str = "auto"):
    return _na(3, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, additional_keys,
               additional_values, return_lse, backend)


na1d.__doc__ = _DOC.format(n=1, layout="[B, L, heads, head_dim]", rpb="[heads, 2k-1]")
na2d.__doc__ = _DOC.format(n=2, layout="[B, H, W, heads, head_dim]", rpb="[heads, 2kh-1, 2kw-1]")
na3d.__doc__ = _DOC.format(n=3, layout="[B, X, Y, Z, heads, head_dim]", rpb="[heads, 2kx-1, 2ky-1, 2kz-1]")


# ---------------------------------------------------------------------------------------------------
# split calls: logits (QK) and AV, NATTEN's neighbour order


def _rank_of(x, name: str) -> int:
    n = x.dim() - 3 if isinstance(x, Tensor) else 0
    if n not in (1, 2, 3):
        raise ValueError(f"{name} must have rank 4, 5 or 6, got shape {tuple(getattr(x, 'shape', ()))}")
    return n


def _logits(n: int | None, query: Tensor, key: Tensor, kernel_size, stride, dilation, is_causal, scale,
            rpb) -> Tensor:
    n = _rank_of(query, "query") if n is None else n
    cfg = _check_args(n, query, key, None, kernel_size, stride, dilation, is_causal, scale, rpb)
    logits, _ = _gather_logits(query, key, rpb, cfg)
    return logits.movedim(-2, 1)


def na_logits(query: Tensor, key: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
              scale: float | None = None, rpb: Tensor | None = None) -> Tensor:
    """Pre-softmax logits (query * scale) . key + rpb, ``[B, heads, *spatial, prod(kernel_size)]`` (any rank).

    Neighbours in row-major window order (first axis slowest), as NATTEN's ``natten2dqkrpb``;
    keys outside a causal window are -inf.
    """
    return _logits(None, query, key, kernel_size, stride, dilation, is_causal, scale, rpb)


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


def _av(n: int, attn: Tensor, value: Tensor, kernel_size, stride, dilation, is_causal) -> Tensor:
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
    cfg = _check_args(n, probe, probe, None, kernel_size, stride, dilation, is_causal, 1.0, None)
    if attn.shape[-1] != math.prod(cfg.kernel_size):
        raise ValueError(f"attn must hold prod(kernel_size) = {math.prod(cfg.kernel_size)} weights per query, got "
                         f"{attn.shape[-1]}")
    index = _gather_index(spatial, *cfg[:4], str(value.device))
    p = attn.movedim(1, -2)  # [B, *S, h, K]
    if index.valid is not None:  # slots before a causal window's start hold no key
        p = p.masked_fill(~index.valid.unsqueeze(-2), 0)
    return _window_av(p, value, index)


def na1d_av(attn: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False) -> Tensor:
    """AV half of 1-D NA: weights ``[B, heads, L, k]`` (``na1d_logits`` order) x value windows -> ``[B, L, heads,
    Dv]``; ``na1d_av(softmax(na1d_logits(q, k, ks)), v, ks)`` equals ``na1d(q, k, v, ks)``."""
    return _av(1, attn, value, kernel_size, stride, dilation, is_causal)


def na2d_av(attn: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False) -> Tensor:
    """AV half of 2-D NA: weights ``[B, heads, H, W, kh * kw]`` x value windows -> ``[B, H, W, heads, Dv]``."""
    return _av(2, attn, value, kernel_size, stride, dilation, is_causal)


def na3d_av(attn: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False) -> Tensor:
    """AV half of 3-D NA: weights ``[B, heads, X, Y, Z, prod(k)]`` x value windows -> ``[B, X, Y, Z, heads, Dv]``."""
    return _av(3, attn, value, kernel_size, stride, dilation, is_causal)
