"""SLAB: Simplified Linear Attention + Progressive Re-parameterized BatchNorm (Guo et al., ICML 2024).

Paper: https://arxiv.org/abs/2405.11582 -- official code: https://github.com/xinghaochen/SLAB (no licence file;
re-implemented from the paper and the spec). SLA (ReLU-kernel linear attention + a depthwise conv of v, with a
per-token positional encoding tied to the token grid: pass `img_size` for another resolution) and PRepBN norms
(`visionattn.layers.prepbn`) on the shared hosts (`_deit`, `_pvt`, `_swin`, `_cswin`). `model.fuse()` (or timm's
`reparameterize_model`) folds every RepBN into the next layer for inference. `checkpoint_filter_fn` maps official
checkpoints and drops the tensors the official forward never uses. Design notes: docs/models.md.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, register_notrace_function, resize_rel_pos_bias_table, to_2tuple
from timm.models import generate_default_cfgs
from timm.models.swin_transformer import PatchMerging, window_partition, window_reverse
from timm.utils import reparameterize_model
from torch import nn

from visionattn._registry import register_zoo_model
from visionattn.checkpoint import build_model_with_pretrained_file, resample_square_pos_embed, unwrap_state_dict
from visionattn.layers.cswin import LePEAttention, img_to_windows, stripe_window_size, windows_to_img
from visionattn.layers.fused import set_fused_linear
from visionattn.layers.prepbn import (
    ChannelAffine,
    RepBN,
    fold_affine_after_conv,
    fold_affine_into_conv_in,
    fold_affine_into_linear,
    is_repbn_norm,
    linear_norm,
    repbn_affine,
)
from visionattn.layers.pvt import PvtAttention

from . import _cswin, _pvt, _swin
from ._common import in1k_cfg
from ._cswin import CSWinBlock, CSWinMerge, CSWinStem, CSWinTransformer
from ._deit import GridAttention, GridBlock, GridVisionTransformer
from ._pvt import ConvPatchEmbed, PvtBlock, PvtStage, PyramidVisionTransformerV1
from ._swin import SwinTransformerHost, WindowBlock

__all__ = [
    "SimplifiedLinearAttention",
    "SlabVisionTransformer",
    "SlabPyramidVisionTransformer",
    "SlabSwinTransformer",
    "SlabCSWinTransformer",
    "SlaCSWinAttention",
    "checkpoint_filter_fn",
    "sla_core",
]

_SLA_EPS = 1e-6



# ------------------------------------------------------------------------------------------------- fold helpers


def _fold_norm_into(norm: nn.Module, *targets: tuple[nn.Module, str]) -> nn.Module:
    """Fold `norm` (RepBN / LinearNorm) into the input side of each (parent, attr) Linear/Conv; returns the
    module that replaces `norm` (Identity), or `norm` unchanged when it is not foldable."""
    if not is_repbn_norm(norm):
        return norm
    a, b = repbn_affine(norm)
    for parent, attr in targets:
        layer = getattr(parent, attr)
        if isinstance(layer, nn.Linear):
            setattr(parent, attr, fold_affine_into_linear(layer, a, b))
        elif isinstance(layer, nn.Conv2d):
            setattr(parent, attr, fold_affine_into_conv_in(layer, a, b))
        else:
            raise TypeError(f"cannot fold a norm into {type(layer).__name__}")
    return nn.Identity()


def _as_affine(norm: nn.Module) -> nn.Module:
    if is_repbn_norm(norm):
        a, b = repbn_affine(norm)
        return ChannelAffine(a.float(), b.float())
    return norm


def _fold_norm_after_conv(owner: nn.Module, conv: str, norm: str) -> None:
    """Fold the RepBN norm `owner.<norm>` into the output side of the conv `owner.<conv>` before it."""
    n = getattr(owner, norm)
    if is_repbn_norm(n):
        a, b = repbn_affine(n)
        setattr(owner, conv, fold_affine_after_conv(getattr(owner, conv), a, b))
        setattr(owner, norm, nn.Identity())


class _FuseMixin:
    """`fuse()`: fold every RepBN for inference (in place, eval mode)."""

    def fuse(self):
        self.eval()
        return reparameterize_model(self, inplace=True)


# ------------------------------------------------------------------------------------------------- SLA


@register_notrace_function
@torch.fx.wrap
def sla_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Normalised ReLU-kernel linear attention, (BH, N, c) x3 -> (BH, N, d), computed in fp32 with autocast off.

    q, k must already be non-negative (ReLU'd). Picks the cheaper product order as the official code does.
    """
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(device_type=q.device.type, enabled=False):
            return _sla_core(q.float(), k.float(), v.float())
    return _sla_core(q.float(), k.float(), v.float())


def _sla_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # plain bmm rather than einsum: at batch 1 the per-op overhead is a visible part of an SLA block
    i, j, c, d = q.shape[-2], k.shape[-2], k.shape[-1], v.shape[-1]
    # the in-place steps act on fresh matmul results whose backward does not need them
    z = torch.bmm(q, k.sum(dim=1).unsqueeze(-1)).add_(_SLA_EPS).reciprocal_()
    if i * j * (c + d) > c * d * (i + j):
        out = torch.bmm(q, torch.bmm(k.transpose(1, 2), v))
    else:
        out = torch.bmm(torch.bmm(q, k.transpose(1, 2)), v)
    return out * z


class SimplifiedLinearAttention(nn.Module):
    """SLA over a fixed (H, W) token grid (official parameter names).

    Args:
        dim: channels; num_heads: heads (head dim = dim // num_heads).
        grid: (H, W) token grid the `positional_encoding` is built for.
        qkv_layout: 'qkv' (one `qkv` Linear: DeiT/Swin) or 'q_kv' (`q` + `kv` Linears: PVT).
        kernel_size: DWC kernel (odd).

    forward(x, hw=None): x (B, H*W, C) on the grid hw (default: `grid`).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            grid: tuple[int, int] = (14, 14),
            qkv_bias: bool = True,
            attn_drop: float = 0.0,
            proj_drop: float = 0.0,
            kernel_size: int = 5,
            qkv_layout: str = "qkv",
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size}")
        if qkv_layout not in ("qkv", "q_kv"):
            raise ValueError(f"qkv_layout must be 'qkv' or 'q_kv', got {qkv_layout!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid = tuple(to_2tuple(grid))
        self.qkv_layout = qkv_layout
        if qkv_layout == "qkv":
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)  # unused by SLA (official keeps it too)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2, groups=self.head_dim)
        self.positional_encoding = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        H, W = hw if hw is not None else self.grid
        _check_sla_tokens(x, self.positional_encoding, self.grid)
        if self.qkv_layout == "qkv":
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)
        else:
            q = self.q(x)
            k, v = self.kv(x).reshape(B, N, 2, C).unbind(2)
        q = F.relu(q)
        k = F.relu(k + self.positional_encoding, inplace=True)  # in place on the fresh sum
        h, d = self.num_heads, self.head_dim
        q, k, v = (t.reshape(B, N, h, d).transpose(1, 2).reshape(B * h, N, d) for t in (q, k, v))
        out = sla_core(q, k, v)
        # the DWC on a dense channels-last map, its output read back as (BH, N, d) without a copy: at batch 1 `v`
        # is a strided view into the qkv output, which the conv would otherwise gather first
        v = v.contiguous()
        fmap = self.dwc(v.transpose(1, 2).reshape(B * h, d, H, W)).permute(0, 2, 3, 1).reshape(B * h, N, d)
        out = out + fmap
        out = out.reshape(B, h, N, d).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


@register_notrace_function
@torch.fx.wrap
def _check_sla_tokens(x: torch.Tensor, pos: torch.Tensor, grid) -> None:
    if x.shape[1] != pos.shape[1]:
        raise ValueError(
            f"SLA built for a {grid[0]}x{grid[1]} token grid got {x.shape[1]} tokens; build the model with the "
            "matching img_size (checkpoint_filter_fn resizes positional_encoding)"
        )


# ------------------------------------------------------------------------------------------------- DeiT


class _SlabVitBlock(GridBlock):
    """Grid-aware ViT block; `reparameterize()` folds RepBN norms into attn.qkv / mlp.fc1."""

    def reparameterize(self):
        self.norm1 = _fold_norm_into(self.norm1, (self.attn, "qkv"))
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


def _deit_attn(dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, grid_size=(14, 14), linear=True,
               kernel_size=5, **_):
    if linear:
        return SimplifiedLinearAttention(dim, num_heads, grid_size, qkv_bias, attn_drop, proj_drop, kernel_size)
    return GridAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)


class SlabVisionTransformer(_FuseMixin, GridVisionTransformer):
    """DeiT with PRepBN norms; `linear_attn=True` gives SLAB-DeiT (SLA in every block, no class token in the
    forward, final norm then mean-pooled head); False the DeiT-PRepBN baselines (softmax, class token)."""

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 16,
            embed_dim: int = 192,
            depth: int = 12,
            num_heads: int = 3,
            mlp_ratio: float = 4.0,
            linear_attn: bool = True,
            norm_layer: Callable[[int], nn.Module] | None = None,
            kernel_size: int = 5,
            **kwargs,
    ):
        self.linear_attn = linear_attn
        if linear_attn:
            kwargs.update(class_token=False, global_pool=kwargs.get("global_pool", "avg") or "avg", fc_norm=False)
        else:
            kwargs.setdefault("global_pool", "token")
        super().__init__(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, norm_layer=norm_layer or linear_norm(60000), block_fn=_SlabVitBlock,
            attn_layer=partial(_deit_attn, linear=linear_attn, kernel_size=kernel_size), **kwargs,
        )


# ------------------------------------------------------------------------------------------------- PVT v1


class _PvtAttentionRep(PvtAttention):
    """PVT v1 SRA; `reparameterize()` folds the reduction norm into kv."""

    def reparameterize(self):
        if self.sr_ratio > 1:
            self.norm = _fold_norm_into(self.norm, (self, "kv"))


class _SlabPvtBlock(PvtBlock):
    def reparameterize(self):
        if isinstance(self.attn, PvtAttention) and self.attn.sr_ratio > 1:
            self.attn.reparameterize()
            self.norm1 = _fold_norm_into(self.norm1, (self.attn, "q"), (self.attn, "sr"))
        else:
            self.norm1 = _fold_norm_into(self.norm1, (self.attn, "q"), (self.attn, "kv"))
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


class _SlabPvtEmbed(ConvPatchEmbed):
    def reparameterize(self):
        _fold_norm_after_conv(self, "proj", "norm")


def _pvt_attn(dim, num_heads, grid_size, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, *, linear: bool,
              sr_ratio: int, kernel_size: int, norm_layer):
    if linear:
        return SimplifiedLinearAttention(dim, num_heads, grid_size, qkv_bias, attn_drop, proj_drop, kernel_size,
                                         qkv_layout="q_kv")
    return _PvtAttentionRep(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, sr_ratio=sr_ratio,
                            norm_layer=norm_layer)


class SlabPyramidVisionTransformer(_FuseMixin, PyramidVisionTransformerV1):
    """PVT v1 with PRepBN norms and SLA ('L') or spatial-reduction softmax ('S') stages; no final norm, the
    head reads the mean token of the last stage (as the official SLAB PVT)."""

    def __init__(
            self,
            sr_ratios=(8, 4, 2, 1),
            attn_type="LLLL",
            norm_layer: Callable[[int], nn.Module] | None = None,
            kernel_size=5,
            **kwargs,
    ):
        if len(attn_type) != 4 or any(c not in "LS" for c in attn_type):
            raise ValueError(f"attn_type must be 4 letters from 'L'/'S', got {attn_type!r}")
        norm_layer = norm_layer or linear_norm(300000)
        attn = [partial(_pvt_attn, linear=attn_type[i] == "L", sr_ratio=sr_ratios[i], kernel_size=kernel_size,
                        norm_layer=norm_layer) for i in range(4)]
        super().__init__(attn_layer=attn, norm_layer=norm_layer, block_layer=_SlabPvtBlock, embed_layer=_SlabPvtEmbed,
                         **kwargs)


# ------------------------------------------------------------------------------------------------- Swin


class _SlabWindowBlock(WindowBlock):
    """Shifted-window softmax block whose norms are PRepBN; `reparameterize()` folds them."""

    def reparameterize(self):
        H, W = self.input_resolution
        if H % self.window_size[0] == 0 and W % self.window_size[1] == 0:
            self.norm1 = _fold_norm_into(self.norm1, (self.attn, "qkv"))
        else:  # padded windows see zeros after the norm: only an explicit affine keeps that exact
            self.norm1 = _as_affine(self.norm1)
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


class SlaSwinBlock(nn.Module):
    """Swin-layout block with SLA: global over the stage map when the window covers it (SLAB-Swin at 224),
    else windows of `window_size` with the official half-window shift on odd blocks (no shift mask: the
    official SLA ignores it)."""

    def __init__(self, dim, input_resolution, num_heads, window_size=56, shift_size=0, mlp_ratio=4.0,
                 qkv_bias=True, proj_drop=0.0, attn_drop=0.0, drop_path=0.0, norm_layer=nn.LayerNorm,
                 kernel_size=5):
        super().__init__()
        H, W = input_resolution
        self.input_resolution = (H, W)
        if min(H, W) <= window_size:
            window_size, shift_size = min(H, W), 0
        if H % window_size or W % window_size:
            raise ValueError(f"SLA stage map {H}x{W} must be divisible by window_size {window_size}")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = norm_layer(dim)
        self.attn = SimplifiedLinearAttention(dim, num_heads, (window_size, window_size), qkv_bias, attn_drop,
                                              proj_drop, kernel_size)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _attn(self, x):
        B, H, W, C = x.shape
        ws, s = self.window_size, self.shift_size
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        if ws == self.input_resolution[0] == self.input_resolution[1]:  # one window: no partition
            x = self.attn(x.reshape(B, H * W, C), (ws, ws)).reshape(B, H, W, C)
        else:
            win = window_partition(x, (ws, ws)).reshape(-1, ws * ws, C)
            win = self.attn(win, (ws, ws)).reshape(-1, ws, ws, C)
            x = window_reverse(win, (ws, ws), H, W)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x

    def forward(self, x):
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(B, H * W, C)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)

    def reparameterize(self):
        self.norm1 = _fold_norm_into(self.norm1, (self.attn, "qkv"))
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


class _PatchMerging(PatchMerging):
    def reparameterize(self):
        self.norm = _fold_norm_into(self.norm, (self, "reduction"))


class _PatchEmbed(PatchEmbed):
    def reparameterize(self):
        _fold_norm_after_conv(self, "proj", "norm")


def _swin_block(dim, input_resolution, num_heads, *, stage_idx, block_idx, drop_path, norm_layer, attn_type,
                window_size, mlp_ratio, qkv_bias, proj_drop, attn_drop, kernel_size):
    shift = 0 if block_idx % 2 == 0 else window_size[stage_idx] // 2
    if attn_type[stage_idx] == "L":
        return SlaSwinBlock(dim, input_resolution, num_heads, window_size[stage_idx], shift, mlp_ratio, qkv_bias,
                            proj_drop, attn_drop, drop_path, norm_layer, kernel_size)
    return _SlabWindowBlock(dim, input_resolution, num_heads, window_size=window_size[stage_idx], shift_size=shift,
                            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                            drop_path=drop_path, norm_layer=norm_layer)


class SlabSwinTransformer(_FuseMixin, SwinTransformerHost):
    """Swin with PRepBN norms; 'L' stages use SLA (window `window_size`, clipped to the stage map), 'S' stages
    shifted-window softmax attention with window `softmax_window_size` (default: 7, or 12 when window_size > 56,
    as the official SLAB-Swin).

    The input must have the construction size (SLA encodings and window masks are tied to it)."""

    def __init__(
            self,
            depths=(2, 2, 6, 2),
            window_size=56,
            attn_type="LLSS",
            mlp_ratio=4.0,
            qkv_bias=True,
            proj_drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.0,
            norm_layer: Callable[[int], nn.Module] | None = None,
            kernel_size=5,
            softmax_window_size: int | None = None,
            **kwargs,
    ):
        n = len(depths)
        if len(attn_type) != n or any(c not in "LS" for c in attn_type):
            raise ValueError(f"attn_type must be {n} letters from 'L'/'S', got {attn_type!r}")
        softmax_window_size = softmax_window_size or (7 if window_size <= 56 else 12)
        windows = [window_size if attn_type[i] == "L" else softmax_window_size for i in range(n)]
        block = partial(_swin_block, attn_type=attn_type, window_size=windows, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                        proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, kernel_size=kernel_size)
        super().__init__(depths=depths, block_fn=block, drop_path_rate=drop_path_rate,
                         norm_layer=norm_layer or linear_norm(60000, 1e-5), embed_layer=_PatchEmbed,
                         merge_layer=_PatchMerging, strict_img_size=True, **kwargs)


# ------------------------------------------------------------------------------------------------- CSWin


class SlaCSWinAttention(nn.Module):
    """SLA branch for CSWin blocks (their attention-factory API): SLA over the branch window + DWC of v
    (head-dim channels) + the CSWin LePE term `get_v(v)`. (The official module's `scale` parameter is never
    used; the checkpoint filter drops it.)"""

    def __init__(self, dim, num_heads, branch_idx=-1, split_size=7, qk_scale=None, attn_drop=0.0, stage_idx=0,
                 window=(56, 56), kernel_size=5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.branch_idx = branch_idx
        self.split_size = split_size
        self.window = tuple(window)
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.dwc = nn.Conv2d(self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2, groups=self.head_dim)
        self.positional_encoding = nn.Parameter(torch.zeros(1, self.window[0] * self.window[1], dim))

    @property
    def grid(self):
        return self.window

    def forward(self, q, k, v, hw):
        win = stripe_window_size(hw, self.branch_idx, self.split_size)
        n = win[0] * win[1]
        c = q.shape[-1]
        h, d = self.num_heads, self.head_dim
        qw = img_to_windows(q, hw, win).flatten(2).transpose(1, 2)
        kw = img_to_windows(k, hw, win).flatten(2).transpose(1, 2)
        _check_sla_tokens(kw, self.positional_encoding, self.window)
        vmap = img_to_windows(v, hw, win)
        lepe = self.get_v(vmap).flatten(2).transpose(1, 2)
        vw = vmap.flatten(2).transpose(1, 2)
        bw = qw.shape[0]
        qw = F.relu(qw)
        kw = F.relu(kw + self.positional_encoding)
        qh, kh, vh = (t.reshape(bw, n, h, d).transpose(1, 2).reshape(bw * h, n, d) for t in (qw, kw, vw))
        out = sla_core(qh, kh, vh)
        out = out + self.dwc(vh.transpose(1, 2).reshape(bw * h, d, win[0], win[1])).flatten(2).transpose(1, 2)
        out = out.reshape(bw, h, n, d).transpose(1, 2).reshape(bw, n, c) + lepe
        return windows_to_img(out, hw, win)


class _SlabCSWinBlock(CSWinBlock):
    def reparameterize(self):
        self.norm1 = _fold_norm_into(self.norm1, (self, "qkv"))
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


class _SlabCSWinStem(CSWinStem):
    def reparameterize(self):
        _fold_norm_after_conv(self, "conv", "norm")


class _SlabCSWinMerge(CSWinMerge):
    def reparameterize(self):
        _fold_norm_after_conv(self, "conv", "norm")


class SlabCSWinTransformer(_FuseMixin, CSWinTransformer):
    """SLAB-CSWin: CSWin whose 'L' stages use `SlaCSWinAttention` with the window given by `la_split_size` (a split
    that reaches the stage resolution gives one global window) and whose norms are PRepBN; 'S' stages keep LePE
    stripe attention with `split_size`."""

    def __init__(self, img_size=224, depth=(2, 4, 18, 1), split_size=(1, 2, 7, 7), la_split_size="56-28-14-7",
                 attn_type="LLSS", norm_layer: Callable[[int], nn.Module] | None = None, kernel_size=5, **kwargs):
        if len(attn_type) != 4 or any(c not in "LS" for c in attn_type):
            raise ValueError(f"attn_type must be 4 letters from 'L'/'S', got {attn_type!r}")
        la = [int(v) for v in str(la_split_size).split("-")] if isinstance(la_split_size, str) else list(la_split_size)
        if len(la) != 4:
            raise ValueError(f"la_split_size must be 4 sizes joined by '-', got {la_split_size!r}")
        img = img_size if isinstance(img_size, int) else img_size[0]
        res = [img // 4 // 2 ** i for i in range(4)]
        splits = [la[i] if attn_type[i] == "L" else split_size[i] for i in range(4)]
        single = [i == 3 or splits[i] >= res[i] for i in range(4)]
        layers = []
        for i in range(4):
            if attn_type[i] == "L":
                if not single[i]:
                    raise ValueError("SLA stripe branches (la_split_size smaller than the stage grid) are not "
                                     "supported: no official config uses them")
                layers.append(partial(SlaCSWinAttention, window=(res[i], res[i]), kernel_size=kernel_size))
            else:
                layers.append(LePEAttention)
        super().__init__(
            img_size=img, depth=tuple(depth), split_size=tuple(splits), attn_layer=layers, single_branch=single,
            norm_layer=norm_layer or linear_norm(120000, 1e-5), block_layer=_SlabCSWinBlock,
            stem_layer=_SlabCSWinStem, merge_layer=_SlabCSWinMerge, **kwargs,
        )


# ------------------------------------------------------------------------------------------------- checkpoints

# official tensors the official forward never reads (kept there as parameters; dropped here)
_UNUSED_OFFICIAL = re.compile(r"(^cls_token$)|(\.attns\.\d+\.scale$)")


def _token_grid(model: nn.Module, key: str) -> tuple[tuple[int, int], int]:
    """(grid, prefix tokens) of the positional tensor `key` in `model`."""
    owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
    if key.endswith("positional_encoding"):
        return tuple(owner.grid), 0
    if isinstance(owner, PvtStage):
        return tuple(owner.grid_size), 0
    if isinstance(model, SlabVisionTransformer):
        return tuple(model.grid_size), 0 if model.no_embed_class else model.num_prefix_tokens
    raise ValueError(f"do not know the token grid of {key}")


_HOST_KEYS = ((SwinTransformerHost, _swin.official_to_timm), (PyramidVisionTransformerV1, _pvt.official_to_timm),
              (CSWinTransformer, _cswin.official_to_timm))


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official SLAB checkpoint (trainer envelope or bare state dict) onto `model`.

    Renames the official layouts to the timm-style ones: PVT `patch_embed{i}/pos_embed{i}/block{i}` ->
    `stages.{i-1}.*`; Swin `layers.{i}.downsample` -> `layers.{i+1}.downsample`, `head` -> `head.fc`; CSWin
    `stage1_conv_embed` -> `stem`, `stage{i}.{j}` -> `stages.{i-1}.blocks.{j}`, `merge{i}` ->
    `stages.{i}.downsample`. Drops what the official forward never uses (SLAB-DeiT `cls_token`, CSWin-SLA
    `scale`) and buffers rebuilt at construction (`relative_position_index`, `attn_mask`). Resizes `pos_embed*`
    and SLA `positional_encoding` (bicubic, square source grids) to the model's token grids, else ValueError,
    and Swin `relative_position_bias_table`s to the model's windows.
    """
    sd = unwrap_state_dict(state_dict)
    for host, official_to_timm in _HOST_KEYS:
        if isinstance(model, host):
            sd = official_to_timm(sd)
    target = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith(("relative_position_index", "attn_mask", "relative_coords_table")):
            continue
        if k not in target and _UNUSED_OFFICIAL.search(k):
            continue
        if k.endswith("relative_position_bias_table") and k in target and target[k].shape != v.shape:
            win = model.get_submodule(k.rsplit(".", 1)[0]).window_size
            v = resize_rel_pos_bias_table(v, new_window_size=tuple(win), new_bias_shape=target[k].shape)
        if k in target and v.ndim == 3 and target[k].shape != v.shape and (
                k.endswith("positional_encoding") or k.split(".")[-1].startswith("pos_embed")):
            grid, prefix = _token_grid(model, k)
            v = resample_square_pos_embed(v, grid, prefix, k)
        out[k] = v
    return out


# ------------------------------------------------------------------------------------------------- builders


def _create(cls, variant, pretrained=False, out_indices=(0, 1, 2, 3), **kwargs):
    model = build_model_with_pretrained_file(cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                             feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
    return set_fused_linear(model)


def _create_deit(variant, pretrained=False, **kwargs):
    return _create(SlabVisionTransformer, variant, pretrained, out_indices=kwargs.pop("out_indices", 3), **kwargs)


def _create_pvt(variant, pretrained=False, **kwargs):
    return _create(SlabPyramidVisionTransformer, variant, pretrained, **kwargs)


def _create_swin(variant, pretrained=False, **kwargs):
    return _create(SlabSwinTransformer, variant, pretrained, **kwargs)


def _create_cswin(variant, pretrained=False, **kwargs):
    return _create(SlabCSWinTransformer, variant, pretrained, **kwargs)


_URL = "https://github.com/xinghaochen/SLAB/releases/download/ckpts/"


def _cfg(file: str | None = None, **kwargs):
    return in1k_cfg(_URL + file if file else "", **{
        "fixed_input_size": True, "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "unknown (official repository has no LICENSE file)", "paper_ids": "arXiv:2405.11582",
        "paper_name": "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive Re-parameterized "
        "Batch Normalization", "origin_url": "https://github.com/xinghaochen/SLAB", **kwargs})


_DEIT = dict(pool_size=(14, 14))  # the patch grid of the NLC tokens
_PVT = dict(first_conv="stages.0.patch_embed.proj")
_SWIN = dict(classifier="head.fc")
_CSWIN = dict(first_conv="stem.conv", crop_pct=0.9)

default_cfgs = generate_default_cfgs({
    "slab_deit_t.in1k": _cfg("slab_deit_tiny.pth", **_DEIT),
    "slab_deit_s.in1k": _cfg("slab_deit_small.pth", **_DEIT),
    "deit_t_prepbn.in1k": _cfg("deit_tiny_prepbn.pth", **_DEIT),
    "deit_s_prepbn.in1k": _cfg("deit_small_prepbn.pth", **_DEIT),
    "slab_pvt_t.in1k": _cfg("slab_pvt_tiny.pth", **_PVT),
    "slab_pvt_s.untrained": _cfg(None, **_PVT),
    "slab_pvt_m.untrained": _cfg(None, **_PVT),
    "pvt_t_prepbn.in1k": _cfg("pvt_tiny_prepbn.pth", **_PVT, fixed_input_size=False),
    "pvt_s_prepbn.in1k": _cfg("pvt_small_prepbn.pth", **_PVT, fixed_input_size=False),
    "pvt_m_prepbn.in1k": _cfg("pvt_medium_prepbn.pth", **_PVT, fixed_input_size=False),
    "slab_swin_t.in1k": _cfg("slab_swin_tiny.pth", **_SWIN),
    "slab_swin_s.in1k": _cfg("slab_swin_small.pth", **_SWIN),
    "slab_swin_b.untrained": _cfg(None, **_SWIN),
    "swin_t_prepbn.in1k": _cfg("swin_tiny_prepbn.pth", **_SWIN),
    "slab_cswin_t.in1k": _cfg("slab_cswin_tiny.pth", **_CSWIN),
    "slab_cswin_s.untrained": _cfg(None, **_CSWIN),
})

_DEIT_T = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_DEIT_S = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)


def _pvt_args(depths, attn_type):
    return dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                depths=depths, sr_ratios=(8, 4, 2, 1), attn_type=attn_type)


@register_zoo_model("slab")
def slab_deit_t(pretrained=False, **kwargs) -> SlabVisionTransformer:
    """SLAB-DeiT-T (6.2M params, 74.3% IN-1k top-1)."""
    args = dict(_DEIT_T, linear_attn=True, norm_layer=linear_norm(60000))
    return _create_deit("slab_deit_t", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_deit_s(pretrained=False, **kwargs) -> SlabVisionTransformer:
    """SLAB-DeiT-S (23.0M params, 80.0%)."""
    args = dict(_DEIT_S, linear_attn=True, norm_layer=linear_norm(60000))
    return _create_deit("slab_deit_s", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def deit_t_prepbn(pretrained=False, **kwargs) -> SlabVisionTransformer:
    """DeiT-T-PRepBN (5.7M params, 73.6%): the released model uses plain RepBN norms (no LN blend)."""
    args = dict(_DEIT_T, linear_attn=False, norm_layer=RepBN)
    return _create_deit("deit_t_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def deit_s_prepbn(pretrained=False, **kwargs) -> SlabVisionTransformer:
    """DeiT-S-PRepBN (22.1M params, 80.2%)."""
    args = dict(_DEIT_S, linear_attn=False, norm_layer=linear_norm(300000))
    return _create_deit("deit_s_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_pvt_t(pretrained=False, **kwargs) -> SlabPyramidVisionTransformer:
    """SLAB-PVT-T (12.2M params, 76.5%)."""
    return _create_pvt("slab_pvt_t", pretrained, **dict(_pvt_args((2, 2, 2, 2), "LLLL"), **kwargs))


@register_zoo_model("slab")
def slab_pvt_s(pretrained=False, **kwargs) -> SlabPyramidVisionTransformer:
    """SLAB-PVT-S (21.7M params; configuration only, no released checkpoint)."""
    args = dict(_pvt_args((3, 4, 6, 3), "LLLL"), drop_path_rate=0.1)
    return _create_pvt("slab_pvt_s", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_pvt_m(pretrained=False, **kwargs) -> SlabPyramidVisionTransformer:
    """SLAB-PVT-M (37.3M params; configuration only, no released checkpoint)."""
    args = dict(_pvt_args((3, 4, 18, 3), "LLLL"), drop_path_rate=0.3)
    return _create_pvt("slab_pvt_m", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def pvt_t_prepbn(pretrained=False, **kwargs) -> SlabPyramidVisionTransformer:
    """PVT-T-PRepBN (13.2M params, 76.0%)."""
    return _create_pvt("pvt_t_prepbn", pretrained, **dict(_pvt_args((2, 2, 2, 2), "SSSS"), **kwargs))


@register_zoo_model("slab")
def pvt_s_prepbn(pretrained=False, **kwargs) -> SlabPyramidVisionTransformer:
    """PVT-S-PRepBN (24.5M params, 80.1%)."""
    args = dict(_pvt_args((3, 4, 6, 3), "SSSS"), drop_path_rate=0.1)
    return _create_pvt("pvt_s_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def pvt_m_prepbn(pretrained=False, **kwargs) -> SlabPyramidVisionTransformer:
    """PVT-M-PRepBN (44.3M params, 81.7%)."""
    args = dict(_pvt_args((3, 4, 18, 3), "SSSS"), drop_path_rate=0.3)
    return _create_pvt("pvt_m_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_swin_t(pretrained=False, **kwargs) -> SlabSwinTransformer:
    """SLAB-Swin-T (29.2M params, 81.8%)."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type="LLSS",
                drop_path_rate=0.2)
    return _create_swin("slab_swin_t", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_swin_s(pretrained=False, **kwargs) -> SlabSwinTransformer:
    """SLAB-Swin-S (50.6M params, 83.6%)."""
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type="LLSS",
                drop_path_rate=0.3)
    return _create_swin("slab_swin_s", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_swin_b(pretrained=False, **kwargs) -> SlabSwinTransformer:
    """SLAB-Swin-B (configuration only, no released checkpoint)."""
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=56, attn_type="LLSS",
                drop_path_rate=0.5)
    return _create_swin("slab_swin_b", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def swin_t_prepbn(pretrained=False, **kwargs) -> SlabSwinTransformer:
    """Swin-T-PRepBN (28.3M params, 81.4%): the released classification model uses plain RepBN norms."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, attn_type="SSSS",
                norm_layer=RepBN, drop_path_rate=0.1)
    return _create_swin("swin_t_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_cswin_t(pretrained=False, **kwargs) -> SlabCSWinTransformer:
    """SLAB-CSWin-T (21.2M params, 82.8%)."""
    args = dict(embed_dim=64, depth=(2, 4, 18, 1), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16),
                la_split_size="56-28-14-7", attn_type="LLSS", drop_path_rate=0.1)
    return _create_cswin("slab_cswin_t", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_cswin_s(pretrained=False, **kwargs) -> SlabCSWinTransformer:
    """SLAB-CSWin-S (35.5M params; configuration only, no released checkpoint)."""
    args = dict(embed_dim=64, depth=(2, 4, 32, 2), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16),
                la_split_size="56-28-14-7", attn_type="LLSS", drop_path_rate=0.3)
    return _create_cswin("slab_cswin_s", pretrained, **dict(args, **kwargs))
