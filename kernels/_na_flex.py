"""Neighborhood attention as FlexAttention (block mask + RPB score_mod): the benchmarks' yardstick.

Not a backend: FlexAttention has no CPU fast path and no ONNX export. Both kernel benchmarks
(tools/bench_kernels.py, kernels/_na_triton_bench.py) build their flex rows here, and a test checks
the mask and score_mod against the reference so the rows compare like with like.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def _coords(spatial):
    strides = [math.prod(spatial[a + 1:]) for a in range(len(spatial))]
    return lambda i: [(i // s) % L for s, L in zip(strides, spatial)]


def na_mask_mod(spatial, kernel_size: int, dilation: int = 1):
    """mask_mod of non-causal, stride-1 NA: same dilation group and key inside the inward-shifted window."""
    k, d = kernel_size, dilation
    coords = _coords(spatial)

    def mask_mod(b, h, qi, ki):
        ok = None
        for qa, ka, L in zip(coords(qi), coords(ki), spatial):
            m = qa % d
            g = qa // d
            group_len = (L - m + d - 1) // d
            start = torch.minimum(torch.clamp(g - k // 2, min=0), group_len - k)
            kg = ka // d
            cond = (ka % d == m) & (kg >= start) & (kg < start + k)
            ok = cond if ok is None else ok & cond
        return ok

    return mask_mod


def na_rpb_score_mod(spatial, kernel_size: int, dilation: int, rpb: Tensor):
    """score_mod adding NATTEN<=0.17 RPB, rpb `[heads, 2k-1, ...]` (one axis per spatial dim)."""
    k, d, n = kernel_size, dilation, len(spatial)
    coords = _coords(spatial)
    flat = rpb.reshape(rpb.shape[0], -1)
    axis_stride = [(2 * k - 1) ** (n - 1 - a) for a in range(n)]

    def score_mod(score, b, h, qi, ki):
        idx = 0
        for a, (qa, ka) in enumerate(zip(coords(qi), coords(ki))):
            # clamped: score_mod also runs on the masked pairs of partial blocks (out-of-table on GPU)
            rel = torch.clamp(ka // d - qa // d + k - 1, 0, 2 * k - 2)
            idx = idx + rel * axis_stride[a]
        return score + flat[h, idx]

    return score_mod


def make_na_flex(spatial, kernel_size: int, dilation: int = 1, rpb: Tensor | None = None, scale=None,
                 device="cpu", compile: bool = True):
    """Callable `(q, k, v) -> out` on heads-last `[B, *spatial, heads, dim]` tensors, NA through flex_attention."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    spatial = tuple(spatial)
    N = math.prod(spatial)
    device = torch.device(device).type
    block_mask = create_block_mask(na_mask_mod(spatial, kernel_size, dilation), None, None, N, N, device=device)
    score_mod = None if rpb is None else na_rpb_score_mod(spatial, kernel_size, dilation, rpb)
    fn = torch.compile(flex_attention, dynamic=False) if compile else flex_attention

    def run(q, k, v):
        B, heads, D = q.shape[0], q.shape[-2], q.shape[-1]
        qf, kf, vf = (t.reshape(B, N, heads, D).transpose(1, 2) for t in (q, k, v))
        out = fn(qf, kf, vf, block_mask=block_mask, score_mod=score_mod, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)

    return run
