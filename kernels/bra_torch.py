"""Routed attention in plain PyTorch: the ``torch`` backend of bi-level routing attention.

Region-chunked and flash-style: the K/V of the routed regions are gathered (``index_select``, no expanded copy)
for a small chunk of query regions at a time and attended through 4-D flash kernels (CPU: PyTorch's flash forward /
backward with logsumexp; elsewhere SDPA and a recomputing backward). Only q, k, v, the output (and logsumexp) are
kept for the backward: nothing of size ``topk * K``. ``forward`` / ``backward`` run inside the
``visionattn::routed_attention_*`` ops (``ops.py``); ``plain`` is one differentiable graph of 4-D ops, for ONNX
export and ``torch.jit.trace`` (the exporter rejects 5-D SDPA).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import acc_dtype, untraced

__all__ = ["forward", "backward", "plain", "uses_flash"]

# Elements of one chunk's logits (and of its gathered K/V): bounds the extra memory of the torch backend.
# On accelerators kernel launches cost more than memory, so chunks are much larger there.
_CHUNK_ELEMS = 1 << 18
_CHUNK_ELEMS_ACCEL = 1 << 26


# ---------------------------------------------------------------------------------------------------------
# Layout helpers: [B, H, W, heads, d] <-> [B*R, hw, heads, d] (region-major, tokens row-major inside a region)
# ---------------------------------------------------------------------------------------------------------


# The batch is never read as a size (-1 in the reshapes): exported graphs keep it dynamic.


def _to_regions(x: Tensor, rh: int, rw: int, heads_first: bool = False) -> Tensor:
    """[B, H, W, nh, d] -> [B*R, rh*rw, nh, d], or [nh, B*R, rh*rw, d] with ``heads_first``: one copy either way."""
    H, W, nh, d = x.shape[1:]
    gh, gw = H // rh, W // rw
    x = x.reshape(-1, gh, rh, gw, rw, nh, d)
    if heads_first:
        return x.permute(5, 0, 1, 3, 2, 4, 6).reshape(nh, -1, rh * rw, d)
    return x.permute(0, 1, 3, 2, 4, 5, 6).reshape(-1, rh * rw, nh, d)


def _from_regions(x: Tensor, B: int, H: int, W: int, rh: int, rw: int, heads_first: bool = False) -> Tensor:
    """Inverse of `_to_regions`: -> [B, H, W, nh, d]."""
    if heads_first:
        nh, d = x.shape[0], x.shape[-1]
        x = x.reshape(nh, -1, H // rh, W // rw, rh, rw, d).permute(1, 2, 4, 3, 5, 0, 6)
    else:
        nh, d = x.shape[-2:]
        x = x.reshape(-1, H // rh, W // rw, rh, rw, nh, d).permute(0, 1, 3, 2, 4, 5, 6)
    return x.reshape(-1, H, W, nh, d)


def _flat_index(index: Tensor, R: int) -> Tensor:
    """Per-image region indices -> rows of the ``[B*R, ...]`` region tensors, ``[B*R*topk]``."""
    offs = (torch.ones_like(index[:, :1, :1]).cumsum(0) - 1) * R  # [B, 1, 1]: b * R
    return (index + offs).reshape(-1)



# ---------------------------------------------------------------------------------------------------------
# Chunked attention on region tensors
# ---------------------------------------------------------------------------------------------------------


def _chunk_len(n_rows: int, nh: int, hw: int, L: int, d: int, device: torch.device) -> int:
    """Query regions per chunk: the chunk's logits and gathered K/V stay under the chunk budget (elements)."""
    budget = _CHUNK_ELEMS if device.type == "cpu" else max(_CHUNK_ELEMS, _CHUNK_ELEMS_ACCEL)
    per_row = max(nh * hw * L, L * nh * d, 1)
    return max(1, min(n_rows, budget // per_row))


def _attend(qc: Tensor, kg: Tensor, vg: Tensor, scale: float) -> Tensor:
    """4-D attention ``[n, nh, hw, d]`` x ``[n, nh, L, d]`` -> ``[n, nh, hw, dv]`` (flash SDPA when it applies)."""
    with untraced():  # head dims are fixed by the model
        same_dims = qc.shape[-1] == vg.shape[-1]
    if same_dims:
        return F.scaled_dot_product_attention(qc, kg, vg, scale=scale)
    attn = torch.softmax((qc * scale) @ kg.transpose(-2, -1), dim=-1)
    return attn @ vg


def _forward_regions(qr: Tensor, kr: Tensor, vr: Tensor, fidx: Tensor, topk: int, scale: float) -> Tensor:
    """Chunked forward on region tensors ``[N, hw, nh, d]`` (N = B*R), no graph kept."""
    N, hw, nh, dq = qr.shape
    dv = vr.shape[-1]
    L = topk * hw
    out = qr.new_empty(N, hw, nh, dv)
    step = _chunk_len(N, nh, hw, L, max(dq, dv), qr.device)
    for s in range(0, N, step):
        e = min(N, s + step)
        n = e - s
        ids = fidx[s * topk:e * topk]
        kg = kr.index_select(0, ids).view(n, L, nh, dq).transpose(1, 2)
        vg = vr.index_select(0, ids).view(n, L, nh, dv).transpose(1, 2)
        out[s:e] = _attend(qr[s:e].transpose(1, 2), kg, vg, scale).transpose(1, 2)
    return out


def uses_flash(qr: Tensor, vr: Tensor) -> bool:
    """PyTorch's CPU flash-attention kernels (forward with log-sum-exp, backward) apply to this input."""
    return (
        qr.device.type == "cpu"
        and qr.shape[-1] == vr.shape[-1]
        and qr.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    )


def _forward_regions_flash(qr, kr, vr, fidx, topk, scale):
    """Like `_forward_regions` through the CPU flash kernel, also returning its log-sum-exp ``[N, nh, hw]``."""
    N, hw, nh, dq = qr.shape
    L = topk * hw
    out = torch.empty_like(qr)
    lse = qr.new_empty(N, nh, hw, dtype=acc_dtype(qr.dtype))
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    step = _chunk_len(N, nh, hw, L, dq, qr.device)
    for s in range(0, N, step):
        e = min(N, s + step)
        n = e - s
        ids = fidx[s * topk:e * topk]
        kg = kr.index_select(0, ids).view(n, L, nh, dq).transpose(1, 2)
        vg = vr.index_select(0, ids).view(n, L, nh, dq).transpose(1, 2)
        o, lse_c = flash(qr[s:e].transpose(1, 2), kg, vg, 0.0, False, scale=scale)
        out[s:e] = o.transpose(1, 2)
        lse[s:e] = lse_c
    return out, lse


def _backward_regions(gout, qr, kr, vr, fidx, out, lse, topk, scale, need_q, need_k, need_v):
    """Gradients on region tensors: regathers K/V per chunk; CPU flash backward when the forward saved its
    log-sum-exp, else recomputed probabilities."""
    N, hw, nh, dq = qr.shape
    dv = vr.shape[-1]
    L = topk * hw
    gq = torch.empty_like(qr) if need_q else None
    gk = torch.zeros_like(kr) if need_k else None
    gv = torch.zeros_like(vr) if need_v else None
    gout = gout.contiguous()
    step = _chunk_len(N, nh, hw, L, max(dq, dv), qr.device)
    if lse is not None:
        flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        for s in range(0, N, step):
            e = min(N, s + step)
            n = e - s
            ids = fidx[s * topk:e * topk]
            kg = kr.index_select(0, ids).view(n, L, nh, dq).transpose(1, 2)
            vg = vr.index_select(0, ids).view(n, L, nh, dv).transpose(1, 2)
            dqc, dkg, dvg = flash_bwd(
                gout[s:e].transpose(1, 2), qr[s:e].transpose(1, 2), kg, vg, out[s:e].transpose(1, 2),
                lse[s:e], 0.0, False, scale=scale,
            )
            if need_q:
                gq[s:e] = dqc.transpose(1, 2)
            if need_k:
                gk.index_add_(0, ids, dkg.transpose(1, 2).reshape(n * topk, hw, nh, dq))
            if need_v:
                gv.index_add_(0, ids, dvg.transpose(1, 2).reshape(n * topk, hw, nh, dv))
        return gq, gk, gv
    for s in range(0, N, step):
        e = min(N, s + step)
        n = e - s
        ids = fidx[s * topk:e * topk]
        kg = kr.index_select(0, ids).view(n, L, nh, dq).transpose(1, 2)  # [n, nh, L, dq]
        vg = vr.index_select(0, ids).view(n, L, nh, dv).transpose(1, 2)
        qc = qr[s:e].transpose(1, 2)  # [n, nh, hw, dq]
        go = gout[s:e].transpose(1, 2)  # [n, nh, hw, dv]
        p = torch.softmax((qc @ kg.transpose(-2, -1)).mul_(scale), dim=-1)  # [n, nh, hw, L]
        if need_v:
            gvg = p.transpose(-2, -1) @ go  # [n, nh, L, dv]
            gv.index_add_(0, ids, gvg.transpose(1, 2).reshape(n * topk, hw, nh, dv))
            del gvg
        if not (need_q or need_k):
            continue
        delta = (go * out[s:e].transpose(1, 2)).sum(-1, keepdim=True)
        ds = (go @ vg.transpose(-2, -1)).sub_(delta).mul_(p).mul_(scale)  # dlogits * scale
        del p
        if need_q:
            gq[s:e] = (ds @ kg).transpose(1, 2)
        if need_k:
            gkg = ds.transpose(-2, -1) @ qc  # [n, nh, L, dq]
            gk.index_add_(0, ids, gkg.transpose(1, 2).reshape(n * topk, hw, nh, dq))
    return gq, gk, gv


def _nan_rows(q: Tensor) -> Tensor:
    # PyTorch's CPU attention kernels turn a NaN query row into 0 (the softmax max skips NaN); a non-finite
    # query gives a NaN row in exact arithmetic. `q.sum() * 0` is 0 for finite rows and NaN otherwise.
    return q.sum(-1, keepdim=True) * 0


# ---------------------------------------------------------------------------------------------------------
# Entry points: [B, H, W, heads, d] tensors, validated arguments
# ---------------------------------------------------------------------------------------------------------


def forward(q, k, v, index, region_size, scale, need_aux):
    """Torch path without a graph: (out ``[B, H, W, heads, dv]``, aux): aux is the CPU flash kernel's
    log-sum-exp ``[B * R, heads, hw]`` when the backward can use it (need_aux), else empty."""
    B, H, W, nh, dq = q.shape
    rh, rw = region_size
    R = (H // rh) * (W // rw)
    topk = index.shape[-1]
    qr, kr, vr = (_to_regions(t, rh, rw) for t in (q, k, v))
    fidx = _flat_index(index, R)
    if need_aux and uses_flash(qr, vr):
        out, aux = _forward_regions_flash(qr, kr, vr, fidx, topk, scale)
    else:
        out = _forward_regions(qr, kr, vr, fidx, topk, scale)
        aux = q.new_empty(0)
    out = _from_regions(out, B, H, W, rh, rw)
    if not bool(torch.isfinite(q.sum(dtype=acc_dtype(q.dtype)))):  # (one cheap reduction; the fix only when needed)
        out = out + _nan_rows(q)
    return out, aux


def backward(gout, q, k, v, index, out, aux, region_size, scale, need_q, need_kv):
    """(dq, dk, dv), None where not needed, from ``forward``'s output and aux."""
    B, H, W, nh, dq = q.shape
    rh, rw = region_size
    R = (H // rh) * (W // rw)
    qr, kr, vr, outr, goutr = (_to_regions(t, rh, rw) for t in (q, k, v, out, gout))
    grads = _backward_regions(goutr, qr, kr, vr, _flat_index(index, R), outr, aux if aux.numel() else None,
                              index.shape[-1], scale, need_q, need_kv, need_kv)
    return tuple(None if g is None else _from_regions(g, B, H, W, rh, rw) for g in grads)


def plain(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size, scale: float) -> Tensor:
    """One plain differentiable graph of 4-D attention (ONNX export, ``torch.jit.trace``): one gather of every routed
    region. Heads go first in the same copy that cuts the map into regions, so the gathered key / value regions
    (topk times the map) need no layout copy."""
    B, H, W = q.shape[:3]
    rh, rw = region_size
    topk = index.shape[-1]
    qh, kh, vh = (_to_regions(t, rh, rw, heads_first=True) for t in (q, k, v))  # [nh, B*R, hw, d]
    fidx = _flat_index(index, (H // rh) * (W // rw))
    kg, vg = (t.index_select(1, fidx).unflatten(1, (-1, topk)).flatten(2, 3) for t in (kh, vh))
    out = _attend(qh, kg, vg, scale)  # [nh, B*R, hw, dv]
    return _from_regions(out, B, H, W, rh, rw, heads_first=True) + _nan_rows(q)
