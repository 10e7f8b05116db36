"""CSWin Transformer building blocks (Dong et al., CVPR 2022), shared by Agent-CSwin and SLAB-CSwin.

Paper: https://arxiv.org/abs/2107.00652 -- the layout (and parameter names) of the official CSWin code, so the
official checkpoints of CSWin derivatives load with their own key names:

* `CSWinStem`: `stage1_conv_embed` -- Conv2d(in, C, 7, stride 4, padding 2) then a token norm (keys `0.*`, `2.*`).
* `MergeBlock`: `merge{i}` -- Conv2d(C, 2C, 3, stride 2, padding 1) on the token grid, then a token norm.
* `CSWinBlock`: `stage{i}.{j}` -- `norm1`, block-level `qkv`, one or two attention branches `attns.{0,1}`, block
  `proj`, `norm2`, `mlp.{fc1,fc2}`; pre-norm residuals with DropPath.
* `LePEAttention`: the original cross-shaped window attention with its LePE conv `get_v`.
* `CSWinTransformer`: the 4-stage classifier skeleton with the timm model API.

Stable API for derived models (attention factory):

    attn_layer(dim, num_heads, branch_idx, split_size, qk_scale, attn_drop, stage_idx) -> nn.Module
    module(q, k, v, hw) -> out

where `q`, `k`, `v` are (B, N, dim) token tensors of the branch's channels laid out row-major on the (H, W) grid
`hw`, `out` is (B, N, dim). `branch_idx` is -1 for the single-branch form (one window = the whole grid: the last
stage, and every stage whose split size reaches its resolution), 0 for full-height stripes of width `split_size`,
1 for full-width stripes of height `split_size`; a two-branch block gives each branch half the channels and
half the heads. `norm_layer(dim)` builds every token norm (it acts on (B, N, C)).

Input size: all grids are taken from the actual input; a stripe branch whose split size does not divide the grid
zero-pads q/k/v right/bottom (after the qkv projection) and crops the result, like the official CSWin
dense-prediction backbone; at divisible sizes nothing is padded.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from visionattn.utils import LinearHeadMixin, drop_path_rates, trunc_normal_unless_meta

__all__ = [
    "LePEAttention",
    "CSWinBlock",
    "CSWinStem",
    "MergeBlock",
    "CSWinTransformer",
    "stripe_window_size",
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


def pad_to_windows(x: torch.Tensor, hw: tuple[int, int], win: tuple[int, int]):
    """Zero-pad (B, H*W, C) tokens right/bottom to window multiples; returns (tokens, padded hw)."""
    h, w = hw
    ph, pw = (-h) % win[0], (-w) % win[1]
    if not (ph or pw):
        return x, hw
    b, _, c = x.shape
    x = F.pad(x.reshape(b, h, w, c), (0, 0, 0, pw, 0, ph))
    return x.reshape(b, -1, c), (h + ph, w + pw)


def crop_from_windows(x: torch.Tensor, hw: tuple[int, int], padded_hw: tuple[int, int]) -> torch.Tensor:
    if tuple(hw) == tuple(padded_hw):
        return x
    b, _, c = x.shape
    return x.reshape(b, padded_hw[0], padded_hw[1], c)[:, : hw[0], : hw[1]].reshape(b, -1, c)


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
        (q, _), (k, _), (v, hw) = (pad_to_windows(t, full_hw, win) for t in (q, k, v))

        def heads(t):  # (B', C, hs, ws) -> (B', heads, hs*ws, d)
            return t.flatten(2).reshape(t.shape[0], nh, d, -1).transpose(-2, -1)

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


class CSWinBlock(nn.Module):
    """CSWin block: x + proj(branches(qkv(norm1(x)))), then x + mlp(norm2(x)).

    `single_branch` selects the one-window form (the official `last_stage`); otherwise two branches (vertical and
    horizontal stripes) on channel halves with half the heads each.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        single_branch: bool = False,
        attn_layer: Callable[..., nn.Module] = LePEAttention,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        stage_idx: int = 0,
    ):
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm1 = norm_layer(dim)
        self.single_branch = single_branch
        if single_branch:
            branches = [(-1, dim, num_heads)]
        else:
            if dim % 2 or num_heads % 2:
                raise ValueError(f"a two-branch CSWin block needs even dim and num_heads, got {dim}, {num_heads}")
            branches = [(0, dim // 2, num_heads // 2), (1, dim // 2, num_heads // 2)]
        self.attns = nn.ModuleList([
            attn_layer(
                dim=d, num_heads=h, branch_idx=i, split_size=split_size, qk_scale=qk_scale, attn_drop=attn_drop,
                stage_idx=stage_idx,
            )
            for i, d, h in branches
        ])
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.norm2 = norm_layer(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        c = x.shape[-1]
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if self.single_branch:
            y = self.attns[0](q, k, v, hw)
        else:
            h = c // 2
            y = torch.cat([
                self.attns[0](q[..., :h], k[..., :h], v[..., :h], hw),
                self.attns[1](q[..., h:], k[..., h:], v[..., h:], hw),
            ], dim=-1)
        x = x + self.drop_path(self.proj_drop(self.proj(y)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class _ToTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class CSWinStem(nn.Sequential):
    """Conv 7x7 / stride 4 / padding 2, flatten to tokens, norm (official keys `0.*`, `2.*`)."""

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__(nn.Conv2d(in_chans, embed_dim, 7, 4, 2), _ToTokens(), norm_layer(embed_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self[0](x)
        hw = (x.shape[2], x.shape[3])
        return self[2](self[1](x)), hw


class MergeBlock(nn.Module):
    """Tokens -> grid -> Conv 3x3 / stride 2 -> tokens -> norm (official `Merge_Block`)."""

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        b, _, c = x.shape
        x = self.conv(x.transpose(1, 2).reshape(b, c, hw[0], hw[1]))
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class CSWinTransformer(LinearHeadMixin, nn.Module):
    """The 4-stage CSWin classifier (official attribute names) with the timm model API.

    Args:
        attn_layer: one attention factory (see the module docstring) or one per stage.
        split_size: stripe width per stage.
        single_branch: per stage, force the one-window form; default: the last stage and every stage whose split
            size reaches its resolution at `img_size` (the official rule).
        norm_layer: token norm factory used everywhere (stem, blocks, merges, final norm).
        block_layer, stem_layer, merge_layer: the block / stem / patch-merging classes (subclasses of
            `CSWinBlock`, `CSWinStem`, `MergeBlock` with the same constructor, e.g. adding fold hooks).
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 64,
        depth: Sequence[int] = (2, 4, 32, 2),
        split_size: Sequence[int] = (1, 2, 7, 7),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        attn_layer: Callable[..., nn.Module] | Sequence[Callable[..., nn.Module]] = LePEAttention,
        single_branch: Sequence[bool] | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        global_pool: str = "avg",
        block_layer: type[nn.Module] | None = None,
        stem_layer: type[nn.Module] | None = None,
        merge_layer: type[nn.Module] | None = None,
    ):
        super().__init__()
        block_layer = block_layer or CSWinBlock
        stem_layer = stem_layer or CSWinStem
        merge_layer = merge_layer or MergeBlock
        if len(depth) != 4 or len(split_size) != 4 or len(num_heads) != 4:
            raise ValueError("depth, split_size and num_heads must have 4 entries (one per stage)")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        attn_layers = list(attn_layer) if isinstance(attn_layer, Sequence) else [attn_layer] * 4
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.grad_checkpointing = False
        dims = [embed_dim * 2 ** i for i in range(4)]
        self.num_features = self.head_hidden_size = self.embed_dim = dims[-1]
        if single_branch is None:
            single_branch = [i == 3 or split_size[i] >= img_size // 4 // 2 ** i for i in range(4)]
        self.single_branch = tuple(bool(s) for s in single_branch)
        self.stage1_conv_embed = stem_layer(in_chans, embed_dim, norm_layer)
        dpr = drop_path_rates(drop_path_rate, sum(depth))
        self.feature_info = []
        for i in range(4):
            blocks = nn.ModuleList([
                block_layer(
                    dims[i], num_heads[i], split_size=split_size[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                    qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[sum(depth[:i]) + j],
                    single_branch=self.single_branch[i], attn_layer=attn_layers[i], norm_layer=norm_layer,
                    stage_idx=i,
                )
                for j in range(depth[i])
            ])
            setattr(self, f"stage{i + 1}", blocks)
            if i < 3:
                setattr(self, f"merge{i + 1}", merge_layer(dims[i], dims[i + 1], norm_layer))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stage{i + 1}"))
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, nn.Linear):
            trunc_normal_unless_meta(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # timm API ----------------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stage1_conv_embed",
            blocks=[(r"^stage(\d+)\.(\d+)", None), (r"^merge(\d+)", None), (r"^norm", (99999,))]
            if not coarse else [(r"^stage(\d+)", None), (r"^merge(\d+)", None)],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def stages(self) -> list[nn.ModuleList]:
        return [getattr(self, f"stage{i + 1}") for i in range(4)]

    def _run_stage(self, i: int, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        if i == 0:
            x, hw = self.stage1_conv_embed(x)
        else:
            x, hw = getattr(self, f"merge{i}")(x, hw)
        for blk in getattr(self, f"stage{i + 1}"):
            if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
                x = checkpoint(blk, x, hw, use_reentrant=False)
            else:
                x = blk(x, hw)
        return x, hw

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Stage outputs as NCHW maps (the last one through the final norm when `norm`)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(4, indices)
        intermediates = []
        hw = None
        last = 4 if not stop_early else max_index + 1
        for i in range(last):
            x, hw = self._run_stage(i, x, hw)
            if i in take_indices:
                y = self.norm(x) if norm and i == 3 else x
                intermediates.append(y.transpose(1, 2).reshape(y.shape[0], -1, hw[0], hw[1]))
        if intermediates_only:
            return intermediates
        if last == 4:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(4, indices)
        for i in range(max_index + 1, 4):
            setattr(self, f"stage{i + 1}", nn.ModuleList())
            if i >= 1:
                setattr(self, f"merge{i}", _Skip())
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        hw = None
        for i in range(4):
            x, hw = self._run_stage(i, x, hw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class _Skip(nn.Module):
    """Placeholder for a pruned merge block."""

    def forward(self, x, hw):
        return x, hw
