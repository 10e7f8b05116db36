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


# ---------------------------------------------------------------------------------------------------
# The same tiles computed in the graph (torch ops on the shape): exports and traces hold no index constants


def _min(a, b):
    """min of two sizes that may be ints, SymInts (torch.export) or 0-dim traced tensors (torch.jit.trace): the
    result stays symbolic, so a graph built at one size is right at every size."""
    if isinstance(a, int) and isinstance(b, int):
        return min(a, b)
    if isinstance(a, Tensor):
        return torch.minimum(a, b) if isinstance(b, Tensor) else a.clamp(max=b)
    if isinstance(b, Tensor):
        return b.clamp(max=a)
    return torch.sym_min(a, b)


class GraphTiles(NamedTuple):
    """Tiles of the exported / traced formulation (``na_torch.plain``), index tensors computed from the shape.

    Per axis of length L, dilation d: d groups (position p: group p % d, coordinate p // d) of at most
    Lm = ceil(L / d) positions, each cut in n = ceil(Lm / t) tiles of t query slots (slots past the end of a
    group repeat its last query; their results are never read) and a region of r consecutive keys per tile.
    Tiles are ordered (groups of every axis, tiles of every axis), slots and region keys row-major over the axes.
    Window masks and RPB indices stay per axis (``[d * n * t * r]`` each; the neighbourhood is their product):
    an exported graph holds no ``[tiles, T, R]`` table, whatever its exporter folds.
    """

    qflat: Tensor  # [NT * T] flat query position of each slot
    kflat: Tensor  # [NT * R] flat key position of each region slot
    inv: Tensor  # [N] slot holding each position's result
    inside: tuple  # per axis [d * n * t * r] key in the query's window (bool)
    rel: tuple  # per axis [d * n * t * r] RPB index along the axis
    sizes: tuple  # per axis (d, n, t, r)
    tile: int  # T
    region: int  # R


def graph_axis_sizes(L, k: int, d: int, s: int, causal: bool, t: int, fit: bool | None = None):
    """Sizes of one axis of the graph tiles for a (possibly symbolic) length L and a requested tile t: (Lm group
    length, t tile, r region keys, n tiles per group). ``fit`` (default: L is not a SymInt) trims the tile and region
    to the group."""
    Lm = (L + d - 1) // d
    fit = not isinstance(L, torch.SymInt) if fit is None else fit
    if fit:
        t = _min(t, Lm)
    # not fitted (symbolic L: an export with dynamic height / width): no min, whose nested expressions make
    # torch.export's shape reasoning slow (minutes per model); slots past a group's end repeat its last query and
    # region keys past it are masked, so a tile or region larger than the group is only wasted work on small maps
    r = t + k - 1 if causal else t + k + s - 2  # the union of the windows of t consecutive queries
    if fit:
        r = _min(r, Lm)
    return Lm, t, r, (Lm + t - 1) // t


def _axis_graph(L, k: int, d: int, s: int, causal: bool, t: int, device, fit: bool | None = None):
    """One axis in torch ops on its (possibly symbolic) length: t, r, n and per-axis tensors
    qpos [d, n, t], kpos [d, n, r], inside [d, n, t, r], rel [d, n, t, r], inv [L] as (group, (tile, slot))."""
    Lm, t, r, n = graph_axis_sizes(L, k, d, s, causal, t, fit)
    g = torch.arange(d, device=device)
    lg = ((L - g + d - 1) // d).view(d, 1, 1)  # group lengths
    gq = (torch.arange(n, device=device) * t).view(1, n, 1) + torch.arange(t, device=device).view(1, 1, t)
    qc = torch.minimum(gq, lg - 1)  # [d, n, t] slots past the group's end repeat its last query
    if causal:
        leader = torch.minimum(qc // s * s + (s - 1), lg - 1)
        start, end = (leader - (k - 1)).clamp_min(0), qc
    else:
        leader = torch.minimum(qc // s * s + s // 2, lg - 1)
        start = torch.minimum((leader - k // 2).clamp_min(0), lg - k)
        end = start + (k - 1)
    # select + unsqueeze, not [:, :, :1]: a slice of a symbolic length has no provable size 1 to broadcast
    rs = torch.minimum(start.select(2, 0).unsqueeze(2), lg - r).clamp_min(0)  # [d, n, 1] region start (monotone)
    kc = rs + torch.arange(r, device=device)  # [d, n, r] key group coordinates (past the group's end: masked)
    inside = (kc.unsqueeze(2) >= start.unsqueeze(3)) & (kc.unsqueeze(2) <= end.unsqueeze(3))
    rel = (kc.unsqueeze(2) - qc.unsqueeze(3) + (k - 1)).clamp(0, 2 * k - 2)
    gd = g.view(d, 1, 1)
    kpos = torch.minimum(kc, lg - 1) * d + gd
    qpos = qc * d + gd
    p = torch.arange(L, device=device)
    c = p // d
    ct = c // t
    # c - ct * t, not c % t: the ONNX exporter has no remainder by a symbolic size (dynamic height / width)
    inv = (p % d, (ct, c - ct * t))  # group, (tile in the group, slot)
    return t, r, n, qpos, kpos, inside, rel, inv


def _bcast(parts: list[Tensor], lead: int) -> list[Tensor]:
    """Per-axis tensors [x_a, y_a, ...] viewed so they broadcast into [x_1..x_n, y_1..y_n, ...]."""
    n = len(parts)
    out = []
    for a, x in enumerate(parts):
        shape = []
        for i in range(lead):
            block = [1] * n
            block[a] = x.shape[i]
            shape += block
        out.append(x.reshape(shape))
    return out


def _prod(xs):
    out = 1
    for x in xs:
        out = out * x
    return out


def graph_tiles(spatial, ks, ss, ds, cs, tile, device, fit: bool | None = None) -> GraphTiles:
    """``GraphTiles`` of one call, computed with torch ops on ``spatial`` (ints, SymInts or traced sizes); ``fit``
    as ``graph_axis_sizes``."""
    n = len(spatial)
    axes = [_axis_graph(spatial[a], ks[a], ds[a], ss[a], cs[a], tile[a], device, fit) for a in range(n)]
    t = [x[0] for x in axes]
    r = [x[1] for x in axes]
    nt = [x[2] for x in axes]
    strides = [1] * n
    for a in range(n - 2, -1, -1):
        strides[a] = strides[a + 1] * spatial[a + 1]

    def flat(parts):  # per-axis [d, n, x] positions -> [d_1..d_n, n_1..n_n, x_1..x_n] flat spatial index
        out = None
        for x in _bcast([p * strides[a] for a, p in enumerate(parts)], 3):
            out = x if out is None else out + x
        return out.reshape(-1)

    qflat = flat([x[3] for x in axes])
    kflat = flat([x[4] for x in axes])
    # each position's slot: tile (groups of every axis, then tiles of every axis) * T + slot (row-major)
    T, R = _prod(t), _prod(r)
    all_tiles = _prod(nt)
    tile_id = slot_id = None
    for a, x in enumerate(axes):
        g, c = x[7]
        tid = g * (math.prod(ds[a + 1:]) * all_tiles) + c[0] * _prod(nt[a + 1:])
        sid = c[1] * _prod(t[a + 1:])
        shape = [1] * n
        shape[a] = -1
        tid, sid = tid.reshape(shape), sid.reshape(shape)
        tile_id = tid if tile_id is None else tile_id + tid
        slot_id = sid if slot_id is None else slot_id + sid
    inv = (tile_id * T + slot_id).reshape(-1)
    return GraphTiles(qflat, kflat, inv, tuple(x[5].reshape(-1) for x in axes), tuple(x[6].reshape(-1) for x in axes),
                      tuple((ds[a], nt[a], t[a], r[a]) for a in range(n)), T, R)


def graph_bias(ix: GraphTiles, rpb: Tensor | None, heads: int, dtype) -> Tensor:
    """The additive logit bias ``[heads or 1, NT, T, R]`` of ``ix``: RPB inside each window, -inf outside. Built by
    one gather per axis of the RPB table (``[heads, 2k_1 - 1, ...]``) and per-axis masks, then one permutation
    into tile order (constant work per call, independent of the batch; onnxruntime folds it at load)."""
    n = len(ix.sizes)

    def outside(m):  # 0 inside the window, -inf outside
        return torch.zeros_like(m, dtype=dtype).masked_fill(~m, float("-inf"))

    if rpb is None:
        bias = None
        for a, m in enumerate(ix.inside):
            shape = [1] * (n + 1)
            shape[1 + a] = -1
            term = outside(m).reshape(shape)
            bias = term if bias is None else bias + term
    else:
        bias = rpb.reshape(heads, *rpb.shape[1:])
        for a, (rel, m) in enumerate(zip(ix.rel, ix.inside)):
            shape = [1] * (n + 1)
            shape[1 + a] = -1
            bias = bias.index_select(1 + a, rel) + outside(m).reshape(shape)
    # [hb, P_1, ..., P_n] with P_a = (d_a, n_a, t_a, r_a) -> [hb, d_1..d_n, n_1..n_n, t_1..t_n, r_1..r_n]
    hb = bias.shape[0]
    bias = bias.reshape(hb, *[s for sz in ix.sizes for s in sz])
    perm = [0] + [1 + 4 * a + j for j in range(4) for a in range(n)]
    return bias.permute(perm).reshape(hb, -1, ix.tile, ix.region)
