"""Bi-level routing attention (BiFormer, CVPR 2023): region routing + routed token attention.

Functional API in NATTEN's style. Layout: q, k, v are ``[B, H, W, heads, head_dim]`` (channels-last maps
split into heads), regions are ``region_size = (rows, cols)`` tiles numbered row-major over the region grid,
and the routing index is ``[B, R, topk]`` (int64). Every query region attends jointly (one softmax) to the
tokens of its ``topk`` routed key/value regions, concatenated in index order; routing is shared by all heads.

Backends:
  - ``"reference"``: the official gather formulation (materialises the expanded top-k copies of K/V); the oracle.
  - ``"torch"``: region-chunked and flash-style: K/V of the routed regions are gathered (``index_select``, no
    expanded copy) one small chunk of query regions at a time, attention runs through 4-D flash kernels (CPU:
    PyTorch's flash forward/backward with log-sum-exp; elsewhere SDPA forward and a recomputing backward), and
    only q, k, v, the output (and log-sum-exp) are kept for backward: nothing of size ``topk * K`` and no
    ``[R, R, ...]`` scatter buffer. While exporting to ONNX (or ``torch.jit.trace``) it is one plain
    differentiable graph of 4-D ops (the ONNX exporter rejects 5-D SDPA).
  - ``"triton"``: the fused kernel in ``kernels/bra_triton.py`` (CUDA, or the interpreter on CPU).
  - ``"auto"``: triton on CUDA where the kernel runs the arguments (also under ``torch.compile`` /
    ``torch.export``), torch otherwise and while exporting to ONNX.

``torch`` and ``triton`` run as the custom ops ``visionattn::routed_attention_forward`` / ``_backward`` (fake
implementations, autograd, autocast), one opaque op per call for ``torch.compile`` and ``torch.export``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import Backend, capturing, check_int, check_scale, choose_backend, exporting, register_autocast, to_tuple

__all__ = [
    "region_topk",
    "region_mean",
    "routed_attention",
    "routed_attention_reference",
    "routed_attention_torch",
    "bi_level_routing_attention",
    "BRA_BACKENDS",
]

# Elements of one chunk's logits (and of its gathered K/V): bounds the extra memory of the torch backend.
# On accelerators kernel launches cost more than memory, so chunks are much larger there.
_CHUNK_ELEMS = 1 << 18
_CHUNK_ELEMS_ACCEL = 1 << 26


def _pair(x, name: str) -> tuple[int, int]:
    out = to_tuple(x, 2, name)
    for v in out:
        check_int(name, v, 1)
    return out


# ---------------------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------------------


def region_mean(x: Tensor, region_grid) -> Tensor:
    """Mean of a channels-last map ``[B, H, W, *C]`` over each region of a ``region_grid`` (count per side).

    Returns ``[B, R, prod(C)]`` with regions row-major. H and W must be multiples of the grid.
    """
    gh, gw = _pair(region_grid, "region_grid")
    if x.dim() < 3:
        raise ValueError(f"x must be [B, H, W, ...], got shape {tuple(x.shape)}")
    B, H, W = x.shape[:3]
    if H % gh or W % gw:
        raise ValueError(f"spatial size {H}x{W} must be a multiple of the region grid {gh}x{gw}")
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
    if q_region.dim() != 3 or k_region.dim() != 3:
        raise ValueError(
            f"q_region and k_region must be [B, R, C], got {tuple(q_region.shape)} and {tuple(k_region.shape)}"
        )
    if q_region.shape[0] != k_region.shape[0] or q_region.shape[2] != k_region.shape[2]:
        raise ValueError(
            f"q_region {tuple(q_region.shape)} and k_region {tuple(k_region.shape)} must share batch and channels"
        )
    n_k = k_region.shape[1]
    check_int("topk", topk, 1, n_k)
    scale = check_scale(scale, q_region.shape[-1] ** -0.5)
    # Routing is not differentiable in BiFormer: only the integer indices leave this function.
    q_region, k_region = q_region.detach(), k_region.detach()
    logits = (q_region * scale) @ k_region.transpose(-2, -1)
    index = torch.topk(logits, k=topk, dim=-1).indices
    return (index, logits) if return_logits else index


# ---------------------------------------------------------------------------------------------------------
# Layout helpers: [B, H, W, heads, d] <-> [B*R, hw, heads, d] (region-major, tokens row-major inside a region)
# ---------------------------------------------------------------------------------------------------------


def _to_regions(x: Tensor, rh: int, rw: int) -> Tensor:
    B, H, W, nh, d = x.shape
    gh, gw = H // rh, W // rw
    x = x.reshape(B, gh, rh, gw, rw, nh, d).permute(0, 1, 3, 2, 4, 5, 6)
    return x.reshape(B * gh * gw, rh * rw, nh, d)


def _from_regions(x: Tensor, B: int, H: int, W: int, rh: int, rw: int) -> Tensor:
    nh, d = x.shape[-2:]
    x = x.reshape(B, H // rh, W // rw, rh, rw, nh, d).permute(0, 1, 3, 2, 4, 5, 6)
    return x.reshape(B, H, W, nh, d)


def _flat_index(index: Tensor, R: int) -> Tensor:
    """Per-image region indices -> rows of the ``[B*R, ...]`` region tensors, ``[B*R*topk]``."""
    B = index.shape[0]
    offs = torch.arange(B, device=index.device, dtype=index.dtype).view(B, 1, 1) * R
    return (index + offs).reshape(-1)


# ---------------------------------------------------------------------------------------------------------
# Reference: the official gather formulation (oracle and baseline)
# ---------------------------------------------------------------------------------------------------------


def routed_attention_reference(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size, *,
                               scale: float) -> Tensor:
    """Official formulation: gather K/V of the routed regions from an expanded view, then dense attention."""
    B, H, W, nh, dq = q.shape
    dv = v.shape[-1]
    rh, rw = region_size
    hw = rh * rw
    R = (H // rh) * (W // rw)
    topk = index.shape[-1]
    qr = _to_regions(q, rh, rw).reshape(B, R, hw, nh * dq)
    kr = _to_regions(k, rh, rw).reshape(B, R, hw, nh * dq)
    vr = _to_regions(v, rh, rw).reshape(B, R, hw, nh * dv)

    def gather(t):
        c = t.shape[-1]
        src = t.view(B, 1, R, hw, c).expand(-1, R, -1, -1, -1)
        return torch.gather(src, 2, index.view(B, R, topk, 1, 1).expand(-1, -1, -1, hw, c))

    kg = gather(kr)  # [B, R, topk, hw, nh*dq]
    vg = gather(vr)
    kg = kg.reshape(B * R, topk * hw, nh, dq).permute(0, 2, 3, 1)  # [BR, nh, dq, topk*hw]
    vg = vg.reshape(B * R, topk * hw, nh, dv).transpose(1, 2)  # [BR, nh, topk*hw, dv]
    qh = qr.reshape(B * R, hw, nh, dq).transpose(1, 2)
    attn = torch.softmax((qh * scale) @ kg, dim=-1)
    out = (attn @ vg).transpose(1, 2)  # [BR, hw, nh, dv]
    return _from_regions(out, B, H, W, rh, rw)


# ---------------------------------------------------------------------------------------------------------
# Torch backend
# ---------------------------------------------------------------------------------------------------------


def _chunk_len(n_rows: int, nh: int, hw: int, L: int, d: int, device: torch.device) -> int:
    """Query regions per chunk: the chunk's logits and gathered K/V stay under the chunk budget (elements)."""
    budget = _CHUNK_ELEMS if device.type == "cpu" else max(_CHUNK_ELEMS, _CHUNK_ELEMS_ACCEL)
    per_row = max(nh * hw * L, L * nh * d, 1)
    return max(1, min(n_rows, budget // per_row))


def _attend(qc: Tensor, kg: Tensor, vg: Tensor, scale: float) -> Tensor:
    """4-D attention ``[n, nh, hw, d]`` x ``[n, nh, L, d]`` -> ``[n, nh, hw, dv]`` (flash SDPA when it applies)."""
    if qc.shape[-1] == vg.shape[-1]:
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


def _use_cpu_flash(qr: Tensor, vr: Tensor) -> bool:
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
    lse = qr.new_empty(N, nh, hw, dtype=_acc(qr.dtype))
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


def _plain_regions(qr: Tensor, kr: Tensor, vr: Tensor, fidx: Tensor, topk: int, scale: float) -> Tensor:
    """Single-graph version (ONNX export): one gather of every routed region, 4-D attention."""
    N, hw, nh, dq = qr.shape
    dv = vr.shape[-1]
    L = topk * hw
    kg = kr.index_select(0, fidx).reshape(N, L, nh, dq).transpose(1, 2)
    vg = vr.index_select(0, fidx).reshape(N, L, nh, dv).transpose(1, 2)
    return _attend(qr.transpose(1, 2), kg, vg, scale).transpose(1, 2)


def _nan_rows(q: Tensor) -> Tensor:
    # PyTorch's CPU attention kernels turn a NaN query row into 0 (the softmax max skips NaN); a non-finite
    # query gives a NaN row in exact arithmetic. `q.sum() * 0` is 0 for finite rows and NaN otherwise.
    return q.sum(-1, keepdim=True) * 0


def _torch_forward(q, k, v, index, region_size, scale, need_aux):
    """Torch path without a graph: (out ``[B, H, W, heads, dv]``, aux): aux is the CPU flash kernel's
    log-sum-exp ``[B * R, heads, hw]`` when the backward can use it (need_aux), else empty."""
    B, H, W, nh, dq = q.shape
    rh, rw = region_size
    R = (H // rh) * (W // rw)
    topk = index.shape[-1]
    qr, kr, vr = (_to_regions(t, rh, rw) for t in (q, k, v))
    fidx = _flat_index(index, R)
    if need_aux and _use_cpu_flash(qr, vr):
        out, aux = _forward_regions_flash(qr, kr, vr, fidx, topk, scale)
    else:
        out = _forward_regions(qr, kr, vr, fidx, topk, scale)
        aux = q.new_empty(0)
    out = _from_regions(out, B, H, W, rh, rw)
    if not bool(torch.isfinite(q.sum(dtype=_acc(q.dtype)))):  # (one cheap reduction; the fix only when needed)
        out = out + _nan_rows(q)
    return out, aux


def _torch_backward(gout, q, k, v, index, out, aux, region_size, scale, need_q, need_kv):
    B, H, W, nh, dq = q.shape
    rh, rw = region_size
    R = (H // rh) * (W // rw)
    qr, kr, vr, outr, goutr = (_to_regions(t, rh, rw) for t in (q, k, v, out, gout))
    grads = _backward_regions(goutr, qr, kr, vr, _flat_index(index, R), outr, aux if aux.numel() else None,
                              index.shape[-1], scale, need_q, need_kv, need_kv)
    return tuple(None if g is None else _from_regions(g, B, H, W, rh, rw) for g in grads)


def routed_attention_torch(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size, *, scale: float) -> Tensor:
    """Torch backend (inputs assumed validated; see `routed_attention`)."""
    if exporting():  # ONNX / jit.trace: one plain graph of 4-D ops (the exporter rejects 5-D SDPA)
        B, H, W = q.shape[:3]
        rh, rw = region_size
        qr, kr, vr = (_to_regions(t, rh, rw) for t in (q, k, v))
        out = _plain_regions(qr, kr, vr, _flat_index(index, (H // rh) * (W // rw)), index.shape[-1], scale)
        return _from_regions(out, B, H, W, rh, rw) + _nan_rows(q)
    return _run_op("torch", q, k, v, index, region_size, scale)


# ---------------------------------------------------------------------------------------------------------
# Custom ops: visionattn::routed_attention_forward / visionattn::routed_attention_backward
#
# backend "torch", "triton" or "auto" (triton on CUDA where the kernel runs the arguments, else torch). `aux`
# is what the backward needs: the torch path's CPU flash log-sum-exp ([B * R, heads, hw], only when need_aux
# and the flash kernel applies) or the fused kernel's base-2 log-sum-exp ([B, H, W, heads]).
# ---------------------------------------------------------------------------------------------------------


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _op_impl(backend: str, q: Tensor, k: Tensor, v: Tensor) -> str:
    if backend == "auto":
        return "triton" if q.is_cuda and _triton_check(q, k, v) is None else "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be one of ('auto', 'torch', 'triton') for "
                         f"visionattn::routed_attention_forward, got {backend!r}")
    return backend


@torch.library.custom_op("visionattn::routed_attention_forward", mutates_args=())
def routed_attention_forward(query: Tensor, key: Tensor, value: Tensor, index: Tensor, region_size: list[int],
                             scale: float, backend: str, need_aux: bool) -> tuple[Tensor, Tensor]:
    """Routed attention (arguments validated as by ``routed_attention``): ``(out, aux)``, aux saved for the
    backward."""
    rs = (int(region_size[0]), int(region_size[1]))
    if _op_impl(backend, query, key, value) == "triton":
        from . import bra_triton

        out, lse = bra_triton.forward(query, key, value, index, rs, float(scale))
        return out, lse
    out, aux = _torch_forward(query, key, value, index, rs, float(scale), need_aux)
    return out.contiguous(), aux.contiguous()


@routed_attention_forward.register_fake
def _routed_attention_forward_fake(query, key, value, index, region_size, scale, backend, need_aux):
    B, H, W, nh, dq = query.shape
    out = query.new_empty(B, H, W, nh, value.shape[-1])
    acc = _acc(query.dtype)
    if _op_impl(backend, query, key, value) == "triton":
        return out, query.new_empty(B, H, W, nh, dtype=acc)
    rh, rw = int(region_size[0]), int(region_size[1])
    if need_aux and _use_cpu_flash(query, value):
        return out, query.new_empty(B * (H // rh) * (W // rw), nh, rh * rw, dtype=acc)
    return out, query.new_empty(0)


@torch.library.custom_op("visionattn::routed_attention_backward", mutates_args=())
def routed_attention_backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, index: Tensor,
                              out: Tensor, aux: Tensor, region_size: list[int], scale: float, backend: str,
                              need_query_grad: bool, need_kv_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``routed_attention_forward`` w.r.t. query, key, value (empty where not needed)."""
    rs = (int(region_size[0]), int(region_size[1]))
    if _op_impl(backend, query, key, value) == "triton":
        from . import bra_triton

        grads = bra_triton.backward(query, key, value, out, aux, index, grad_out, rs, float(scale),
                                    need_query_grad, need_kv_grad)
    else:
        grads = _torch_backward(grad_out, query, key, value, index, out, aux, rs, float(scale), need_query_grad,
                                need_kv_grad)
    return tuple(query.new_empty(0) if g is None else g.contiguous() for g in grads)


@routed_attention_backward.register_fake
def _routed_attention_backward_fake(grad_out, query, key, value, index, out, aux, region_size, scale, backend,
                                    need_query_grad, need_kv_grad):
    return (torch.empty_like(query) if need_query_grad else query.new_empty(0),
            torch.empty_like(key) if need_kv_grad else query.new_empty(0),
            torch.empty_like(value) if need_kv_grad else query.new_empty(0))


def _ra_setup_context(ctx, inputs, output):
    q, k, v, index, region_size, scale, backend, need_aux = inputs
    ctx.save_for_backward(q, k, v, index, output[0], output[1])
    ctx.meta = (list(region_size), float(scale), _op_impl(backend, q, k, v))


def _ra_backward_rule(ctx, grad_out, grad_aux):
    q, k, v, index, out, aux = ctx.saved_tensors
    region_size, scale, impl = ctx.meta
    need_q, need_k, need_v = ctx.needs_input_grad[:3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.visionattn.routed_attention_backward(grad_out, q, k, v, index, out, aux, region_size,
                                                               scale, impl, need_q, need_k or need_v)
    return (dq if need_q else None, dk if need_k else None, dv if need_v else None, None, None, None, None, None)


routed_attention_forward.register_autograd(_ra_backward_rule, setup_context=_ra_setup_context)
register_autocast(routed_attention_forward, "routed_attention_forward")


def _run_op(impl: str, q, k, v, index, region_size, scale) -> Tensor:
    need_aux = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    out, _ = torch.ops.visionattn.routed_attention_forward(q, k, v, index, list(region_size), float(scale), impl,
                                                           need_aux)
    return out


# ---------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------


def _validate(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size) -> tuple[int, int]:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor) or t.dim() != 5:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 5-D tensor [B, H, W, heads, head_dim], got {shape}")
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
    rh, rw = _pair(region_size, "region_size")
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


def _reference(q, k, v, index, region_size, scale):
    return routed_attention_reference(q, k, v, index, region_size, scale=scale)


def _torch(q, k, v, index, region_size, scale):
    return routed_attention_torch(q, k, v, index, region_size, scale=scale)


def _triton(q, k, v, index, region_size, scale):
    return _run_op("triton", q, k, v, index, region_size, scale)


def _triton_check(q, k, v, *args) -> str | None:
    if exporting():
        return "the fused kernel cannot be exported to ONNX or traced by torch.jit; use backend='torch'"
    try:
        from .bra_triton import unsupported
    except ImportError as e:
        return f"needs triton ({e}); use backend='torch'"
    return unsupported(q, k, v)


def _always(*args) -> None:
    return None


_BACKENDS = {
    "reference": Backend(_reference, _always),
    "torch": Backend(_torch, _always),
    "triton": Backend(_triton, _triton_check),
}
BRA_BACKENDS = ("auto", *_BACKENDS)


def _auto_order(q: Tensor) -> tuple:
    return ("triton", "torch") if q.is_cuda and not exporting() else ("torch",)


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
    if backend not in BRA_BACKENDS:
        raise ValueError(f"backend must be one of {BRA_BACKENDS}, got {backend!r}")
    region_size = _validate(query, key, value, index, region_size)
    scale = check_scale(scale, query.shape[-1] ** -0.5)
    args = (query, key, value, index, region_size, scale)
    return _BACKENDS[choose_backend(backend, _BACKENDS, _auto_order(query), *args)].run(*args)


def bi_level_routing_attention(query: Tensor, key: Tensor, value: Tensor, n_win, topk: int, *,
                               scale: float | None = None, backend: str = "auto", return_index: bool = False):
    """Both BRA steps: route the region means of query and key (official legacy router), then routed attention.

    ``n_win`` is the region grid (regions per side, an int or ``(rows, cols)``); ``scale`` (default
    ``(heads * dq) ** -0.5``, BiFormer's full-qk-dim quirk) is used for routing and attention alike.
    """
    if not isinstance(query, Tensor) or query.dim() != 5:
        raise ValueError(f"query must be a 5-D tensor [B, H, W, heads, head_dim], got "
                         f"{getattr(query, 'shape', query)}")
    gh, gw = _pair(n_win, "n_win")
    B, H, W, nh, dq = query.shape
    if nh < 1 or dq < 1:
        raise ValueError(f"heads and head_dim must be >= 1, got query {tuple(query.shape)}")
    if H % gh or W % gw:
        raise ValueError(f"spatial size {H}x{W} must be a multiple of n_win {gh}x{gw}")
    scale = check_scale(scale, (nh * dq) ** -0.5)
    index = region_topk(region_mean(query, (gh, gw)), region_mean(key, (gh, gw)), topk, scale=scale)
    out = routed_attention(query, key, value, index, (H // gh, W // gw), scale=scale, backend=backend)
    return (out, index) if return_index else out
