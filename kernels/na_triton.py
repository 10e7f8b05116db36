"""Fused neighborhood attention in Triton (1-D / 2-D / 3-D, dilation, stride, causal, RPB), forward + backward.

Run by ``backend="triton"`` through the ``visionattn::na_*`` ops (``ops.py``) with validated arguments
(``NAConfig``), heads-last ``[B, *spatial, heads, head_dim]``. Every rank runs through one 3-D kernel (missing
leading axes have size 1, kernel 1). A program owns a tile of positions of one dilation group and masks every
(query, key) pair with the window rule of ``_na_index``: forward / dQ over the key blocks of the tile's windows
(online softmax in the log2 domain, logsumexp saved), dK / dV over the queries that can reach a key tile, dRPB
from the dQ pass. A non-finite *value* reaches every query of its tile (as in flash attention). docs/kernels.md.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from visionattn._environment import settings

from ._common import LOG2E, interpreting
from ._na_index import axis_windows

__all__ = ["forward", "backward", "unsupported"]

_LOG2E = tl.constexpr(LOG2E)
_MAX_HEAD_DIM = 256


@triton.jit
def _window(g, lg, K: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr):
    """(start, lo, hi) in group coordinates of the window of query ``g``; keys lo..hi are attended."""
    if CAUSAL:
        leader = tl.minimum((g // S) * S + S - 1, lg - 1)
        start = leader - K + 1
        lo = tl.maximum(start, 0)
        hi = g
    else:
        leader = tl.minimum((g // S) * S + S // 2, lg - 1)
        start = tl.minimum(tl.maximum(leader - K // 2, 0), lg - K)
        lo = start
        hi = start + K - 1
    return start, lo, hi


@triton.jit
def _tile_coords(pid, NTX, NTY, NTZ, DX, DY, DZ, X, Y, Z):
    """Program id -> per axis (group p, first group coordinate g0, group length lg)."""
    tz = pid % (NTZ * DZ)
    r = pid // (NTZ * DZ)
    ty = r % (NTY * DY)
    tx = r // (NTY * DY)
    px, jx = tx // NTX, tx % NTX
    py, jy = ty // NTY, ty % NTY
    pz, jz = tz // NTZ, tz % NTZ
    lgx = (X - px + DX - 1) // DX
    lgy = (Y - py + DY - 1) // DY
    lgz = (Z - pz + DZ - 1) // DZ
    return px, py, pz, jx, jy, jz, lgx, lgy, lgz


@triton.jit
def _split(offs, TY: tl.constexpr, TZ: tl.constexpr):
    return offs // (TY * TZ), (offs // TZ) % TY, offs % TZ


@triton.jit
def _logits(q, k, qx, qy, qz, kx, ky, kz, valid, rpb_base, qk_scale,
            KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr, HAS_RPB: tl.constexpr, PREC: tl.constexpr,
            ACC: tl.constexpr):
    """Masked logits in the log2 domain: [M, N] from q [M, D], k [N, D] and group coordinates."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * qk_scale
    if HAS_RPB:
        rx = tl.minimum(tl.maximum(kx[None, :] - qx[:, None] + KX - 1, 0), 2 * KX - 2)
        ry = tl.minimum(tl.maximum(ky[None, :] - qy[:, None] + KY - 1, 0), 2 * KY - 2)
        rz = tl.minimum(tl.maximum(kz[None, :] - qz[:, None] + KZ - 1, 0), 2 * KZ - 2)
        idx = (rx * (2 * KY - 1) + ry) * (2 * KZ - 1) + rz
        s += tl.load(rpb_base + idx, mask=valid, other=0.0).to(ACC) * _LOG2E
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _pair_mask(qx, qy, qz, qok, lox, hix, loy, hiy, loz, hiz, kx, ky, kz, kok):
    return (qok[:, None] & kok[None, :]
            & (kx[None, :] >= lox[:, None]) & (kx[None, :] <= hix[:, None])
            & (ky[None, :] >= loy[:, None]) & (ky[None, :] <= hiy[:, None])
            & (kz[None, :] >= loz[:, None]) & (kz[None, :] <= hiz[:, None]))


@triton.jit
def _na_fwd_dq_kernel(
    Q, K, V, OUT, LSE, DO, DELTA, DQ, DS, RPB,
    X, Y, Z, DX, DY, DZ, NTX, NTY, NTZ, NH, NHK, D, DV, qk_scale, scale,
    KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr,
    SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr,
    CX: tl.constexpr, CY: tl.constexpr, CZ: tl.constexpr,
    TAX: tl.constexpr, TAY: tl.constexpr, TAZ: tl.constexpr,
    TBX: tl.constexpr, TBY: tl.constexpr, TBZ: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    HAS_RPB: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
    BACKWARD: tl.constexpr, STORE_DS: tl.constexpr,
):
    """Forward (O, LSE) or, with BACKWARD, dQ (and dLogits in window order when STORE_DS).

    Query head h reads key/value head h // (NH // NHK) (GQA / MQA when NHK < NH)."""
    BLOCK_M: tl.constexpr = TAX * TAY * TAZ
    BLOCK_N: tl.constexpr = TBX * TBY * TBZ
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NH
    h = bh % NH
    hk = h // (NH // NHK)
    px, py, pz, jx, jy, jz, lgx, lgy, lgz = _tile_coords(pid, NTX, NTY, NTZ, DX, DY, DZ, X, Y, Z)
    gx0, gy0, gz0 = jx * TAX, jy * TAY, jz * TAZ
    if (gx0 >= lgx) | (gy0 >= lgy) | (gz0 >= lgz):
        return

    offs_m = tl.arange(0, BLOCK_M)
    mx, my, mz = _split(offs_m, TAY, TAZ)
    qx, qy, qz = gx0 + mx, gy0 + my, gz0 + mz
    qok = (qx < lgx) & (qy < lgy) & (qz < lgz)
    sx, lox, hix = _window(qx, lgx, KX, SX, CX)
    sy, loy, hiy = _window(qy, lgy, KY, SY, CY)
    sz, loz, hiz = _window(qz, lgz, KZ, SZ, CZ)
    # rows of [B, X, Y, Z, heads]; 64-bit (large maps x batch overflow int32)
    qrow = ((((b * X).to(tl.int64) + px + qx * DX) * Y + py + qy * DY) * Z + pz + qz * DZ) * NH + h
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    q = tl.load(Q + qrow[:, None] * D + offs_d[None, :], mask=qok[:, None] & dmask[None, :], other=0.0)

    # key region: union of the tile's windows (windows are monotone in the query coordinate)
    _s, rlx, _h = _window(gx0, lgx, KX, SX, CX)
    _s, rly, _h = _window(gy0, lgy, KY, SY, CY)
    _s, rlz, _h = _window(gz0, lgz, KZ, SZ, CZ)
    _s, _l, rhx = _window(tl.minimum(gx0 + TAX - 1, lgx - 1), lgx, KX, SX, CX)
    _s, _l, rhy = _window(tl.minimum(gy0 + TAY - 1, lgy - 1), lgy, KY, SY, CY)
    _s, _l, rhz = _window(tl.minimum(gz0 + TAZ - 1, lgz - 1), lgz, KZ, SZ, CZ)

    rpb_base = RPB + h * ((2 * KX - 1) * (2 * KY - 1) * (2 * KZ - 1))
    offs_n = tl.arange(0, BLOCK_N)
    nx, ny, nz = _split(offs_n, TBY, TBZ)

    if BACKWARD:
        do = tl.load(DO + qrow[:, None] * DV + offs_dv[None, :], mask=qok[:, None] & dvmask[None, :], other=0.0)
        lse = tl.load(LSE + qrow, mask=qok, other=0.0)
        delta = tl.load(DELTA + qrow, mask=qok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
    else:
        m_i = tl.full([BLOCK_M], -1e30, dtype=ACC)
        l_i = tl.zeros([BLOCK_M], dtype=ACC)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC)

    for bx in range(rlx, rhx + 1, TBX):
        for by in range(rly, rhy + 1, TBY):
            for bz in range(rlz, rhz + 1, TBZ):
                kx, ky, kz = bx + nx, by + ny, bz + nz
                kok = (kx <= rhx) & (ky <= rhy) & (kz <= rhz)
                krow = ((((b * X).to(tl.int64) + px + kx * DX) * Y + py + ky * DY) * Z + pz + kz * DZ) * NHK + hk
                k = tl.load(K + krow[:, None] * D + offs_d[None, :], mask=kok[:, None] & dmask[None, :], other=0.0)
                v = tl.load(V + krow[:, None] * DV + offs_dv[None, :], mask=kok[:, None] & dvmask[None, :],
                            other=0.0)
                valid = _pair_mask(qx, qy, qz, qok, lox, hix, loy, hiy, loz, hiz, kx, ky, kz, kok)
                s = _logits(q, k, qx, qy, qz, kx, ky, kz, valid, rpb_base, qk_scale, KX, KY, KZ, HAS_RPB, PREC, ACC)
                if BACKWARD:
                    p = tl.math.exp2(s - lse[:, None])
                    dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=ACC)
                    ds = p * (dp - delta[:, None])
                    dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC, out_dtype=ACC)
                    if STORE_DS:
                        slot = (((kx[None, :] - sx[:, None]) * KY + (ky[None, :] - sy[:, None])) * KZ
                                + (kz[None, :] - sz[:, None]))
                        tl.store(DS + qrow[:, None] * (KX * KY * KZ) + slot, ds, mask=valid)
                else:
                    m_new = tl.maximum(m_i, tl.max(s, 1))
                    alpha = tl.math.exp2(m_i - m_new)
                    p = tl.math.exp2(s - m_new[:, None])
                    l_i = l_i * alpha + tl.sum(p, 1)
                    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC, out_dtype=ACC)
                    m_i = m_new

    if BACKWARD:
        dq = dq * scale
        tl.store(DQ + qrow[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=qok[:, None] & dmask[None, :])
    else:
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(OUT + qrow[:, None] * DV + offs_dv[None, :], out.to(OUT.dtype.element_ty),
                 mask=qok[:, None] & dvmask[None, :])
        tl.store(LSE + qrow, m_i + tl.math.log2(l_safe), mask=qok)


@triton.jit
def _query_range(k0, k1, lg, K: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr, T: tl.constexpr,
                 CAND: tl.constexpr):
    """Exact range of queries whose window meets keys k0..k1 (they lie within K + S of the keys)."""
    c = k0 - (K + S) + tl.arange(0, CAND)
    ok = (c >= 0) & (c < lg)
    _s, lo, hi = _window(tl.maximum(c, 0), lg, K, S, CAUSAL)
    first = tl.min(tl.where(ok & (hi >= k0), c, 2147483647), 0)
    last = tl.max(tl.where(ok & (lo <= k1), c, -1), 0)
    return first, last


@triton.jit
def _na_dkdv_kernel(
    Q, K, V, LSE, DO, DELTA, DK, DV_, RPB,
    X, Y, Z, DX, DY, DZ, NTX, NTY, NTZ, NH, NHK, D, DV, qk_scale, scale,
    KX: tl.constexpr, KY: tl.constexpr, KZ: tl.constexpr,
    SX: tl.constexpr, SY: tl.constexpr, SZ: tl.constexpr,
    CX: tl.constexpr, CY: tl.constexpr, CZ: tl.constexpr,
    TAX: tl.constexpr, TAY: tl.constexpr, TAZ: tl.constexpr,
    TBX: tl.constexpr, TBY: tl.constexpr, TBZ: tl.constexpr,
    CANDX: tl.constexpr, CANDY: tl.constexpr, CANDZ: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_RPB: tl.constexpr, PREC: tl.constexpr,
    ACC: tl.constexpr,
):
    """dK, dV: a program owns a key tile of one key/value head and visits every query block whose windows reach
    it, for each query head that reads this key/value head."""
    BLOCK_N: tl.constexpr = TAX * TAY * TAZ
    BLOCK_M: tl.constexpr = TBX * TBY * TBZ
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // NHK
    hk = bh % NHK
    px, py, pz, jx, jy, jz, lgx, lgy, lgz = _tile_coords(pid, NTX, NTY, NTZ, DX, DY, DZ, X, Y, Z)
    gx0, gy0, gz0 = jx * TAX, jy * TAY, jz * TAZ
    if (gx0 >= lgx) | (gy0 >= lgy) | (gz0 >= lgz):
        return

    offs_n = tl.arange(0, BLOCK_N)
    nx, ny, nz = _split(offs_n, TAY, TAZ)
    kx, ky, kz = gx0 + nx, gy0 + ny, gz0 + nz
    kok = (kx < lgx) & (ky < lgy) & (kz < lgz)
    krow = ((((b * X).to(tl.int64) + px + kx * DX) * Y + py + ky * DY) * Z + pz + kz * DZ) * NHK + hk
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    dmask = offs_d < D
    dvmask = offs_dv < DV
    k = tl.load(K + krow[:, None] * D + offs_d[None, :], mask=kok[:, None] & dmask[None, :], other=0.0)
    v = tl.load(V + krow[:, None] * DV + offs_dv[None, :], mask=kok[:, None] & dvmask[None, :], other=0.0)

    qlx, qhx = _query_range(gx0, tl.minimum(gx0 + TAX - 1, lgx - 1), lgx, KX, SX, CX, TAX, CANDX)
    qly, qhy = _query_range(gy0, tl.minimum(gy0 + TAY - 1, lgy - 1), lgy, KY, SY, CY, TAY, CANDY)
    qlz, qhz = _query_range(gz0, tl.minimum(gz0 + TAZ - 1, lgz - 1), lgz, KZ, SZ, CZ, TAZ, CANDZ)

    offs_m = tl.arange(0, BLOCK_M)
    mx, my, mz = _split(offs_m, TBY, TBZ)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=ACC)

    G = NH // NHK
    for gi in range(0, G):
        h = hk * G + gi
        rpb_base = RPB + h * ((2 * KX - 1) * (2 * KY - 1) * (2 * KZ - 1))
        for bx in range(qlx, qhx + 1, TBX):
            for by in range(qly, qhy + 1, TBY):
                for bz in range(qlz, qhz + 1, TBZ):
                    qx, qy, qz = bx + mx, by + my, bz + mz
                    qok = (qx <= qhx) & (qy <= qhy) & (qz <= qhz)
                    _s, lox, hix = _window(qx, lgx, KX, SX, CX)
                    _s, loy, hiy = _window(qy, lgy, KY, SY, CY)
                    _s, loz, hiz = _window(qz, lgz, KZ, SZ, CZ)
                    qrow = ((((b * X).to(tl.int64) + px + qx * DX) * Y + py + qy * DY) * Z + pz + qz * DZ) * NH + h
                    q = tl.load(Q + qrow[:, None] * D + offs_d[None, :], mask=qok[:, None] & dmask[None, :],
                                other=0.0)
                    do = tl.load(DO + qrow[:, None] * DV + offs_dv[None, :], mask=qok[:, None] & dvmask[None, :],
                                 other=0.0)
                    lse = tl.load(LSE + qrow, mask=qok, other=0.0)
                    delta = tl.load(DELTA + qrow, mask=qok, other=0.0)
                    valid = _pair_mask(qx, qy, qz, qok, lox, hix, loy, hiy, loz, hiz, kx, ky, kz, kok)
                    s = _logits(q, k, qx, qy, qz, kx, ky, kz, valid, rpb_base, qk_scale, KX, KY, KZ, HAS_RPB, PREC,
                                ACC)
                    p = tl.math.exp2(s - lse[:, None])  # [M, N]
                    dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC, out_dtype=ACC)
                    dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=ACC)
                    ds = p * (dp - delta[:, None])
                    dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC, out_dtype=ACC)

    tl.store(DK + krow[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=kok[:, None] & dmask[None, :])
    tl.store(DV_ + krow[:, None] * DV + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
             mask=kok[:, None] & dvmask[None, :])


# ---------------------------------------------------------------------------------------------------
# host side


def _acc(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(x: int, lo: int = 1) -> int:
    return max(lo, 1 << max(0, (int(x) - 1).bit_length()))


def _tiles(n: int, spatial3, ds3, interpret: bool) -> tuple[tuple, tuple]:
    """(owned tile, iterated block) shapes per axis, each 64 positions, fitted to the group lengths."""
    lg = [-(-L // d) for L, d in zip(spatial3, ds3)]
    env = settings()
    if n == 2 and env.na_triton_tiles_2d is not None:  # benchmarks
        return env.na_triton_tiles_2d
    if interpret and not env.na_triton_device_tiles:  # tests of the GPU's index arithmetic set it
        # the interpreter's cost is per program and per op, not per element: few, large tiles
        t = [min(32, _pow2(x)) for x in lg]
        while math.prod(t) > 1024:  # [M, N] logits stay small
            t[t.index(max(t))] //= 2
        while math.prod(t) < 16:  # tl.dot needs 16
            t[2] *= 2
        return tuple(t), tuple(t)
    if n == 1:
        return (1, 1, 64), (1, 1, 64)
    if n == 2:
        ty = min(8, _pow2(lg[2]))
        return (1, 64 // ty, ty), (1, 64 // ty, ty)
    tz = min(8, _pow2(lg[2]))
    ty = min(64 // tz, _pow2(lg[1]), 8)
    return (64 // (ty * tz), ty, tz), (64 // (ty * tz), ty, tz)


def _to3(t, n: int, fill):
    return (fill,) * (3 - n) + tuple(t)


def _meta(q: Tensor, k: Tensor, v: Tensor, cfg, rpb):
    n = q.dim() - 3
    B, *spatial, h, D = q.shape
    ks, ss, ds, cs = (tuple(x) for x in cfg[:4])
    spatial3 = _to3(spatial, n, 1)
    ks3, ds3, ss3, cs3 = _to3(ks, n, 1), _to3(ds, n, 1), _to3(ss, n, 1), _to3(cs, n, False)
    ta, tb = _tiles(n, spatial3, ds3, interpreting())
    nt = [_cdiv(_cdiv(L, d), t) for L, d, t in zip(spatial3, ds3, ta)]
    tiles = math.prod(nt[a] * ds3[a] for a in range(3))
    common = dict(
        KX=ks3[0], KY=ks3[1], KZ=ks3[2], SX=ss3[0], SY=ss3[1], SZ=ss3[2], CX=cs3[0], CY=cs3[1], CZ=cs3[2],
        TAX=ta[0], TAY=ta[1], TAZ=ta[2], TBX=tb[0], TBY=tb[1], TBZ=tb[2],
        BLOCK_D=_pow2(D, 16), BLOCK_DV=_pow2(v.shape[-1], 16), HAS_RPB=rpb is not None,
        # fp32 follows torch's matmul setting (tf32 off by default), fp16/bf16 ignore it
        PREC=(None if q.dtype in (torch.float16, torch.bfloat16)
              else "tf32" if q.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"),
        ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,  # fp64 only for gradcheck
    )
    hk = k.shape[-2]
    args = (*spatial3, *ds3, *nt, h, hk, D, v.shape[-1], cfg.scale * LOG2E, cfg.scale)
    return (tiles, B * h), (tiles, B * hk), args, common, ta, ks3, ss3


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg) -> tuple[Tensor, Tensor]:
    """Output ``[B, *S, heads, Dv]`` and the base-2 logsumexp ``[B, *S, heads]`` (fp32; fp64 for fp64)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    rpb = None if rpb is None else rpb.contiguous()
    o = torch.empty(*q.shape[:-1], v.shape[-1], device=q.device, dtype=q.dtype)
    lse = torch.empty(q.shape[:-1], device=q.device, dtype=_acc(q))
    if q.numel() == 0:
        return o, lse
    grid, _, args, common, _, _, _ = _meta(q, k, v, cfg, rpb)
    dummy = q if rpb is None else rpb
    with _on_device(q):
        _na_fwd_dq_kernel[grid](q, k, v, o, lse, q, lse, q, lse, dummy, *args, **common,
                                BACKWARD=False, STORE_DS=False, num_warps=4)
    return o, lse


@functools.lru_cache(maxsize=64)
def _rpb_index(spatial, ks, ds, ss, cs, device) -> Tensor:
    """[N, prod(k)] flat RPB-table index of every (query, window slot), window slots in row-major order."""
    n = len(spatial)
    sizes = [2 * kk - 1 for kk in ks]
    idx = torch.zeros((1,) * (2 * n), dtype=torch.long)
    for a in range(n):
        rel = axis_windows(spatial[a], ks[a], ds[a], ss[a], cs[a]).rel
        shape = [1] * (2 * n)
        shape[a], shape[n + a] = rel.shape
        idx = idx * sizes[a] + rel.reshape(shape)
    return idx.reshape(math.prod(spatial), math.prod(ks)).to(device)


def backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, lse: Tensor, delta: Tensor, cfg,
             need_drpb: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """dq, dk, dv (and drpb) from the base-2 logsumexp of the forward and ``delta = rowsum(dO * O) - dLSE``
    (natural-log units, ``[B, *S, heads]``)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    rpb = None if rpb is None else rpb.contiguous()
    do = do.contiguous()
    lse, delta = lse.contiguous(), delta.to(_acc(q)).contiguous()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    B, *spatial, h, _ = q.shape
    KK = math.prod(cfg.kernel_size)
    if q.numel() == 0:
        return dq, dk, dv, (torch.zeros_like(rpb) if need_drpb else None)
    grid, grid_kv, args, common, ta, ks3, ss3 = _meta(q, k, v, cfg, rpb)
    dsw = torch.zeros(*q.shape[:-1], KK, device=q.device, dtype=_acc(q)) if need_drpb else lse
    dummy = q if rpb is None else rpb
    cand = [_pow2(t + 2 * (kk + s)) for t, kk, s in zip(ta, ks3, ss3)]
    with _on_device(q):
        _na_fwd_dq_kernel[grid](q, k, v, q, lse, do, delta, dq, dsw, dummy, *args, **common,
                                BACKWARD=True, STORE_DS=need_drpb, num_warps=4)
        _na_dkdv_kernel[grid_kv](q, k, v, lse, do, delta, dk, dv, dummy, *args, **common,
                                 CANDX=cand[0], CANDY=cand[1], CANDZ=cand[2], num_warps=4)
    drpb = None
    if need_drpb:
        ks, ss, ds, cs = (tuple(x) for x in cfg[:4])
        idx = _rpb_index(tuple(spatial), ks, ds, ss, cs, q.device)
        dsum = dsw.sum(0).reshape(-1, h, KK).permute(1, 0, 2).reshape(h, -1)
        drpb = torch.zeros(h, rpb[0].numel(), device=q.device, dtype=_acc(q))
        drpb.index_add_(1, idx.reshape(-1), dsum)
        drpb = drpb.reshape(rpb.shape).to(rpb.dtype)
    return dq, dk, dv, drpb


def _on_device(q: Tensor):
    # Triton launches on the current CUDA device: make it the inputs' one.
    return torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()


def unsupported(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg) -> str | None:
    """None if the fused kernel runs these (validated) arguments, else the reason, naming the argument."""
    if q.dim() - 3 not in (1, 2, 3):
        return f"query rank {q.dim()} is not supported by triton"
    if max(q.shape[-1], v.shape[-1]) > _MAX_HEAD_DIM:
        return f"head_dim {max(q.shape[-1], v.shape[-1])} > {_MAX_HEAD_DIM} is not supported by triton"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"dtype {q.dtype} is not supported by triton (float16, bfloat16, float32)"
    if not interpreting():
        if not q.is_cuda:
            return f"device {q.device}: triton needs CUDA tensors (or TRITON_INTERPRET=1)"
        if q.dtype == torch.float64:
            return "dtype float64 is supported by triton only in the interpreter (TRITON_INTERPRET=1)"
    return None
