"""Bi-level routing attention (BiFormer, CVPR 2023): region routing + routed token attention, the public API.

Layout: q, k, v are ``[B, H, W, heads, head_dim]`` (channels-last maps split into heads); regions are
``region_size = (rows, cols)`` tiles numbered row-major over the region grid; the routing index is ``[B, R, topk]``
(int64). Every query region attends jointly (one softmax) to the tokens of its ``topk`` routed key/value regions,
concatenated in index order; routing is shared by all heads.

Backends (``BRA_BACKENDS``): ``reference`` (bra_reference.py), ``torch`` (bra_torch.py), ``triton``
(bra_triton.py); ``auto`` is ``dispatch.bra_auto``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import checks, dispatch, ops
from ._common import concrete, untraced
from .bra_reference import routed_attention_reference

__all__ = ["region_topk", "region_mean", "routed_attention", "routed_attention_reference",
           "bi_level_routing_attention", "BRA_BACKENDS"]

BRA_BACKENDS = dispatch.BRA_BACKENDS


def region_mean(x: Tensor, region_grid) -> Tensor:
    """Mean of a channels-last map ``[B, H, W, *C]`` over each region of a ``region_grid`` (count per side).

    Returns ``[B, R, prod(C)]`` with regions row-major. H and W must be multiples of the grid.
    """
    with untraced():
        gh, gw = checks.region_mean_args(x, concrete(region_grid))
    B, H, W = x.shape[:3]
    C = math.prod(x.shape[3:])
    x = x.reshape(B, gh, H // gh, gw, W // gw, C)
    return x.mean(dim=(2, 4)).reshape(B, gh * gw, C)


def region_topk(q_region: Tensor, k_region: Tensor, topk: int, *, scale: float | None = None,
                return_logits: bool = False):
    """Top-k key regions of every query region, as the official router.

    Region-level affinity ``(q_region * scale) @ k_region^T`` of the (detached) region descriptors
    ``[B, Rq, C]``, ``[B, Rk, C]`` over the full channel dim, single-headed; ``torch.topk`` order
    (descending affinity). ``scale`` defaults to ``C ** -0.5`` (legacy BRA); pass ``1.0`` for nchwBRA's
    unscaled logits. Returns the index ``[B, Rq, topk]`` (int64), and the logits ``[B, Rq, Rk]`` if asked.
    """
    with untraced():
        scale = checks.region_topk_args(q_region, k_region, concrete(topk), concrete(scale))
    # Routing is not differentiable in BiFormer: only the integer indices leave this function.
    q_region, k_region = q_region.detach(), k_region.detach()
    logits = (q_region * scale) @ k_region.transpose(-2, -1)
    index = torch.topk(logits, k=topk, dim=-1).indices
    return (index, logits) if return_logits else index


def routed_attention(query: Tensor, key: Tensor, value: Tensor, index: Tensor, region_size, *,
                     scale: float | None = None, backend: str = "auto") -> Tensor:
    """Token attention of every query region over the union of its routed key/value regions.

    Args:
        query, key: ``[B, H, W, heads, dq]``; value: ``[B, H, W, heads, dv]``; H, W multiples of ``region_size``.
        index: ``[B, R, topk]`` int64, routed key regions (row-major over the region grid) of each query region.
        region_size: ``(rows, cols)`` tokens per region (an int for square regions).
        scale: logit scale; defaults to ``dq ** -0.5`` (BiFormer passes ``qk_dim ** -0.5``, the full dim).
        backend: one of ``BRA_BACKENDS``.
    Returns: ``[B, H, W, heads, dv]``.
    """
    with untraced():  # concrete shapes (a traced model may pass region_size as traced sizes): nothing recorded
        checks.check_choice("backend", backend, BRA_BACKENDS)
        region_size = checks.routed_args(query, key, value, index, concrete(region_size))
        scale = checks.check_scale(concrete(scale), query.shape[-1] ** -0.5)
    impl = dispatch.bra_backend(backend, query, key, value, index, region_size, scale)
    if impl == "reference":
        return routed_attention_reference(query, key, value, index, region_size, scale=scale)
    return ops.routed_attention(impl, query, key, value, index, region_size, scale)


def bi_level_routing_attention(query: Tensor, key: Tensor, value: Tensor, n_win, topk: int, *,
                               scale: float | None = None, backend: str = "auto", return_index: bool = False):
    """Both BRA steps: route the region means of query and key (official legacy router), then routed attention.

    ``n_win`` is the region grid (regions per side, an int or ``(rows, cols)``); ``scale`` (default
    ``(heads * dq) ** -0.5``, BiFormer's full-qk-dim quirk) is used for routing and attention alike.
    """
    with untraced():
        gh, gw = checks.bra_args(query, concrete(n_win))
        H, W, nh, dq = query.shape[1:]
        scale = checks.check_scale(concrete(scale), (nh * dq) ** -0.5)
    index = region_topk(region_mean(query, (gh, gw)), region_mean(key, (gh, gw)), topk, scale=scale)
    out = routed_attention(query, key, value, index, (H // gh, W // gw), scale=scale, backend=backend)
    return (out, index) if return_index else out
