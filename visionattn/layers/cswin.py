"""CSWin attention (Dong et al., CVPR 2022, https://arxiv.org/abs/2107.00652) for the host in `backbones._cswin`.

`LePEAttention` (official parameter names) is softmax attention in cross-shaped stripe windows plus the LePE term.
Attention-factory API: `attn_layer(dim, num_heads, branch_idx, split_size, qk_scale, attn_drop, stage_idx)`,
called as `attn(q, k, v, hw)` on (B, H*W, dim) tokens of its branch; `branch_idx` -1 is one window over the whole
grid, 0 full-height stripes of width `split_size`, 1 full-width stripes. A grid the stripes do not divide is
zero-padded after the qkv projection and cropped back, like the official CSWin dense backbone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

__all__ = [
    "LePEAttention",
    "stripe_window_size",
    "padded_size",
    "pad_to_windows",
    "crop_from_windows",
    "img_to_windows",
    "windows_to_img",
]


def stripe_window_size(hw: tuple[int, int], branch_idx: int, split_size: int) -> tuple[int, int]:
    """(H_sp, W_sp) of a branch on grid `hw`: -1 whole grid, 0 full-height stripes, 1 full-width stripes."""
    h, w = hw
    if branch_idx == -1:
        return h, w
    if branch_idx == 0:
        return h, split_size
    if branch_idx == 1:
        return split_size, w
    raise ValueError(f"branch_idx must be -1, 0 or 1, got {branch_idx}")


def padded_size(hw: tuple[int, int], win: tuple[int, int]) -> tuple[int, int]:
    """`hw` rounded up to multiples of the window `win`."""
    return hw[0] + (-hw[0]) % win[0], hw[1] + (-hw[1]) % win[1]


@register_notrace_function
@torch.fx.wrap
def pad_to_windows(x: torch.Tensor, hw: tuple[int, int], win: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (B, H*W, C) tokens right/bottom to window multiples (the grid `padded_size(hw, win)`)."""
    h, w = hw
    ph, pw = (-h) % win[0], (-w) % win[1]
    if not (ph or pw):
        return x
    b, _, c = x.shape
    x = F.pad(x.reshape(b, h, w, c), (0, 0, 0, pw, 0, ph))
    return x.reshape(b, (h + ph) * (w + pw), c)


@register_notrace_function
@torch.fx.wrap
def crop_from_windows(x: torch.Tensor, hw: tuple[int, int], padded_hw: tuple[int, int]) -> torch.Tensor:
    if tuple(hw) == tuple(padded_hw):
        return x
    b, _, c = x.shape
    return x.reshape(b, padded_hw[0], padded_hw[1], c)[:, : hw[0], : hw[1]].reshape(b, hw[0] * hw[1], c)


def img_to_windows(x: torch.Tensor, hw: tuple[int, int], win: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) -> (B * nW, C, H_sp, W_sp)."""
    b, _, c = x.shape
    h, w = hw
    hs, ws = win
    x = x.transpose(1, 2).reshape(b, c, h // hs, hs, w // ws, ws)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, c, hs, ws)


def windows_to_img(x: torch.Tensor, hw: tuple[int, int], win: tuple[int, int]) -> torch.Tensor:
    """(B * nW, H_sp * W_sp, C) -> (B, H*W, C)."""
    h, w = hw
    hs, ws = win
    c = x.shape[-1]
    x = x.reshape(-1, h // hs, w // ws, hs, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h * w, c)


class LePEAttention(nn.Module):
    """Softmax attention inside cross-shaped stripes plus the locally-enhanced positional term `get_v(v)`.

    The LePE conv sees one window at a time (zero padding at stripe borders), as in the official code.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        branch_idx: int = -1,
        split_size: int = 7,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        stage_idx: int = 0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.branch_idx = branch_idx
        self.split_size = split_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)
        self.attn_drop = attn_drop

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        c = q.shape[-1]
        win = stripe_window_size(hw, self.branch_idx, self.split_size)
        nh, d = self.num_heads, c // self.num_heads
        full_hw = hw
        # grids that the stripes do not divide are zero-padded after the qkv projection, as in the official
        # CSWin dense-prediction backbone
        hw = padded_size(full_hw, win)
        q, k, v = (pad_to_windows(t, full_hw, win) for t in (q, k, v))
        n = win[0] * win[1]

        def heads(t):  # (B', C, hs, ws) -> (B', heads, hs*ws, d)
            return t.reshape(t.shape[0], nh, d, n).transpose(-2, -1)

        qw = heads(img_to_windows(q, hw, win))
        kw = heads(img_to_windows(k, hw, win))
        vw_map = img_to_windows(v, hw, win)
        lepe = heads(self.get_v(vw_map))
        vw = heads(vw_map)
        x = F.scaled_dot_product_attention(
            qw, kw, vw, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        x = (x + lepe).transpose(1, 2).reshape(-1, win[0] * win[1], c)
        return crop_from_windows(windows_to_img(x, hw, win), full_hw, hw)
