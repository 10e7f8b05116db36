"""Neighborhood attention (NA / DiNA / GNA), 1-D, 2-D and 3-D, with relative positional bias.

Functional API in NATTEN's style, heads-last layout ``[B, *spatial, heads, head_dim]``::

    out = na2d(q, k, v, 7, dilation=2, rpb=table)

Signature and argument names are NATTEN >= 0.20's (everything after ``kernel_size`` keyword-only), plus ``rpb``.

Semantics are NATTEN's (see ``_na_index``): windows shifted inward at borders, dilation groups,
stride (GNA) and per-axis causal masks. ``scale`` (default head_dim**-0.5) multiplies q before the dot
product; the RPB table (``[heads, 2k-1]``, ``[heads, 2k-1, 2k-1]``, ...) is added unscaled at index
(key - query) / dilation + k - 1, as in NATTEN <= 0.17 (the NAT/DiNAT checkpoints).

Backends:
    ``reference``: dense attention with an explicit [N, N] mask and bias (the test oracle; tiny sizes).
    ``torch``: queries in small tiles, each attending densely to the key region its windows cover, with a
        cached mask/RPB index (memory O(N * region), plain gather/matmul/softmax: autograd and ONNX).
    ``gather``: every query's k^d keys gathered explicitly (unfold-style, memory O(N k^d D)).
    ``triton``: the fused kernel of ``na_triton`` (CUDA, or the Triton interpreter).
    ``natten``: NATTEN's own ops when installed (no RPB).
    ``auto``: torch on CPU and whenever compiling, tracing or exporting; on CUDA torch too until the fused
        kernel has been validated on a GPU (``VISIONATTN_NA_AUTO_TRITON=1`` selects triton there).
"""
from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._common import Backend, capturing, check_int, check_scale, choose_backend, to_tuple
from ._na_index import axis_dense, axis_tiles, axis_windows

__all__ = ["na1d", "na2d", "na3d", "na_logits", "na1d_logits", "na2d_logits", "na3d_logits", "BACKENDS",
           "NAConfig"]

# queries per tile along each axis (measured on CPU for NAT-like shapes: small tiles keep the work in cache)
_TILE = {1: (32,), 2: (4, 8), 3: (2, 2, 8)}
_CACHE: dict = {}
_CACHE_MAX = 256


class NAConfig(NamedTuple):
    """Validated per-axis arguments of one NA call."""

    kernel_size: tuple
    stride: tuple
    dilation: tuple
    is_causal: tuple
    scale: float


def _check_tensors(n: int, q: Tensor, k: Tensor, v: Tensor | None):
    named = (("query", q), ("key", k)) + ((("value", v),) if v is not None else ())
    for name, t in named:
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != n + 3:
            raise ValueError(f"{name} must have rank {n + 3} ([B, {n} spatial axes, heads, head_dim]), got shape "
                             f"{tuple(t.shape)}")
    v = k if v is None else v
    if k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"query, key, value shapes must match (value may differ in head_dim), got query "
                         f"{tuple(q.shape)}, key {tuple(k.shape)}, value {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"query, key, value dtypes must match, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"query, key, value must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"query, key, value devices must match, got {q.device}, {k.device}, {v.device}")
    if q.shape[-2] < 1 or q.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(f"heads and head_dim must be >= 1, got query {tuple(q.shape)}, value {tuple(v.shape)} "
                         "([B, *spatial, heads, head_dim])")


def _check_args(n: int, q: Tensor, k: Tensor, v: Tensor | None, kernel_size, stride, dilation, is_causal, scale,
                rpb) -> NAConfig:
    _check_tensors(n, q, k, v)
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
            got = tuple(rpb.shape) if isinstance(rpb, Tensor) else type(rpb).__name__
            raise ValueError(f"rpb must have shape [heads, 2k-1, ...] = {list(want)}, got {got}")
        if rpb.dtype != q.dtype or rpb.device != q.device:
            raise ValueError(f"rpb must have query's dtype and device ({q.dtype}, {q.device}), got {rpb.dtype}, "
                             f"{rpb.device}")
    return NAConfig(ks, ss, ds, cs, check_scale(scale, q.shape[-1] ** -0.5))


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


# ---------------------------------------------------------------------------------------------------
# reference: dense masked attention


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


def _na_reference(q, k, v, rpb, cfg: NAConfig):
    B, *spatial, h, D = q.shape
    N = math.prod(spatial)
    index = _dense_index(tuple(spatial), *cfg[:4], str(q.device))
    qf = (q * cfg.scale).reshape(B, N, h, D).transpose(1, 2)
    kf = k.reshape(B, N, h, D).transpose(1, 2)
    vf = v.reshape(B, N, h, v.shape[-1]).transpose(1, 2)
    logits = qf @ kf.transpose(-1, -2)
    if rpb is not None:
        logits = logits + rpb.reshape(h, -1)[:, index.rpb_idx]
    p = logits.masked_fill(~index.mask, float("-inf")).softmax(-1)
    if capturing() or bool(torch.isfinite(vf).all()):
        out = p @ vf
    else:  # 0 * inf outside the windows would spread a non-finite value to every query
        out = torch.where(index.mask[..., None], p[..., None] * vf[..., None, :, :], 0).sum(-2)
    return out.transpose(1, 2).reshape(B, *spatial, h, v.shape[-1])


# ---------------------------------------------------------------------------------------------------
# gather: explicit windows (also the logits function)


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
    return x.reshape(B, *x.shape[1:n + 1], h, math.prod(p.shape[1] for p in pos), D)


def _gather_logits(q, k, rpb, cfg: NAConfig):
    """[B, *S, h, K] pre-softmax logits (invalid causal slots -inf) and the window index."""
    spatial = tuple(q.shape[1:-2])
    index = _gather_index(spatial, *cfg[:4], str(q.device))
    kw = _gather_windows(k, index.pos)
    logits = ((q * cfg.scale).unsqueeze(-2) @ kw.transpose(-1, -2)).squeeze(-2)
    if rpb is not None:
        logits = logits + rpb.reshape(rpb.shape[0], -1)[:, index.rpb_idx].movedim(0, -2)
    if index.valid is not None:
        logits = logits.masked_fill(~index.valid.unsqueeze(-2), float("-inf"))
    return logits, index


def _na_gather(q, k, v, rpb, cfg: NAConfig):
    logits, index = _gather_logits(q, k, rpb, cfg)
    vw = _gather_windows(v, index.pos)
    return (logits.softmax(-1).unsqueeze(-2) @ vw).squeeze(-2)


# ---------------------------------------------------------------------------------------------------
# torch: tiles of queries, dense inside the key region of the tile


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
        ident_q = qflat.size == inv.size and bool(np.array_equal(qflat, np.arange(qflat.size)))
        return TileIndex(None if ident_q else _t(qflat, device), _t(kflat, device),
                         None if ident_q else _t(inv, device), _t(~mask, device), _t(idx, device), NT, T, R)

    return _cached(("tile", spatial, ks, ss, ds, cs, tile, device), build)


def _heads_first(x: Tensor, flat: Tensor | None) -> Tensor:
    """[B, *S, h, D] -> [B, h, len(flat), D]: one transpose copy, then one contiguous gather."""
    B, h, D = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.reshape(B, math.prod(x.shape[1:-2]), h, D).transpose(1, 2).contiguous()
    return x if flat is None else x.index_select(2, flat)


def _na_torch(q, k, v, rpb, cfg: NAConfig, tile=None):
    if not capturing() and not bool(torch.isfinite(v).all()):
        # a key region is shared by a tile of queries: 0 * inf would reach queries whose window misses the value
        return _na_gather(q, k, v, rpb, cfg)
    n = q.dim() - 3
    B, *spatial, h, D = q.shape
    spatial = tuple(spatial)
    tile = tuple(tile or _TILE[n])
    ix = _tile_index(spatial, *cfg[:4], tile, str(q.device))
    NT, T, R = ix.n_tiles, ix.tile, ix.region
    qt = _heads_first(q, ix.qflat).view(B, h, NT, T, D)
    # scale q before the dot product (as NATTEN); in place when the gather made a fresh tensor
    qt = qt * cfg.scale if ix.qflat is None else qt.mul_(cfg.scale)
    kt = _heads_first(k, ix.kflat).view(B, h, NT, R, D)
    vt = _heads_first(v, ix.kflat).view(B, h, NT, R, v.shape[-1])
    logits = qt @ kt.transpose(-1, -2)  # [B, h, NT, T, R]
    if rpb is not None:
        logits = logits.add_(rpb.reshape(h, -1)[:, ix.rpb_idx])
    # masked_fill, not an additive mask: a non-finite key stays out of the windows that do not contain it
    out = logits.masked_fill_(ix.outside, float("-inf")).softmax(-1) @ vt  # [B, h, NT, T, Dv]
    out = out.reshape(B, h, NT * T, v.shape[-1])
    if ix.inv is not None:
        out = out.index_select(2, ix.inv)
    return out.transpose(1, 2).reshape(B, *spatial, h, v.shape[-1])


# ---------------------------------------------------------------------------------------------------
# dispatch


def _na_triton(q, k, v, rpb, cfg: NAConfig):
    from .na_triton import na_triton

    return na_triton(q, k, v, rpb, cfg)


def _triton_check(q, k, v, rpb, cfg: NAConfig) -> str | None:
    try:
        from .na_triton import unsupported
    except ImportError as e:
        return f"needs triton ({e}); use backend='torch'"
    return unsupported(q, k, v, rpb, cfg)


def _na_natten(q, k, v, rpb, cfg: NAConfig):
    import natten

    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[q.dim() - 3]
    return fn(q, k, v, kernel_size=cfg.kernel_size, stride=cfg.stride, dilation=cfg.dilation,
              is_causal=cfg.is_causal, scale=cfg.scale)


def _natten_check(q, k, v, rpb, cfg: NAConfig) -> str | None:
    if rpb is not None:
        return "rpb is not supported by NATTEN >= 0.20 (no positional bias); use backend='torch' or 'triton'"
    if any(kk < 2 for kk in cfg.kernel_size):
        return f"kernel_size must be >= 2 for NATTEN, got {cfg.kernel_size}"
    try:
        import natten  # noqa: F401
    except ImportError:
        return "needs natten installed"
    return None


def _always(*args) -> None:
    return None


_BACKENDS = {
    "reference": Backend(_na_reference, _always),
    "torch": Backend(_na_torch, _always),
    "gather": Backend(_na_gather, _always),
    "triton": Backend(_na_triton, _triton_check),
    "natten": Backend(_na_natten, _natten_check),
}
BACKENDS = ("auto", *_BACKENDS)


def _auto_triton() -> bool:
    # The fused kernel passes the interpreter tests and compiles for sm_90, but has not yet been executed on
    # a GPU; until it has, `auto` keeps CUDA tensors on the torch path unless the user opts in.
    return os.environ.get("VISIONATTN_NA_AUTO_TRITON", "0") == "1"


def _auto_order(q: Tensor) -> tuple:
    if q.is_cuda and not capturing() and _auto_triton():
        return ("triton", "torch")
    return ("torch",)


def _na(n, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, backend):
    cfg = _check_args(n, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb)
    args = (query, key, value, rpb, cfg)
    name = choose_backend(backend, _BACKENDS, _auto_order(query), *args)
    return _BACKENDS[name].run(*args)


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, backend: str = "auto") -> Tensor:
    """1-D neighborhood attention on ``[B, L, heads, head_dim]``; rpb ``[heads, 2k-1]``."""
    return _na(1, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, backend)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, backend: str = "auto") -> Tensor:
    """2-D neighborhood attention on ``[B, H, W, heads, head_dim]``; rpb ``[heads, 2kh-1, 2kw-1]``."""
    return _na(2, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, backend)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size, *, stride=1, dilation=1, is_causal=False,
         scale: float | None = None, rpb: Tensor | None = None, backend: str = "auto") -> Tensor:
    """3-D neighborhood attention on ``[B, X, Y, Z, heads, head_dim]``; rpb ``[heads, 2kx-1, 2ky-1, 2kz-1]``."""
    return _na(3, query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, backend)


def _logits(n: int | None, query: Tensor, key: Tensor, kernel_size, stride, dilation, is_causal, scale,
            rpb) -> Tensor:
    if n is None:
        n = query.dim() - 3 if isinstance(query, Tensor) else 0
        if n not in (1, 2, 3):
            raise ValueError(f"query must have rank 4, 5 or 6 ([B, *spatial, heads, head_dim]), got shape "
                             f"{tuple(getattr(query, 'shape', ()))}")
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
