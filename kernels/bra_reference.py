"""Routed attention, the reference: BiFormer's official gather formulation (``backend="reference"``).

Every query region's ``topk`` routed key/value regions are gathered from an expanded view (materialising the
``topk`` copies), then dense attention runs over their concatenated tokens. The oracle of the other backends.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["routed_attention_reference"]


def routed_attention_reference(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size, *,
                               scale: float) -> Tensor:
    """``[B, H, W, heads, dv]`` of validated ``[B, H, W, heads, d]`` q, k, v and ``[B, R, topk]`` index."""
    B, H, W, nh, dq = q.shape
    dv = v.shape[-1]
    rh, rw = region_size
    hw = rh * rw
    gh, gw = H // rh, W // rw
    R = gh * gw
    topk = index.shape[-1]

    def regions(t):  # [B, H, W, nh, d] -> [B, R, hw, nh * d], regions and their tokens row-major
        c = nh * t.shape[-1]
        return t.reshape(B, gh, rh, gw, rw, c).permute(0, 1, 3, 2, 4, 5).reshape(B, R, hw, c)

    def gather(t):
        c = t.shape[-1]
        src = t.view(B, 1, R, hw, c).expand(-1, R, -1, -1, -1)
        return torch.gather(src, 2, index.view(B, R, topk, 1, 1).expand(-1, -1, -1, hw, c))

    kg = gather(regions(k)).reshape(B * R, topk * hw, nh, dq).permute(0, 2, 3, 1)  # [BR, nh, dq, topk*hw]
    vg = gather(regions(v)).reshape(B * R, topk * hw, nh, dv).transpose(1, 2)  # [BR, nh, topk*hw, dv]
    qh = regions(q).reshape(B * R, hw, nh, dq).transpose(1, 2)
    attn = torch.softmax((qh * scale) @ kg, dim=-1)
    out = (attn @ vg).transpose(1, 2)  # [BR, hw, nh, dv]
    out = out.reshape(B, gh, gw, rh, rw, nh, dv).permute(0, 1, 3, 2, 4, 5, 6)
    return out.reshape(B, H, W, nh, dv)
