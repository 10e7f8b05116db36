"""Neighborhood attention, the reference: dense attention over all N keys with an explicit [N, N] mask and bias.

The test oracle of every NA backend (``backend="reference"``; tiny sizes: memory O(N^2)). The mask is NATTEN's
mask predicate, written independently of the window / tile index code of the fast paths.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._common import acc_dtype, cached, capturing

__all__ = ["na_reference", "axis_dense", "dense_index"]


def axis_dense(L: int, k: int, d: int, s: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Dense [L, L] key mask and RPB index (key - query) / d + k - 1 of one axis, NATTEN's mask predicate."""
    q = np.arange(L)[:, None]
    kv = np.arange(L)[None, :]
    qg, kg = q // d, kv // d
    same_group = (q % d) == (kv % d)
    lg = (L - q % d + d - 1) // d
    if causal:
        leader = np.minimum((qg // s) * s + s - 1, lg - 1)
        mask = (kg <= qg) & (leader - kg < k) & same_group
    else:
        left, right = k // 2, k // 2 + (k % 2 - 1)
        leader = np.minimum((qg // s) * s + s // 2, lg - 1)
        center = np.maximum(np.minimum(leader, lg - 1 - right), left)
        w0, w1 = center - kg, kg - center
        mask = (((w0 >= 0) & (w0 <= left)) | ((w1 >= 0) & (w1 <= right))) & same_group
    rel = np.where(mask, kg - qg + k - 1, 0)
    return mask, rel


class DenseIndex(NamedTuple):
    mask: Tensor  # [N, N] key in the query's window
    rpb_idx: Tensor  # [N, N] flat RPB-table index


@torch.compiler.assume_constant_result
def dense_index(spatial, ks, ss, ds, cs, device: str) -> DenseIndex:
    """The n-D mask and flat RPB index: the product of the axes (row-major, first axis slowest)."""
    def build():
        mask, rel = np.ones((1, 1), dtype=bool), np.zeros((1, 1), dtype=np.int64)
        for a, L in enumerate(spatial):
            m, r = axis_dense(L, ks[a], ds[a], ss[a], cs[a])
            n = mask.shape[0] * L
            mask = (mask[:, None, :, None] & m[None, :, None, :]).reshape(n, n)
            rel = (rel[:, None, :, None] * (2 * ks[a] - 1) + r[None, :, None, :]).reshape(n, n)
        as_t = lambda x: torch.as_tensor(np.ascontiguousarray(x), device=device)  # noqa: E731
        return DenseIndex(as_t(mask), as_t(rel))

    return cached(("dense", spatial, ks, ss, ds, cs, device), build)


def _kv_heads(x: Tensor, heads: int) -> Tensor:
    """GQA: key/value heads repeated to the query heads ([.., kv_heads, D])."""
    g = heads // x.shape[-2]
    return x if g == 1 else x.repeat_interleave(g, dim=-2)


def na_reference(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg, ak: Tensor | None = None,
                 av: Tensor | None = None, need_lse: bool = False) -> tuple[Tensor, Tensor | None]:
    """(out ``[B, *S, heads, Dv]``, natural logsumexp ``[B, *S, heads]`` or None) of validated arguments
    (``cfg``: ``checks.NAConfig``); plain differentiable torch ops."""
    B, *spatial, h, D = q.shape
    N = math.prod(spatial)
    Dv = v.shape[-1]
    index = dense_index(tuple(spatial), *cfg[:4], str(q.device))
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
    lse = logits.to(acc_dtype(logits.dtype)).logsumexp(-1).transpose(1, 2).reshape(B, *spatial, h) if need_lse \
        else None
    return out, lse
