"""Neighborhood attention in plain PyTorch: the tiled ``torch`` backend and the explicit-window ``gather`` one.

``torch``: queries in small tiles (``TILE``), each attending densely to the key region its windows cover, with a
cached mask / RPB index: batched matmuls over all tiles, memory O(N * region). ``forward`` / ``backward`` run inside
the ``visionattn::na_*`` ops (``ops.py``) and, while exporting to ONNX or tracing, as plain differentiable ops.
``gather``: every query's k^d keys gathered explicitly (memory O(N k^d D)); also the logits / AV functions.
Non-finite inputs reach exactly the queries whose windows hold them, as in the reference.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ._common import acc_dtype, capturing, untraced
from ._na_index import TileIndex, WindowIndex, graph_axis_sizes, graph_bias, graph_tiles, tile_index, window_index

__all__ = ["TILE", "forward", "backward", "gather", "qk", "av", "window_logits", "window_av", "gather_windows", "merge"]

# queries per tile along each axis (measured on CPU for NAT-like shapes: small tiles keep the work in cache)
TILE = {1: (32,), 2: (4, 8), 3: (2, 2, 8)}


def _kv_heads(x: Tensor, heads: int) -> Tensor:
    """GQA for the explicit paths: key/value heads repeated to the query heads ([.., kv_heads, D])."""
    g = heads // x.shape[-2]
    return x if g == 1 else x.repeat_interleave(g, dim=-2)


def _lse(logits: Tensor) -> Tensor:
    return logits.to(acc_dtype(logits.dtype)).logsumexp(-1)


def merge(outputs: list[Tensor], lses: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Attention outputs over disjoint key sets merged by their natural logsumexps (see ``merge_attentions``)."""
    acc = acc_dtype(outputs[0].dtype)
    stacked = torch.stack([x.to(acc) for x in lses])
    lse = stacked.logsumexp(0)
    w = (stacked - lse).exp().unsqueeze(-1)
    out = sum(w[i] * o.to(acc) for i, o in enumerate(outputs))
    return out.to(outputs[0].dtype), lse


# ---------------------------------------------------------------------------------------------------
# gather: explicit windows (also the logits / AV split functions)


def gather_windows(x: Tensor, pos) -> Tensor:
    """[B, *S, h, D] -> [B, *S, h, K, D] with K = prod(k_a), window order row-major over the axes."""
    n = len(pos)
    B, h, D = x.shape[0], x.shape[-2], x.shape[-1]
    for a, p in enumerate(pos):
        # axis a of the input sits at dim 1 + 2a once the previous axes have become (S_b, k_b) pairs
        dim = 1 + 2 * a
        x = x.index_select(dim, p.reshape(-1))
        x = x.reshape(*x.shape[:dim], p.shape[0], p.shape[1], *x.shape[dim + 1:])
    # x: [B, S1, k1, S2, k2, ..., h, D]
    perm = [0] + [1 + 2 * a for a in range(n)] + [2 * n + 1] + [2 + 2 * a for a in range(n)] + [2 * n + 2]
    x = x.permute(perm)
    # a list, not a generator: dynamo cannot trace math.prod over a generator (fullgraph compile)
    return x.reshape(B, *x.shape[1:n + 1], h, math.prod([p.shape[1] for p in pos]), D)


def window_logits(q, k, rpb, cfg):
    """[B, *S, h, K] pre-softmax logits (invalid causal slots -inf) and the window index."""
    spatial = tuple(q.shape[1:-2])
    index = window_index(spatial, *cfg[:4], str(q.device))
    kw = gather_windows(_kv_heads(k, q.shape[-2]), index.pos)
    logits = ((q * cfg.scale).unsqueeze(-2) @ kw.transpose(-1, -2)).squeeze(-2)
    if rpb is not None:
        logits = logits + rpb.reshape(rpb.shape[0], -1)[:, index.rpb_idx].movedim(0, -2)
    if index.valid is not None:
        logits = logits.masked_fill(~index.valid.unsqueeze(-2), float("-inf"))
    return logits, index


def window_av(p: Tensor, v: Tensor, index: WindowIndex) -> Tensor:
    """[B, *S, h, K] weights x the value windows -> [B, *S, h, Dv]."""
    vw = gather_windows(_kv_heads(v, p.shape[-2]), index.pos)
    return (p.unsqueeze(-2) @ vw).squeeze(-2)


def gather(q, k, v, rpb, cfg, ak=None, av=None, need_lse=False):
    """The ``gather`` backend: (out, natural logsumexp or None); plain differentiable torch ops."""
    logits, index = window_logits(q, k, rpb, cfg)
    K = logits.shape[-1]
    if ak is not None:
        h = q.shape[-2]
        extra = torch.einsum("b...hd,bnhd->b...hn", q * cfg.scale, _kv_heads(ak, h))
        logits = torch.cat([logits, extra], -1)
    p = logits.softmax(-1)
    out = window_av(p[..., :K], v, index)
    if ak is not None:
        out = out + torch.einsum("b...hn,bnhd->b...hd", p[..., K:], _kv_heads(av, q.shape[-2]))
    return out, (_lse(logits) if need_lse else None)


# ---------------------------------------------------------------------------------------------------
# torch: tiles of queries, dense inside the key region of the tile
#
# The hot loop is `forward` / `backward` below: per call one gather of q (tile order) and of
# k / v (tile key regions), then batched [T, D] x [D, R] matmuls over all tiles at once, masked_fill, softmax,
# [T, R] x [R, Dv]. Layout inside: [B, kv_heads, tiles, g * T, .] with the g = heads / kv_heads query heads of a
# key/value head stacked on the query rows (g = 1 without GQA: plain views of [B, heads, tiles, T, .]).


def _heads_first(x: Tensor, flat: Tensor | None) -> Tensor:
    """[B, *S, h, D] -> [B, h, len(flat), D]: one transpose copy, then one contiguous gather."""
    B, h, D = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.reshape(B, math.prod(x.shape[1:-2]), h, D).transpose(1, 2).contiguous()
    return x if flat is None else x.index_select(2, flat)


def _group(x: Tensor, hk: int) -> Tensor:
    """[B, h, NT, T, C] -> [B, hk, NT, g*T, C] (query heads of one key/value head on the rows)."""
    B, h, NT, T, C = x.shape
    if h == hk:
        return x
    return x.view(B, hk, h // hk, NT, T, C).transpose(2, 3).reshape(B, hk, NT, h // hk * T, C)


def _ungroup(x: Tensor, h: int) -> Tensor:
    """Inverse of `_group`: [B, hk, NT, g*T, C] -> [B, h, NT * T, C]."""
    B, hk, NT, gT, C = x.shape
    if h != hk:
        x = x.view(B, hk, NT, h // hk, gT * hk // h, C).transpose(2, 3)
    return x.reshape(B, h, NT * (gT * hk // h), C)


def _group_rows(x: Tensor, h: int, hk: int) -> Tensor:
    """Per-head tile tables [h, NT, T, R] -> [hk, NT, g*T, R]."""
    if h == hk:
        return x
    _, NT, T, R = x.shape
    return x.view(hk, h // hk, NT, T, R).transpose(1, 2).reshape(hk, NT, h // hk * T, R)


def _tile_q(x: Tensor, ix: TileIndex, hk: int) -> Tensor:
    """[B, *S, h, C] -> [B, hk, NT, g*T, C] in tile order (queries computed twice appear twice)."""
    B, h, C = x.shape[0], x.shape[-2], x.shape[-1]
    return _group(_heads_first(x, ix.qflat).view(B, h, ix.n_tiles, ix.tile, C), hk)


def _tile_grad(x: Tensor, ix: TileIndex, hk: int) -> Tensor:
    """Like `_tile_q` for a gradient w.r.t. the output: only the slot each query's result is read from gets it
    (a query computed twice by overlapping tiles counts once)."""
    B, h, C = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.reshape(B, math.prod(x.shape[1:-2]), h, C).transpose(1, 2)
    if ix.inv is not None:
        x = x.new_zeros(B, h, ix.n_tiles * ix.tile, C).index_copy_(2, ix.inv, x)
    return _group(x.reshape(B, h, ix.n_tiles, ix.tile, C), hk)


def _untile(x: Tensor, ix: TileIndex, spatial, h: int) -> Tensor:
    """[B, hk, NT, g*T, C] -> [B, *S, h, C] reading each query's result from its slot."""
    x = _ungroup(x, h)
    if ix.inv is not None:
        x = x.index_select(2, ix.inv)
    return x.transpose(1, 2).reshape(x.shape[0], *spatial, h, x.shape[-1])


def _rows(x: Tensor, h: int, hk: int) -> Tensor:
    """A per-tile table [NT, T, R] repeated for the g query heads on the rows: [NT, g*T, R]."""
    if h == hk:
        return x
    NT, T, R = x.shape
    return x.unsqueeze(1).expand(NT, h // hk, T, R).reshape(NT, h // hk * T, R)


def _finite(*ts) -> bool:
    """All of ``ts`` finite (one cheap reduction each; an overflowing sum only costs the exact path)."""
    return bool(torch.isfinite(sum(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
                                   for t in ts if t is not None)))


def forward(q, k, v, rpb, cfg, ak=None, av=None, need_lse=False, need_p=False, tile=None):
    """(out [B, *S, h, Dv], natural lse [B, *S, h] or None, probabilities [B, hk, NT, g*T, R + N_extra] or None).

    Plain differentiable torch ops: run under no_grad inside the custom op, with autograd while exporting."""
    n = q.dim() - 3
    B, *spatial, h, D = q.shape
    spatial = tuple(spatial)
    hk, Dv = k.shape[-2], v.shape[-1]
    ix = tile_index(spatial, *cfg[:4], tuple(tile or TILE[n]), str(q.device))
    NT, R = ix.n_tiles, ix.region
    qt = _tile_q(q, ix, hk)  # [B, hk, NT, gT, D]
    # scale q before the dot product (as NATTEN); in place when the gather made a fresh tensor
    qt = qt * cfg.scale if ix.qflat is None else qt.mul_(cfg.scale)
    kt = _heads_first(k, ix.kflat).view(B, hk, NT, R, D)
    vt = _heads_first(v, ix.kflat).view(B, hk, NT, R, Dv)
    logits = qt @ kt.transpose(-1, -2)  # [B, hk, NT, gT, R]
    # Finite key / value / RPB (checked eagerly): one additive bias with -inf outside the windows. Otherwise (and
    # while exporting) masked_fill, so that a non-finite key stays out of the windows that do not contain it.
    exact = capturing() or not _finite(k, v, rpb)
    bias = None if rpb is None else _group_rows(rpb.reshape(h, -1)[:, ix.rpb_idx], h, hk)
    if exact:
        if bias is not None:
            logits = logits.add_(bias)
        logits = logits.masked_fill_(_rows(ix.outside, h, hk), float("-inf"))
    elif bias is not None:
        logits = logits.add_(bias.masked_fill(_rows(ix.outside, h, hk), float("-inf")))
    else:
        logits = logits.add_(_rows(ix.mask_bias, h, hk).to(q.dtype))
    if ak is not None:
        logits = torch.cat([logits, qt @ ak.permute(0, 2, 3, 1).unsqueeze(2)], -1)  # + [B, hk, NT, gT, Na]
    p = logits.softmax(-1)
    if ak is None:
        out = p @ vt  # [B, hk, NT, gT, Dv]
    else:
        out = p[..., :R] @ vt + p[..., R:] @ av.transpose(1, 2).unsqueeze(2)
    out = _untile(out, ix, spatial, h)
    if exact and not capturing() and not _finite(v):
        # a key region is shared by a tile of queries: 0 * inf would reach queries whose window misses the value
        out = gather(q, k, v, rpb, cfg, ak, av)[0]
    lse = _untile(_lse(logits).unsqueeze(-1), ix, spatial, h).squeeze(-1) if need_lse else None
    return out, lse, (p if need_p else None)


def backward(dout, dlse, q, k, v, rpb, ak, av, out, p, cfg, need_drpb: bool, tile=None):
    """Gradients of `forward` from its saved probabilities ``p`` (softmax backward, as autograd)."""
    n = q.dim() - 3
    B, *spatial, h, D = q.shape
    spatial = tuple(spatial)
    N = math.prod(spatial)
    hk, Dv = k.shape[-2], v.shape[-1]
    ix = tile_index(spatial, *cfg[:4], tuple(tile or TILE[n]), str(q.device))
    NT, R = ix.n_tiles, ix.region
    qt = _tile_q(q, ix, hk)
    qt = qt * cfg.scale if ix.qflat is None else qt.mul_(cfg.scale)
    kt = _heads_first(k, ix.kflat).view(B, hk, NT, R, D)
    vt = _heads_first(v, ix.kflat).view(B, hk, NT, R, Dv)
    dot = _tile_grad(dout.to(q.dtype), ix, hk)  # [B, hk, NT, gT, Dv], zero in the slots not read back
    dp = dot @ vt.transpose(-1, -2)
    if ak is not None:
        akt, avt = ak.transpose(1, 2).unsqueeze(2), av.transpose(1, 2).unsqueeze(2)  # [B, hk, 1, Na, .]
        dp = torch.cat([dp, dot @ avt.transpose(-1, -2)], -1)
    delta = (dp.unsqueeze(-2) @ p.unsqueeze(-1)).squeeze(-1)  # rowsum(dp * p) without a [.., R] temporary
    if dlse is not None:
        delta = delta - _tile_grad(dlse.unsqueeze(-1).to(q.dtype), ix, hk)
    ds = dp.sub_(delta).mul_(p)  # d logits (q already scaled), in place of dp
    dsw, pw = (ds, p) if ak is None else (ds[..., :R], p[..., :R])
    dq = dsw @ kt
    if ak is not None:
        dq = dq + ds[..., R:] @ akt
    dq = _untile(dq * cfg.scale, ix, spatial, h)
    dk = q.new_zeros(B, hk, N, D).index_add_(2, ix.kflat, (dsw.transpose(-1, -2) @ qt).reshape(B, hk, NT * R, D))
    dv = q.new_zeros(B, hk, N, Dv).index_add_(2, ix.kflat, (pw.transpose(-1, -2) @ dot).reshape(B, hk, NT * R, Dv))
    dk = dk.transpose(1, 2).reshape(k.shape)
    dv = dv.transpose(1, 2).reshape(v.shape)
    dak = dav = None
    if ak is not None:
        rows = lambda x: x.reshape(B, hk, -1, x.shape[-1])  # noqa: E731  all tiles' rows of one kv head
        dak = (rows(ds[..., R:]).transpose(-1, -2) @ rows(qt)).transpose(1, 2)
        dav = (rows(p[..., R:]).transpose(-1, -2) @ rows(dot)).transpose(1, 2)
    drpb = None
    if need_drpb:
        dsum = _ungroup(dsw.sum(0, keepdim=True), h).reshape(h, -1)  # [h, NT * T * R]
        drpb = rpb.new_zeros(h, rpb[0].numel()).index_add_(1, ix.rpb_idx.reshape(-1), dsum).reshape(rpb.shape)
    return dq, dk, dv, drpb, dak, dav



# ---------------------------------------------------------------------------------------------------
# split calls: logits (QK) and AV in window order


def qk(q: Tensor, k: Tensor, rpb: Tensor | None, cfg) -> Tensor:
    """Pre-softmax window logits ``[B, heads, *S, K]`` (row-major window order; invalid causal slots -inf)."""
    return window_logits(q, k, rpb, cfg)[0].movedim(-2, 1)


def av(attn: Tensor, v: Tensor, cfg) -> Tensor:
    """Window weights ``[B, heads, *S, K]`` x the value windows -> ``[B, *S, heads, Dv]``."""
    index = window_index(tuple(v.shape[1:-2]), *cfg[:4], str(v.device))
    p = attn.movedim(1, -2)  # [B, *S, h, K]
    if index.valid is not None:  # slots before a causal window's start hold no key
        p = p.masked_fill(~index.valid.unsqueeze(-2), 0)
    return window_av(p, v, index)


# ---------------------------------------------------------------------------------------------------
# plain: the exported / traced formulation (index tensors computed in the graph from the shape)

# queries per tile along each axis of the exported graph where the sizes are symbolic (dynamic height / width)
GRAPH_TILE = {1: (32,), 2: (8, 8), 3: (2, 4, 8)}
# graph tile cost per tile and (batch x head): tile rows x region keys x (D + Dv) multiply-adds plus this fixed
# cost, fitted to onnxruntime on CPU (1 thread, AMD EPYC Zen 3 AVX2) over NAT / DiNAT shapes, k = 7, tiles 4..14
_TILE_COST = 112_000


def graph_tile(spatial, cfg, dims: int) -> tuple[int, ...]:
    """Queries per tile along each axis for concrete ``spatial`` sizes: the tiling of least modelled onnxruntime
    cost (masked QK / AV work over the tiles' key regions plus a fixed cost per tile; ``dims`` = D + Dv);
    ``GRAPH_TILE`` where a size is symbolic."""
    n = len(spatial)
    if not all(type(s) is int for s in spatial):
        return GRAPH_TILE[n]
    ks, ss, ds, cs = cfg[:4]
    per_axis = []  # per axis, per candidate tile: (t, r, tiles of the axis = groups x tiles per group)
    for L, k, s, d, c in zip(spatial, ks, ss, ds, cs):
        lm = graph_axis_sizes(L, k, d, s, c, 1)[0]
        sizes = (graph_axis_sizes(L, k, d, s, c, t) for t in range(1, min(lm, 128 if n == 1 else 32) + 1))
        per_axis.append([(t, r, d * nt) for _, t, r, nt in sizes])

    def cost(tiling):
        T, R, NT = (math.prod(x[i] for x in tiling) for i in range(3))
        return NT * (T * R * dims + _TILE_COST)

    return tuple(x[0] for x in min(itertools.product(*per_axis), key=cost))


def _partition(spatial, ix):
    """Where the tiles cut every axis exactly (ints, each group length a multiple of the tile): the per-axis
    (tiles, slots, groups) sizes and the permutations [B, (n, t, d) per axis, h, C] <-> [B, h, d.., n.., t.., C]."""
    if not all(type(s) is int for s in spatial):
        return None
    sizes = []
    for L, (d, nt, t, _) in zip(spatial, ix.sizes):
        if L % d or (L // d) != nt * t:
            return None
        sizes.append((nt, t, d))
    n = len(spatial)
    order = [0, 1 + 3 * n] + [3 + 3 * a for a in range(n)] + [1 + 3 * a for a in range(n)] + \
        [2 + 3 * a for a in range(n)] + [2 + 3 * n]
    inverse = [order.index(i) for i in range(len(order))]
    return sizes, order, inverse


def plain(q, k, v, rpb, cfg, ak=None, av=None, need_lse=False, tile=None, fit=None):
    """(out, natural lse or None): NA as plain differentiable torch ops whose index tensors are computed from the
    input's shape (no per-call constants in an exported graph; sizes may be symbolic: dynamic batch, height and
    width). Queries in tiles, each attending densely to the key region its windows cover, masked. ``tile`` and
    ``fit`` (tiles trimmed to the map; default where the sizes are ints) override the choices for tests."""
    n = q.dim() - 3
    spatial = tuple(q.shape[1:1 + n])
    with untraced():  # heads, head dims and extra tokens are fixed by the model: ints, not traced sizes
        h, hk = q.shape[-2], k.shape[-2]
        ne = 0 if ak is None else ak.shape[1]
        dims = q.shape[-1] + v.shape[-1]
    g = h // hk
    ix = graph_tiles(spatial, *cfg[:4], tuple(tile or graph_tile(spatial, cfg, dims)), q.device, fit)
    T, R = ix.tile, ix.region
    # the batch is never read as a size (reshapes keep it as a dimension): exporters keep it dynamic

    # heads first before the gathers: the layout copies move N rows, not the NT * R rows of the key regions
    def heads_first(x, flat, rows):  # [B, *S, hx, C] -> [B, hx, tiles, rows, C]
        return x.flatten(1, n).transpose(1, 2).index_select(2, flat).unflatten(2, (-1, rows))

    def rows_of_heads(x):  # [B, h, NT, T, C] -> [B, hk, NT, gT, C] (query heads of a key/value head on the rows)
        return x if g == 1 else x.unflatten(1, (hk, g)).transpose(2, 3).flatten(3, 4)

    def to_positions(x):  # [B, hk, NT, gT, *C] -> [B, *S, h, *C]: each position's result from its slot
        if g > 1:
            x = x.unflatten(3, (g, -1)).transpose(2, 3).flatten(1, 2)
        return x.flatten(2, 3).index_select(2, ix.inv).transpose(1, 2).unflatten(1, spatial)

    # tiles that cut every axis exactly (no slot repeated): the tile order is a permutation of the axes, so the
    # query tiles and the results are one layout copy each instead of a gather and a copy
    parts = _partition(spatial, ix) if g == 1 else None

    def query_tiles(x):  # [B, *S, h, D] -> [B, h, NT, T, D]
        if parts is None:
            return rows_of_heads(heads_first(x, ix.qflat, T))
        for a in reversed(range(n)):
            x = x.unflatten(1 + a, parts[0][a])  # L_a -> (tiles, slots, groups)
        return x.permute(parts[1]).flatten(2 + 2 * n, 1 + 3 * n).flatten(2, 1 + 2 * n)

    def results(x):  # [B, hk, NT, gT, C] -> [B, *S, h, C]
        if parts is None:
            return to_positions(x)
        sizes = parts[0]
        x = x.unflatten(3, [s[1] for s in sizes]).unflatten(2, [s[2] for s in sizes] + [s[0] for s in sizes])
        x = x.permute(parts[2])
        for a in range(n):
            x = x.flatten(1 + a, 3 + a)
        return x

    qt = query_tiles(q * cfg.scale)  # [B, hk, NT, gT, D]
    kt = heads_first(k, ix.kflat, R)  # [B, hk, NT, R, D]
    vt = heads_first(v, ix.kflat, R)
    bias = graph_bias(ix, rpb, h, q.dtype)  # [h or 1, NT, T, R]
    if g > 1:  # -> [hk, NT, gT, R]
        bias = bias.expand(h, -1, -1, -1).unflatten(0, (hk, g)).transpose(1, 2).flatten(2, 3)
    logits = qt @ kt.transpose(-1, -2) + bias  # [B, hk, NT, gT, R]
    if ak is not None:
        logits = torch.cat([logits, qt @ ak.permute(0, 2, 3, 1).unsqueeze(2)], -1)
    p = logits.softmax(-1)
    if ak is None:
        out = p @ vt
    else:
        out = p[..., :-ne] @ vt + p[..., -ne:] @ av.transpose(1, 2).unsqueeze(2)
    out = results(out)
    lse = results(_lse(logits).unsqueeze(-1)).squeeze(-1) if need_lse else None
    return out, lse


def plain_qkv(qkv: Tensor, rpb, cfg, q_bias: Tensor | None = None, tile=None, fit=None) -> Tensor:
    """``plain`` of a packed ``[B, *S, 3, heads, D]`` q / k / v projection (NAT's ``qkv`` Linear; no GQA, no extra
    keys): ``[B, *S, heads, D]``. The query tiles, the key / value regions and the results are each one gather of
    D-element rows, the first three straight from the projection: no split of q / k / v and no heads-first
    transposes in the graph. ``q_bias`` (``[heads, D]``) is added to the query tiles; the scale multiplies them
    next to the QK matmul (onnxruntime folds it into the matmul). ``tile`` / ``fit`` as ``plain``."""
    n = qkv.dim() - 4
    spatial = tuple(qkv.shape[1:1 + n])
    with untraced():  # heads and head dim are fixed by the model
        h, D = qkv.shape[-2], qkv.shape[-1]
    ix = graph_tiles(spatial, *cfg[:4], tuple(tile or graph_tile(spatial, cfg, 2 * D)), qkv.device, fit)
    T, R = ix.tile, ix.region
    rows = qkv.flatten(1, n + 2)  # [B, N * 3 * heads, D]: row (position, q / k / v, head)
    heads = torch.arange(h, device=qkv.device).unsqueeze(1)

    def select(x, index):  # int32 indices: half the bytes of the index vectors the exporter folds per layer
        return x.index_select(1, index.reshape(-1).to(torch.int32))

    def tiles(flat, which, size):  # rows of q / k / v (which = 0 / 1 / 2) at `flat`, heads first: [B, h, NT, size, D]
        return select(rows, flat * (3 * h) + which * h + heads).unflatten(1, (h, -1, size))

    qt = tiles(ix.qflat, 0, T)
    if q_bias is not None:
        qt = qt + q_bias.view(h, 1, 1, D)
    logits = (qt * cfg.scale) @ tiles(ix.kflat, 1, R).transpose(-1, -2) + graph_bias(ix, rpb, h, qkv.dtype)
    out = (logits.softmax(-1) @ tiles(ix.kflat, 2, R)).flatten(1, 3)  # [B, h * NT * T, D]
    # each position's result from its slot, in (position, head) order
    return select(out, (ix.inv + heads * (out.shape[1] // h)).T).unflatten(1, (*spatial, h))
