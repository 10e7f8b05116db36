"""Neighborhood attention (NA / DiNA / GNA), 1-D, 2-D and 3-D, with relative positional bias.

Functional API in NATTEN's style, heads-last layout ``[B, *spatial, heads, head_dim]``::

    out = na2d(q, k, v, kernel_size=7, dilation=2, rpb=table)

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
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ._na_index import axis_dense, axis_tiles, axis_windows

__all__ = ["na1d", "na2d", "na3d", "na_logits", "na1d_logits", "na2d_logits", "na3d_logits", "BACKENDS"]

BACKENDS = ("auto", "reference", "torch", "gather", "triton", "natten")
# queries per tile along each axis (measured on CPU for NAT-like shapes: small tiles keep the work in cache)
_TILE = {1: (32,), 2: (4, 8), 3: (2, 2, 8)}
_CACHE: dict = {}
_CACHE_MAX = 256


def _tuple(x, n: int, name: str) -> tuple:
    if isinstance(x, bool) if name == "is_causal" else (isinstance(x, int) and not isinstance(x, bool)):
        return (x,) * n
    if isinstance(x, Sequence) and len(x) == n:
        return tuple(x)
    raise ValueError(f"{name} must be an int or a tuple of {n} ints (one per spatial axis), got {x!r}")


def _check_args(n: int, q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation, stride, is_causal, rpb, scale,
                backend: str):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor")
        if t.dim() != n + 3:
            raise ValueError(f"{name} must have rank {n + 3} ([B, {n} spatial axes, heads, head_dim]), got shape "
                             f"{tuple(t.shape)}")
    if k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"q, k, v shapes must match (v may differ in head_dim), got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes must match, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices must match, got {q.device}, {k.device}, {v.device}")
    ks = _tuple(kernel_size, n, "kernel_size")
    ds = _tuple(dilation, n, "dilation")
    ss = _tuple(stride, n, "stride")
    cs = _tuple(is_causal, n, "is_causal")
    spatial = tuple(q.shape[1:1 + n])
    for a in range(n):
        kk, dd, s = ks[a], ds[a], ss[a]
        if not isinstance(kk, int) or isinstance(kk, bool) or kk < 1:
            raise ValueError(f"kernel_size must be an int >= 1 on every axis, got {ks}")
        if not isinstance(dd, int) or isinstance(dd, bool) or dd < 1:
            raise ValueError(f"dilation must be an int >= 1 on every axis, got {ds}")
        if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= kk:
            raise ValueError(f"stride must be an int in [1, kernel_size] on every axis, got stride {ss}, "
                             f"kernel_size {ks}")
        if kk * dd > spatial[a]:
            raise ValueError(f"kernel_size * dilation must not exceed the input size on every axis, got "
                             f"kernel_size {ks}, dilation {ds}, input spatial size {spatial}")
        if not isinstance(cs[a], bool):
            raise ValueError(f"is_causal must be a bool or a tuple of {n} bools, got {is_causal!r}")
    if rpb is not None:
        want = (q.shape[-2], *(2 * kk - 1 for kk in ks))
        if not isinstance(rpb, Tensor) or tuple(rpb.shape) != want:
            got = tuple(rpb.shape) if isinstance(rpb, Tensor) else type(rpb).__name__
            raise ValueError(f"rpb must have shape [heads, 2k-1, ...] = {list(want)}, got {got}")
        if rpb.dtype != q.dtype or rpb.device != q.device:
            raise ValueError(f"rpb must have q's dtype and device ({q.dtype}, {q.device}), got {rpb.dtype}, "
                             f"{rpb.device}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    return ks, ds, ss, cs, float(scale)


def _exporting() -> bool:
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _cached(key, build):
    """Index tensors per configuration; never cached while tracing (they must be graph constants)."""
    if _exporting():
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


# ---------------------------------------------------------------------------------------------------
# reference: dense masked attention


@torch.compiler.assume_constant_result
def _dense_index(spatial, ks, ds, ss, cs, device: str):
    def build():
        n = len(spatial)
        masks, rels = zip(*(axis_dense(spatial[a], ks[a], ds[a], ss[a], cs[a]) for a in range(n)))
        m = _outer(list(masks), n, 2)
        mask = m[0]
        for x in m[1:]:
            mask = mask & x
        st = _rpb_strides(ks)
        r = _outer([rel * st[a] for a, rel in enumerate(rels)], n, 2)
        idx = r[0]
        for x in r[1:]:
            idx = idx + x
        N = math.prod(spatial)
        return _t(mask.reshape(N, N), device), _t(idx.reshape(N, N), device)

    return _cached(("dense", spatial, ks, ds, ss, cs, device), build)


def _na_reference(q, k, v, ks, ds, ss, cs, rpb, scale):
    B, *spatial, h, D = q.shape
    N = math.prod(spatial)
    mask, idx = _dense_index(tuple(spatial), ks, ds, ss, cs, str(q.device))
    qf = (q * scale).reshape(B, N, h, D).transpose(1, 2)
    kf = k.reshape(B, N, h, D).transpose(1, 2)
    vf = v.reshape(B, N, h, v.shape[-1]).transpose(1, 2)
    logits = qf @ kf.transpose(-1, -2)
    if rpb is not None:
        logits = logits + rpb.reshape(h, -1)[:, idx]
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(-1) @ vf
    return out.transpose(1, 2).reshape(B, *spatial, h, v.shape[-1])


# ---------------------------------------------------------------------------------------------------
# gather: explicit windows (also the logits function)


@torch.compiler.assume_constant_result
def _gather_index(spatial, ks, ds, ss, cs, device: str):
    def build():
        n = len(spatial)
        wins = [axis_windows(spatial[a], ks[a], ds[a], ss[a], cs[a]) for a in range(n)]
        pos = tuple(_t(w[0], device) for w in wins)
        valid = None
        if any(cs):
            v = _outer([w[1] for w in wins], n, 2)
            valid = v[0]
            for x in v[1:]:
                valid = valid & x
            valid = _t(valid.reshape(*spatial, -1), device)
        st = _rpb_strides(ks)
        r = _outer([w[2] * st[a] for a, w in enumerate(wins)], n, 2)
        idx = r[0]
        for x in r[1:]:
            idx = idx + x
        return pos, valid, _t(idx.reshape(*spatial, -1), device)

    return _cached(("gather", spatial, ks, ds, ss, cs, device), build)


def _gather_windows(x: Tensor, pos: list[Tensor]) -> Tensor:
    """[B, *S, h, D] -> [B, *S, h, K, D] with K = prod(k_a), window order row-major over the axes."""
    n = len(pos)
    B = x.shape[0]
    for a, p in enumerate(pos):
        # axis a of the input sits at dim 1 + 2a once the previous axes have become (S_b, k_b) pairs
        dim = 1 + 2 * a
        x = x.index_select(dim, p.reshape(-1))
        x = x.reshape(*x.shape[:dim], p.shape[0], p.shape[1], *x.shape[dim + 1:])
    # x: [B, S1, k1, S2, k2, ..., h, D]
    perm = [0] + [1 + 2 * a for a in range(n)] + [2 * n + 1] + [2 + 2 * a for a in range(n)] + [2 * n + 2]
    x = x.permute(perm)
    return x.reshape(B, *x.shape[1:n + 2], -1, x.shape[-1])


def _gather_logits(q, k, ks, ds, ss, cs, rpb, scale):
    """[B, *S, h, K] pre-softmax logits (invalid causal slots -inf)."""
    spatial = tuple(q.shape[1:-2])
    pos, valid, idx = _gather_index(spatial, ks, ds, ss, cs, str(q.device))
    kw = _gather_windows(k, pos)
    logits = ((q * scale).unsqueeze(-2) @ kw.transpose(-1, -2)).squeeze(-2)
    if rpb is not None:
        logits = logits + rpb.reshape(rpb.shape[0], -1)[:, idx].movedim(0, -2)
    if valid is not None:
        logits = logits.masked_fill(~valid.unsqueeze(-2), float("-inf"))
    return logits, pos


def _na_gather(q, k, v, ks, ds, ss, cs, rpb, scale):
    logits, pos = _gather_logits(q, k, ks, ds, ss, cs, rpb, scale)
    vw = _gather_windows(v, pos)
    return (logits.softmax(-1).unsqueeze(-2) @ vw).squeeze(-2)


# ---------------------------------------------------------------------------------------------------
# torch: tiles of queries, dense inside the key region of the tile


def _flat(parts: list[np.ndarray], spatial) -> np.ndarray:
    """Per-axis positions [n_a, x_a] -> flat spatial index [prod(n_a) * prod(x_a)] (tile-major)."""
    n = len(parts)
    strides = [math.prod(spatial[a + 1:]) for a in range(n)]
    p = _outer([x * strides[a] for a, x in enumerate(parts)], n, 2)
    out = p[0]
    for x in p[1:]:
        out = out + x
    return out.reshape(-1)


@torch.compiler.assume_constant_result  # dynamo runs it at trace time: the indices become graph constants
def _tile_index(spatial, ks, ds, ss, cs, tile, device: str):
    def build():
        n = len(spatial)
        tl = [axis_tiles(spatial[a], ks[a], ds[a], ss[a], cs[a], tile[a]) for a in range(n)]
        nt = [x[0].shape[0] for x in tl]
        t = [x[5] for x in tl]
        rr = [x[6] for x in tl]
        NT, T, R = math.prod(nt), math.prod(t), math.prod(rr)
        qflat = _flat([x[0] for x in tl], spatial)
        kflat = _flat([x[1] for x in tl], spatial)
        # where each position's result sits in the [NT * T] tile-major order
        tile_of = _outer([x[4] // x[5] * math.prod(nt[a + 1:]) for a, x in enumerate(tl)], n, 1)
        slot_of = _outer([x[4] % x[5] * math.prod(t[a + 1:]) for a, x in enumerate(tl)], n, 1)
        inv = sum(tile_of[1:], tile_of[0]) * T + sum(slot_of[1:], slot_of[0])
        inv = inv.reshape(-1)
        m = _outer([x[2] for x in tl], n, 3)
        mask = m[0]
        for x in m[1:]:
            mask = mask & x
        st = _rpb_strides(ks)
        r = _outer([x[3] * st[a] for a, x in enumerate(tl)], n, 3)
        idx = r[0]
        for x in r[1:]:
            idx = idx + x
        mask = mask.reshape(NT, T, R)
        idx = idx.reshape(NT, T, R)
        bias = np.where(mask, 0.0, -np.inf).astype(np.float32)
        ident_q = qflat.size == inv.size and bool(np.array_equal(qflat, np.arange(qflat.size)))
        # (qflat, kflat, inv, outside, rpb idx, additive mask, NT, T, R)
        return (None if ident_q else _t(qflat, device), _t(kflat, device), None if ident_q else _t(inv, device),
                _t(~mask, device), _t(idx, device), _t(bias, device), NT, T, R)

    return _cached(("tile", spatial, ks, ds, ss, cs, tile, device), build)


def _heads_first(x: Tensor, flat: Tensor | None) -> Tensor:
    """[B, *S, h, D] -> [B, h, len(flat), D]: one transpose copy, then one contiguous gather."""
    B, h, D = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.reshape(B, -1, h, D).transpose(1, 2).contiguous()
    return x if flat is None else x.index_select(2, flat)


def _na_torch(q, k, v, ks, ds, ss, cs, rpb, scale, tile=None):
    n = q.dim() - 3
    B, *spatial, h, D = q.shape
    spatial = tuple(spatial)
    tile = tuple(tile or _TILE[n])
    qflat, kflat, inv, outside, idx, mask_bias, NT, T, R = _tile_index(spatial, ks, ds, ss, cs, tile, str(q.device))
    qt = _heads_first(q, qflat).view(B, h, NT, T, D)
    # scale q before the dot product (as NATTEN); in place when the gather made a fresh tensor
    qt = qt * scale if qflat is None else qt.mul_(scale)
    kt = _heads_first(k, kflat).view(B, h, NT, R, D)
    vt = _heads_first(v, kflat).view(B, h, NT, R, v.shape[-1])
    logits = qt @ kt.transpose(-1, -2)  # [B, h, NT, T, R]
    if rpb is not None:
        bias = rpb.reshape(h, -1)[:, idx].masked_fill(outside, float("-inf"))
    else:
        bias = mask_bias.to(q.dtype)
    out = logits.add_(bias).softmax(-1) @ vt  # [B, h, NT, T, Dv]
    out = out.reshape(B, h, NT * T, -1)
    if inv is not None:
        out = out.index_select(2, inv)
    return out.transpose(1, 2).reshape(B, *spatial, h, -1)


# ---------------------------------------------------------------------------------------------------
# dispatch


class _TritonUnsupported(ValueError):
    pass


def _na_triton(q, k, v, ks, ds, ss, cs, rpb, scale):
    try:
        from .na_triton import na_triton
    except ImportError as e:
        raise _TritonUnsupported(f"backend='triton' is not available ({e}); use backend='torch'") from e
    try:
        return na_triton(q, k, v, ks, ds, ss, cs, rpb, scale)
    except NotImplementedError as e:
        raise _TritonUnsupported(f"backend='triton' does not support this configuration: {e}") from e


def _na_natten(q, k, v, ks, ds, ss, cs, rpb, scale):
    if rpb is not None:
        raise ValueError("rpb is not supported by backend='natten' (NATTEN >= 0.20 has no positional bias); "
                         "use backend='torch' or 'triton'")
    try:
        import natten
    except ImportError as e:
        raise ValueError("backend='natten' needs natten installed") from e
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[q.dim() - 3]
    if any(kk < 2 for kk in ks):
        raise ValueError(f"kernel_size must be >= 2 for backend='natten', got {ks}")
    return fn(q, k, v, kernel_size=ks, stride=ss, dilation=ds, is_causal=cs, scale=scale)


_IMPLS = {"reference": _na_reference, "torch": _na_torch, "gather": _na_gather, "triton": _na_triton,
          "natten": _na_natten}


def _auto_triton() -> bool:
    # The fused kernel passes the interpreter tests and compiles for sm_90, but has not yet been executed on
    # a GPU; until it has, `auto` keeps CUDA tensors on the torch path unless the user opts in.
    return os.environ.get("VISIONATTN_NA_AUTO_TRITON", "0") == "1"


def _resolve(backend: str, q: Tensor) -> str:
    if backend != "auto":
        return backend
    if q.is_cuda and not _exporting() and _auto_triton():
        return "triton"
    return "torch"


def _na(n, q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, backend):
    ks, ds, ss, cs, scale = _check_args(n, q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, backend)
    impl = _resolve(backend, q)
    if backend == "auto" and impl == "triton":
        try:
            return _na_triton(q, k, v, ks, ds, ss, cs, rpb, scale)
        except _TritonUnsupported:  # a configuration the kernel does not cover: the torch path covers all
            impl = "torch"
    return _IMPLS[impl](q, k, v, ks, ds, ss, cs, rpb, scale)


def na1d(q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation=1, stride=1, is_causal=False,
         rpb: Tensor | None = None, scale: float | None = None, backend: str = "auto") -> Tensor:
    """1-D neighborhood attention on ``[B, L, heads, head_dim]``; rpb ``[heads, 2k-1]``."""
    return _na(1, q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, backend)


def na2d(q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation=1, stride=1, is_causal=False,
         rpb: Tensor | None = None, scale: float | None = None, backend: str = "auto") -> Tensor:
    """2-D neighborhood attention on ``[B, H, W, heads, head_dim]``; rpb ``[heads, 2kh-1, 2kw-1]``."""
    return _na(2, q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, backend)


def na3d(q: Tensor, k: Tensor, v: Tensor, kernel_size, dilation=1, stride=1, is_causal=False,
         rpb: Tensor | None = None, scale: float | None = None, backend: str = "auto") -> Tensor:
    """3-D neighborhood attention on ``[B, X, Y, Z, heads, head_dim]``; rpb ``[heads, 2kx-1, 2ky-1, 2kz-1]``."""
    return _na(3, q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, backend)


def na_logits(q: Tensor, k: Tensor, kernel_size, dilation=1, rpb: Tensor | None = None,
              scale: float | None = None, stride=1, is_causal=False) -> Tensor:
    """Pre-softmax logits (q * scale) . key + rpb, ``[B, heads, *spatial, prod(kernel_size)]``.

    Neighbours in row-major window order (first axis slowest), as NATTEN's ``natten2dqkrpb``;
    keys outside a causal window are -inf.
    """
    n = q.dim() - 3
    if n not in (1, 2, 3):
        raise ValueError(f"q must have rank 4, 5 or 6 ([B, *spatial, heads, head_dim]), got shape {tuple(q.shape)}")
    ks, ds, ss, cs, scale = _check_args(n, q, k, k, kernel_size, dilation, stride, is_causal, rpb, scale, "torch")
    logits, _ = _gather_logits(q, k, ks, ds, ss, cs, rpb, scale)
    return logits.movedim(-2, 1)


def na1d_logits(q, k, kernel_size, dilation=1, rpb=None, scale=None, stride=1, is_causal=False) -> Tensor:
    return na_logits(q, k, kernel_size, dilation, rpb, scale, stride, is_causal) if q.dim() == 4 else _rank(q, 1)


def na2d_logits(q, k, kernel_size, dilation=1, rpb=None, scale=None, stride=1, is_causal=False) -> Tensor:
    return na_logits(q, k, kernel_size, dilation, rpb, scale, stride, is_causal) if q.dim() == 5 else _rank(q, 2)


def na3d_logits(q, k, kernel_size, dilation=1, rpb=None, scale=None, stride=1, is_causal=False) -> Tensor:
    return na_logits(q, k, kernel_size, dilation, rpb, scale, stride, is_causal) if q.dim() == 6 else _rank(q, 3)


def _rank(q: Tensor, n: int):
    raise ValueError(f"q must have rank {n + 3} ([B, {n} spatial axes, heads, head_dim]), got shape {tuple(q.shape)}")
