"""Index rules of neighborhood attention, one axis at a time (the n-D neighbourhood is their product).

Per axis of length L: dilation d splits the axis into d interleaved groups (position i is in group
i % d at group coordinate i // d, group length ceil((L - i % d) / d)). Inside its group a query gets a
window of k consecutive group coordinates. Stride s groups queries in tiles of s that share the window
of their tile's leader (NATTEN's Generalized Neighborhood Attention):

- non-causal: leader = min(tile * s + s // 2, Lg - 1); window start = clamp(leader - k // 2, 0, Lg - k),
  i.e. shifted inward at the borders, never padded;
- causal: leader = min(tile * s + s - 1, Lg - 1); keys are [leader - k + 1, query] (fewer near the start).

The relative-position-bias index of (query i, key j) is (j - i) / d + k - 1 (key minus query).
Built with numpy (never traced: under torch.export / ONNX export the results become graph constants).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["AxisWindows", "AxisTiles", "axis_windows", "axis_tiles", "axis_dense"]


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


def axis_dense(L: int, k: int, d: int, s: int, causal: bool):
    """Dense [L, L] key mask and rpb index, written as NATTEN's mask predicate (the reference oracle)."""
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
