"""Fused Triton kernels for routed (bi-level routing) attention: region-sparse flash attention by index.

Run by ``backend="triton"`` through the ``visionattn::routed_attention_*`` ops (``ops.py``) with validated
``q, k: [B, H, W, heads, dq]``, ``v: [B, H, W, heads, dv]`` (any strides), ``index: [B, R, topk]`` int64. The
kernels compute the address of every routed key token from the index (nothing of size ``topk * K``). Forward: one
program per (query region, token tile, head), online softmax, logsumexp saved. Backward: dQ per query region; dK /
dV per key region over the query regions routed to it (an inverted index, no atomics, deterministic).
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import LOG2E, interpreting

__all__ = ["forward", "backward", "unsupported"]

_MAX_HEAD_DIM = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _np2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


@triton.jit
def _region_token_offsets(reg, t, GW, RH: tl.constexpr, RW: tl.constexpr, stride_h, stride_w):
    """Offset of token ``t`` (row-major inside its region) of region ``reg`` (row-major over the grid)."""
    reg = reg.to(tl.int64)
    t = t.to(tl.int64)
    y = (reg // GW) * RH + t // RW
    x = (reg % GW) * RW + t % RW
    return y * stride_h + x * stride_w


@triton.jit
def _load_routed_kv(idx_row, k_base, v_base, j0, L, GW, RH: tl.constexpr, RW: tl.constexpr,
                    skh, skw, skd, svh, svw, svd, offs_dq, offs_dv, mask_dq, mask_dv, BLOCK_N: tl.constexpr):
    """Tile j0..j0+BLOCK_N of a query region's routed key/value sequence (its topk regions in index order), read
    in place by region index; returns (k, v, mask_n)."""
    HW: tl.constexpr = RH * RW
    offs_n = j0 + tl.arange(0, BLOCK_N)
    mask_n = offs_n < L
    reg = tl.load(idx_row + offs_n // HW, mask=mask_n, other=0)
    t = offs_n % HW
    tok_k = _region_token_offsets(reg, t, GW, RH, RW, skh, skw)
    tok_v = _region_token_offsets(reg, t, GW, RH, RW, svh, svw)
    k = tl.load(k_base + tok_k[:, None] + offs_dq[None, :] * skd, mask=mask_n[:, None] & mask_dq[None, :], other=0.0)
    v = tl.load(v_base + tok_v[:, None] + offs_dv[None, :] * svd, mask=mask_n[:, None] & mask_dv[None, :], other=0.0)
    return k, v, mask_n


@triton.jit
def _fwd_kernel(
    Q, K, V, OUT, LSE, IDX,
    sqb, sqh, sqw, sqn, sqd,
    skb, skh, skw, skn, skd,
    svb, svh, svw, svn, svd,
    sob, soh, sow, son, sod,
    slb, slh, slw, sln,
    R, GW, DQ, DV, qk_scale,
    TOPK: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    HW: tl.constexpr = RH * RW
    L: tl.constexpr = TOPK * HW
    pid_r = tl.program_id(0)  # flat query region b * R + r
    pid_m = tl.program_id(1)
    head = tl.program_id(2).to(tl.int64)
    b = (pid_r // R).to(tl.int64)
    r = pid_r % R

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < HW
    offs_dq = tl.arange(0, BLOCK_DQ)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dq = offs_dq < DQ
    mask_dv = offs_dv < DV

    tok_q = _region_token_offsets(r, offs_m, GW, RH, RW, sqh, sqw)
    q = tl.load(Q + b * sqb + head * sqn + tok_q[:, None] + offs_dq[None, :] * sqd,
                mask=mask_m[:, None] & mask_dq[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], ACC)
    idx_row = IDX + pid_r.to(tl.int64) * TOPK
    k_base = K + b * skb + head * skn
    v_base = V + b * svb + head * svn
    for j0 in range(0, L, BLOCK_N):
        k, v, mask_n = _load_routed_kv(idx_row, k_base, v_base, j0, L, GW, RH, RW, skh, skw, skd, svh, svw, svd,
                                       offs_dq, offs_dv, mask_dq, mask_dv, BLOCK_N)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION, out_dtype=ACC)
        m_i = m_new

    acc = acc / l_i[:, None]
    tok_o = _region_token_offsets(r, offs_m, GW, RH, RW, soh, sow)
    tl.store(OUT + b * sob + head * son + tok_o[:, None] + offs_dv[None, :] * sod, acc.to(OUT.dtype.element_ty),
             mask=mask_m[:, None] & mask_dv[None, :])
    # Base-2 logsumexp of the scaled logits, in the [B, H, W, heads] token layout.
    tok_l = _region_token_offsets(r, offs_m, GW, RH, RW, slh, slw)
    tl.store(LSE + b * slb + head * sln + tok_l, (m_i + tl.log2(l_i)).to(LSE.dtype.element_ty), mask=mask_m)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, OUT, DO, DQ_OUT, LSE, DELTA, IDX,
    sqb, sqh, sqw, sqn, sqd,
    skb, skh, skw, skn, skd,
    svb, svh, svw, svn, svd,
    sob, soh, sow, son, sod,
    sgb, sgh, sgw, sgn, sgd,
    sdb, sdh, sdw, sdn, sdd,
    slb, slh, slw, sln,
    R, GW, DQ, DV, qk_scale, scale,
    TOPK: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, COMPUTE_DQ: tl.constexpr,
):
    """Writes delta = rowsum(dO * O) (needed by the dK/dV kernel) and, if COMPUTE_DQ, dQ."""
    HW: tl.constexpr = RH * RW
    L: tl.constexpr = TOPK * HW
    pid_r = tl.program_id(0)
    pid_m = tl.program_id(1)
    head = tl.program_id(2).to(tl.int64)
    b = (pid_r // R).to(tl.int64)
    r = pid_r % R

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < HW
    offs_dq = tl.arange(0, BLOCK_DQ)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dq = offs_dq < DQ
    mask_dv = offs_dv < DV

    tok_q = _region_token_offsets(r, offs_m, GW, RH, RW, sqh, sqw)
    q = tl.load(Q + b * sqb + head * sqn + tok_q[:, None] + offs_dq[None, :] * sqd,
                mask=mask_m[:, None] & mask_dq[None, :], other=0.0)
    tok_g = _region_token_offsets(r, offs_m, GW, RH, RW, sgh, sgw)
    do = tl.load(DO + b * sgb + head * sgn + tok_g[:, None] + offs_dv[None, :] * sgd,
                 mask=mask_m[:, None] & mask_dv[None, :], other=0.0)
    tok_o = _region_token_offsets(r, offs_m, GW, RH, RW, soh, sow)
    o = tl.load(OUT + b * sob + head * son + tok_o[:, None] + offs_dv[None, :] * sod,
                mask=mask_m[:, None] & mask_dv[None, :], other=0.0)
    delta = tl.sum(do.to(ACC) * o.to(ACC), 1)
    tok_l = _region_token_offsets(r, offs_m, GW, RH, RW, slh, slw)
    tl.store(DELTA + b * slb + head * sln + tok_l, delta.to(DELTA.dtype.element_ty), mask=mask_m)
    if COMPUTE_DQ:
        lse = tl.load(LSE + b * slb + head * sln + tok_l, mask=mask_m, other=float("inf")).to(ACC)

        acc = tl.zeros([BLOCK_M, BLOCK_DQ], ACC)
        idx_row = IDX + pid_r.to(tl.int64) * TOPK
        k_base = K + b * skb + head * skn
        v_base = V + b * svb + head * svn
        for j0 in range(0, L, BLOCK_N):
            k, v, mask_n = _load_routed_kv(idx_row, k_base, v_base, j0, L, GW, RH, RW, skh, skw, skd, svh, svw, svd,
                                           offs_dq, offs_dv, mask_dq, mask_dv, BLOCK_N)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(mask_n[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
            ds = p * (dp - delta[:, None])
            acc += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION, out_dtype=ACC)

        acc = acc * scale
        tok_dq = _region_token_offsets(r, offs_m, GW, RH, RW, sdh, sdw)
        tl.store(DQ_OUT + b * sdb + head * sdn + tok_dq[:, None] + offs_dq[None, :] * sdd,
                 acc.to(DQ_OUT.dtype.element_ty), mask=mask_m[:, None] & mask_dq[None, :])


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK_OUT, DV_OUT, LSE, DELTA, PTR, QLIST,
    sqb, sqh, sqw, sqn, sqd,
    skb, skh, skw, skn, skd,
    svb, svh, svw, svn, svd,
    sgb, sgh, sgw, sgn, sgd,
    sdkb, sdkh, sdkw, sdkn, sdkd,
    sdvb, sdvh, sdvw, sdvn, sdvd,
    slb, slh, slw, sln,
    R, GW, DQ, DV, qk_scale, scale,
    RH: tl.constexpr, RW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
):
    HW: tl.constexpr = RH * RW
    pid_r = tl.program_id(0)  # flat key region b * R + r
    pid_n = tl.program_id(1)
    head = tl.program_id(2).to(tl.int64)
    b = (pid_r // R).to(tl.int64)
    r = pid_r % R

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < HW
    offs_dq = tl.arange(0, BLOCK_DQ)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dq = offs_dq < DQ
    mask_dv = offs_dv < DV

    tok_k = _region_token_offsets(r, offs_n, GW, RH, RW, skh, skw)
    tok_v = _region_token_offsets(r, offs_n, GW, RH, RW, svh, svw)
    k = tl.load(K + b * skb + head * skn + tok_k[:, None] + offs_dq[None, :] * skd,
                mask=mask_n[:, None] & mask_dq[None, :], other=0.0)
    v = tl.load(V + b * svb + head * svn + tok_v[:, None] + offs_dv[None, :] * svd,
                mask=mask_n[:, None] & mask_dv[None, :], other=0.0)

    dk = tl.zeros([BLOCK_N, BLOCK_DQ], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], ACC)
    start = tl.load(PTR + pid_r)
    end = tl.load(PTR + pid_r + 1)
    n_rows = (end - start) * HW
    q_base = Q + b * sqb + head * sqn
    g_base = DO + b * sgb + head * sgn
    l_base = LSE + b * slb + head * sln
    d_base = DELTA + b * slb + head * sln
    # Rows: the tokens of every query region that routed here, concatenated (small regions share a tile).
    for i0 in range(0, n_rows, BLOCK_M):
        offs_m = i0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < n_rows
        qreg = tl.load(QLIST + start + offs_m // HW, mask=mask_m, other=0)
        t = offs_m % HW
        tok_q = _region_token_offsets(qreg, t, GW, RH, RW, sqh, sqw)
        tok_g = _region_token_offsets(qreg, t, GW, RH, RW, sgh, sgw)
        tok_l = _region_token_offsets(qreg, t, GW, RH, RW, slh, slw)
        q = tl.load(q_base + tok_q[:, None] + offs_dq[None, :] * sqd,
                    mask=mask_m[:, None] & mask_dq[None, :], other=0.0)
        do = tl.load(g_base + tok_g[:, None] + offs_dv[None, :] * sgd,
                     mask=mask_m[:, None] & mask_dv[None, :], other=0.0)
        lse = tl.load(l_base + tok_l, mask=mask_m, other=float("inf")).to(ACC)
        delta = tl.load(d_base + tok_l, mask=mask_m, other=0.0).to(ACC)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
        p = tl.exp2(s - lse[:, None])  # [BLOCK_M, BLOCK_N]; rows past the list give exp2(-inf) = 0
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION, out_dtype=ACC)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION, out_dtype=ACC)

    dk = dk * scale
    tok_dk = _region_token_offsets(r, offs_n, GW, RH, RW, sdkh, sdkw)
    tl.store(DK_OUT + b * sdkb + head * sdkn + tok_dk[:, None] + offs_dq[None, :] * sdkd,
             dk.to(DK_OUT.dtype.element_ty), mask=mask_n[:, None] & mask_dq[None, :])
    tok_dv = _region_token_offsets(r, offs_n, GW, RH, RW, sdvh, sdvw)
    tl.store(DV_OUT + b * sdvb + head * sdvn + tok_dv[:, None] + offs_dv[None, :] * sdvd,
             dv.to(DV_OUT.dtype.element_ty), mask=mask_n[:, None] & mask_dv[None, :])


# ---------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------


def _config(dtype: torch.dtype, hw: int, L: int, dq: int, dv: int) -> dict:
    """Block sizes and numerics for one call (fp32/fp64 dots in full precision, fp32 accumulation)."""
    bdq, bdv = _np2(dq), _np2(dv)
    wide = max(bdq, bdv) > 64 or dtype in (torch.float32, torch.float64)
    bm = min(_np2(hw), 64)
    bn = min(_np2(L), 32 if wide else 64)
    return dict(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_DQ=bdq, BLOCK_DV=bdv,
        ACC=tl.float64 if dtype == torch.float64 else tl.float32,
        PRECISION="ieee" if dtype in (torch.float32, torch.float64) else None,
        num_warps=4 if bm * bn <= 64 * 64 else 8,
    )


def _strides(t: Tensor) -> tuple[int, ...]:
    return tuple(t.stride())


def _inverted_index(index: Tensor, R: int) -> tuple[Tensor, Tensor]:
    """Per flat key region ``b * R + j``: the flat query regions routed to it (one entry per slot).

    Returns ``ptr [B*R + 1]`` (CSR offsets) and ``qlist [B*R*topk]`` (query region within its image), int64.
    """
    B, _, topk = index.shape
    dev = index.device
    kflat = (index + torch.arange(0, B * R, R, device=dev).view(B, 1, 1)).reshape(-1)
    keys, order = torch.sort(kflat, stable=True)
    # Entry e of the flat index belongs to query region (e // topk) % R; searchsorted avoids bincount's sync.
    qlist = order.div_(topk, rounding_mode="floor").remainder_(R)
    ptr = torch.searchsorted(keys, torch.arange(B * R + 1, device=dev))
    return ptr, qlist


def _forward(q, k, v, index, rh, rw, scale):
    B, H, W, nh, dq = q.shape
    dv = v.shape[-1]
    gw = W // rw
    R = (H // rh) * gw
    topk = index.shape[-1]
    hw = rh * rw
    cfg = _config(q.dtype, hw, topk * hw, dq, dv)
    out = torch.empty(B, H, W, nh, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(B, H, W, nh, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                      device=q.device)
    grid = (B * R, triton.cdiv(hw, cfg["BLOCK_M"]), nh)
    _fwd_kernel[grid](
        q, k, v, out, lse, index,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(lse),
        R, gw, dq, dv, scale * LOG2E,
        TOPK=topk, RH=rh, RW=rw, **cfg,
    )
    return out, lse


def _backward(q, k, v, out, lse, index, gout, rh, rw, scale, need_q, need_kv):
    B, H, W, nh, dq = q.shape
    dv = v.shape[-1]
    gw = W // rw
    R = (H // rh) * gw
    topk = index.shape[-1]
    hw = rh * rw
    cfg = _config(q.dtype, hw, topk * hw, dq, dv)
    delta = torch.empty_like(lse)  # rowsum(dO * O), [B, H, W, nh], written by the dQ kernel
    gq = gk = gv = None
    if need_q:
        gq = torch.empty_like(q, memory_format=torch.contiguous_format)
    grid = (B * R, triton.cdiv(hw, cfg["BLOCK_M"]), nh)
    _bwd_dq_kernel[grid](
        q, k, v, out, gout, gq if need_q else q, lse, delta, index,
        *_strides(q), *_strides(k), *_strides(v), *_strides(out), *_strides(gout),
        *_strides(gq if need_q else q), *_strides(lse),
        R, gw, dq, dv, scale * LOG2E, scale,
        TOPK=topk, RH=rh, RW=rw, COMPUTE_DQ=need_q, **cfg,
    )
    if need_kv:
        ptr, qlist = _inverted_index(index, R)
        gk = torch.empty_like(k, memory_format=torch.contiguous_format)
        gv = torch.empty_like(v, memory_format=torch.contiguous_format)
        # Key tiles cover one region's tokens; query rows are packed across routed query regions.
        kcfg = dict(cfg, BLOCK_N=min(_np2(hw), 64), BLOCK_M=cfg["BLOCK_N"])
        grid = (B * R, triton.cdiv(hw, kcfg["BLOCK_N"]), nh)
        _bwd_dkdv_kernel[grid](
            q, k, v, gout, gk, gv, lse, delta, ptr, qlist,
            *_strides(q), *_strides(k), *_strides(v), *_strides(gout), *_strides(gk), *_strides(gv),
            *_strides(lse),
            R, gw, dq, dv, scale * LOG2E, scale,
            RH=rh, RW=rw, **kcfg,
        )
    return gq, gk, gv


def forward(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size, scale: float) -> tuple[Tensor, Tensor]:
    """(out ``[B, H, W, heads, dv]``, base-2 logsumexp ``[B, H, W, heads]``) of validated arguments."""
    rh, rw = region_size
    if q.numel() == 0:  # batch 0: nothing to launch
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(*q.shape[:-1], v.shape[-1]), q.new_empty(q.shape[:-1], dtype=acc)
    with _on_device(q):
        return _forward(q, k, v, index.contiguous(), rh, rw, scale)


def backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, index: Tensor, gout: Tensor, region_size,
             scale: float, need_q: bool, need_kv: bool):
    """(dq, dk, dv), None where not needed."""
    rh, rw = region_size
    if q.numel() == 0:
        return (torch.zeros_like(q) if need_q else None, torch.zeros_like(k) if need_kv else None,
                torch.zeros_like(v) if need_kv else None)
    with _on_device(q):
        return _backward(q, k, v, out, lse, index.contiguous(), gout, rh, rw, scale, need_q, need_kv)


def _on_device(q: Tensor):
    # Triton launches on the current CUDA device: make it the inputs' one.
    return torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()


def unsupported(q: Tensor, k: Tensor, v: Tensor) -> str | None:
    """None if the kernels run these (validated) tensors, else the reason, naming the argument: CPU tensors
    outside the Triton interpreter, dtypes other than fp16/bf16/fp32/fp64 (fp64 only in the interpreter),
    head dims > 256."""
    if q.dtype not in _DTYPES:
        return f"dtype {q.dtype} is not supported by triton (float16, bfloat16, float32; float64 in the interpreter)"
    if not interpreting():
        if not q.is_cuda:
            return f"device {q.device}: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
        if q.dtype == torch.float64:
            return "dtype float64 is supported by triton only in the interpreter (TRITON_INTERPRET=1)"
    if max(q.shape[-1], v.shape[-1]) > _MAX_HEAD_DIM:
        return f"head_dim (query: {q.shape[-1]}, value: {v.shape[-1]}) must be <= {_MAX_HEAD_DIM} for triton"
    return None
