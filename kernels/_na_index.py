"""Index rules of neighborhood attention per axis (numpy), and the n-D index tensors of the torch path, cached.

Per axis of length L, dilation d splits the axis into d interleaved groups (position i: group i % d, group
coordinate i // d); inside its group a query attends to k consecutive group coordinates, the window of its stride
tile's leader, shifted inward at the borders (causal: the k coordinates ending at the leader, none after the
query). The RPB index of (query i, key j) is (j - i) / d + k - 1. The n-D neighbourhood is the product of the axes.
Built with numpy, never traced: under graph capture the index tensors become graph constants (docs/kernels.md).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._common import cached

__all__ = ["AxisWindows", "AxisTiles", "axis_windows", "axis_tiles", "WindowIndex", "window_index", "TileIndex",
           "tile_index", "tile_shape"]


class AxisWindows(NamedTuple):
    """Per query of one axis (``[L, k]`` each): key positions (clamped into the axis), validity (causal
    slots before the start are invalid), RPB index, key group coordinates (unclamped)."""

    pos: np.ndarray
    valid: np.ndarray
    rel: np.ndarray
    group_coord: np.ndarray


class AxisTiles(NamedTuple):
    """Query tiles of one axis and the key region each needs (see ``axis_tiles``)."""

    qpos: np.ndarray  # [n, t] query positions per tile
    kpos: np.ndarray  # [n, r] key positions per tile region
    mask: np.ndarray  # [n, t, r] key in the query's window
    rel: np.ndarray  # [n, t, r] RPB index
    inv: np.ndarray  # [L] flat (tile * t + slot) holding query p's result
    t: int
    r: int


def _groups(L: int, d: int):
    i = np.arange(L)
    m = i % d
    return m, i // d, (L - m + d - 1) // d


def axis_windows(L: int, k: int, d: int, s: int, causal: bool):
    """Per query of the axis: key positions [L, k] (clamped into the axis), validity, rpb index, group coords."""
    m, ig, lg = _groups(L, d)
    if causal:
        leader = np.minimum((ig // s) * s + s - 1, lg - 1)
        start = leader - k + 1
    else:
        leader = np.minimum((ig // s) * s + s // 2, lg - 1)
        start = np.minimum(np.maximum(leader - k // 2, 0), lg - k)
    kg = start[:, None] + np.arange(k)
    if causal:
        valid = (kg >= 0) & (kg <= ig[:, None])
    else:
        valid = np.ones((L, k), dtype=bool)
    pos = np.maximum(kg, 0) * d + m[:, None]
    rel = np.clip(kg - ig[:, None] + k - 1, 0, 2 * k - 2)
    return AxisWindows(pos, valid, rel, kg)


def axis_tiles(L: int, k: int, d: int, s: int, causal: bool, tile: int):
    """Query tiles and the key region each tile needs, for the tiled torch backend.

    Queries of one dilation group are cut in tiles of `t` consecutive group coordinates (the last
    tile of a group is shifted back so it stays inside the group; overlapping queries are computed
    twice and read back once). Each tile reads a region of `r` consecutive keys of its group.
    Returns ``AxisTiles``.
    """
    kg = axis_windows(L, k, d, s, causal).group_coord
    _, ig, lg = _groups(L, d)
    if causal:
        lo, hi = np.maximum(kg, 0), np.minimum(kg, ig[:, None])
    else:
        lo = hi = kg
    lo, hi = lo.min(1), hi.max(1)
    t = max(1, min(tile, L // d))
    tiles = []  # (group, first group coordinate)
    for g in range(d):
        n_g = (L - g + d - 1) // d
        starts = list(range(0, n_g - t + 1, t))
        if starts[-1] + t < n_g:
            starts.append(n_g - t)
        tiles += [(g, a) for a in starts]
    qps = [(np.arange(a, a + t) * d + g) for g, a in tiles]
    r = max(int(hi[qp].max() - lo[qp].min()) + 1 for qp in qps)
    qpos, kpos, mask, rel = [], [], [], []
    inv = np.full(L, -1, dtype=np.int64)
    for n, ((g, a), qp) in enumerate(zip(tiles, qps)):
        qg = np.arange(a, a + t)
        n_g = int(lg[g])
        rs = max(0, min(int(lo[qp].min()), n_g - r))
        rg = np.arange(rs, rs + r)
        in_group = rg < n_g
        kw = kg[qp]  # [t, k] group coordinates of each query's window
        msk = (rg[None] >= kw[:, :1]) & (rg[None] <= kw[:, -1:]) & in_group[None]
        if causal:
            msk &= rg[None] <= qg[:, None]
        qpos.append(qp)
        kpos.append(np.where(in_group, rg, n_g - 1) * d + g)
        mask.append(msk)
        rel.append(np.clip(rg[None] - qg[:, None] + k - 1, 0, 2 * k - 2))
        fresh = inv[qp] < 0
        inv[qp[fresh]] = n * t + np.arange(t)[fresh]
    return AxisTiles(np.stack(qpos), np.stack(kpos), np.stack(mask), np.stack(rel), inv, t, r)


# ---------------------------------------------------------------------------------------------------
# n-D index tensors (built once per configuration and device)


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


def _combine(parts: list[np.ndarray], n: int, block: int, op) -> np.ndarray:
    p = _outer(parts, n, block)
    out = p[0]
    for x in p[1:]:
        out = op(out, x)
    return out


def _rpb_strides(ks) -> list[int]:
    sizes = [2 * kk - 1 for kk in ks]
    return [math.prod(sizes[a + 1:]) for a in range(len(ks))]


def _flat(parts: list[np.ndarray], spatial) -> np.ndarray:
    """Per-axis positions [n_a, x_a] -> flat spatial index [prod(n_a) * prod(x_a)] (tile-major)."""
    n = len(parts)
    strides = [math.prod(spatial[a + 1:]) for a in range(n)]
    return _combine([x * strides[a] for a, x in enumerate(parts)], n, 2, np.add).reshape(-1)


class WindowIndex(NamedTuple):
    """Every query's window, explicitly (the gather path and the logits / AV functions)."""

    pos: tuple  # per axis [S_a, k_a] key positions
    valid: Tensor | None  # [*S, K] causal validity (None without causal axes)
    rpb_idx: Tensor  # [*S, K] flat RPB-table index


@torch.compiler.assume_constant_result
def window_index(spatial, ks, ss, ds, cs, device: str) -> WindowIndex:
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

    return cached(("gather", spatial, ks, ss, ds, cs, device), build)


class TileIndex(NamedTuple):
    """Query tiles and their key regions (the tiled torch path)."""

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
def tile_index(spatial, ks, ss, ds, cs, tile, device: str) -> TileIndex:
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

    return cached(("tile", spatial, ks, ss, ds, cs, tile, device), build)


@functools.lru_cache(maxsize=256)
def tile_shape(spatial, ks, ss, ds, cs, tile) -> tuple[int, int, int]:
    """(tiles, queries per tile, keys per tile region) of ``tile_index``, without building tensors (fake impls)."""
    tl = [axis_tiles(spatial[a], ks[a], ds[a], ss[a], cs[a], tile[a]) for a in range(len(spatial))]
    return math.prod(x.qpos.shape[0] for x in tl), math.prod(x.t for x in tl), math.prod(x.r for x in tl)
