"""CSWin host (Dong et al., CVPR 2022, https://arxiv.org/abs/2107.00652) of Agent-CSWin and SLAB-CSWin.

Stem (7x7 / 4 conv + norm), four stages (3x3 / 2 conv + norm merge, then CSWin blocks), final norm, token-mean
head; stages pass NHWC maps. A block is one window branch over all channels (`single_branch`) or two stripe
branches on channel halves. The attention is a factory (`visionattn.layers.cswin`; `LePEAttention` is the
original): `attn_layer(dim, num_heads, branch_idx, split_size, qk_scale, attn_drop, stage_idx)`, called as
`attn(q, k, v, hw)` on the (B, H*W, dim) tokens of its branch.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from timm.layers import DropPath, Mlp, calculate_drop_path_rates
from torch import nn

from visionattn.checkpoint import rename_keys
from visionattn.layers.cswin import LePEAttention
from visionattn.utils import LinearHeadMixin, init_weights_

from ._common import StagedModelMixin, run_blocks

__all__ = ["CSWinBlock", "CSWinStem", "CSWinMerge", "CSWinStage", "CSWinTransformer", "official_to_timm"]

# the official CSWin names -> this host's
_OFFICIAL_RENAMES = (
    (re.compile(r"^stage1_conv_embed\.0\."), lambda m: "stem.conv."),
    (re.compile(r"^stage1_conv_embed\.2\."), lambda m: "stem.norm."),
    (re.compile(r"^stage(\d)\.(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (re.compile(r"^merge(\d)\."), lambda m: f"stages.{m.group(1)}.downsample."),
)


def official_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official CSWin keys -> this host's."""
    return rename_keys(state_dict, _OFFICIAL_RENAMES)


class CSWinBlock(nn.Module):
    """x + proj(branches(qkv(norm1(x)))), then x + mlp(norm2(x))."""

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
            attn_layer(dim=d, num_heads=h, branch_idx=i, split_size=split_size, qk_scale=qk_scale,
                       attn_drop=attn_drop, stage_idx=stage_idx)
            for i, d, h in branches
        ])
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.norm2 = norm_layer(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if self.single_branch:
            y = self.attns[0](q, k, v, hw)
        else:
            h = q.shape[-1] // 2
            y = torch.cat([
                self.attns[0](q[..., :h], k[..., :h], v[..., :h], hw),
                self.attns[1](q[..., h:], k[..., h:], v[..., h:], hw),
            ], dim=-1)
        x = x + self.drop_path(self.proj_drop(self.proj(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CSWinStem(nn.Module):
    """Conv 7x7 / stride 4 / padding 2, then a token norm: NCHW image in, NHWC map out."""

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 kernel_size: int = 7, stride: int = 4, padding: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class CSWinMerge(CSWinStem):
    """Conv 3x3 / stride 2 / padding 1 then a token norm (the official `Merge_Block`): NHWC in, NHWC out."""

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__(dim, dim_out, norm_layer, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2))


class CSWinStage(nn.Module):
    """`downsample` (a merge, Identity for stage 0) then `blocks`; NHWC in, NHWC out."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None = None):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        b, h, w, c = x.shape
        hw = (h, w)
        x = x.reshape(b, h * w, c)
        return run_blocks(self.blocks, x, hw, self.grad_checkpointing).reshape(b, h, w, c)


class CSWinTransformer(StagedModelMixin, LinearHeadMixin, nn.Module):
    """The 4-stage CSWin classifier with the timm model API (`forward_features` is NHWC).

    Args:
        attn_layer: one attention factory (module docstring) or one per stage.
        split_size: stripe width per stage.
        single_branch: per stage, force the one-window form; default: the last stage and every stage whose split
            reaches its resolution at `img_size` (the official rule).
        norm_layer: every token norm (stem, blocks, merges, final norm).
        block_layer, stem_layer, merge_layer: the block / stem / merge classes (subclasses may add fold hooks).
        drop_rate: head dropout; proj_drop_rate: in the blocks (the official `drop_rate`).
    """

    output_fmt = "NHWC"

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
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            attn_layer: Callable[..., nn.Module] | Sequence[Callable[..., nn.Module]] = LePEAttention,
            single_branch: Sequence[bool] | None = None,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            global_pool: str = "avg",
            block_layer: type[nn.Module] = CSWinBlock,
            stem_layer: type[nn.Module] = CSWinStem,
            merge_layer: type[nn.Module] = CSWinMerge,
    ):
        super().__init__()
        if len(depth) != 4 or len(split_size) != 4 or len(num_heads) != 4:
            raise ValueError("depth, split_size and num_heads must have 4 entries (one per stage)")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        attn_layers = list(attn_layer) if isinstance(attn_layer, Sequence) else [attn_layer] * 4
        self.num_classes = num_classes
        self.global_pool = global_pool
        dims = [embed_dim * 2 ** i for i in range(4)]
        self.num_features = self.head_hidden_size = self.embed_dim = dims[-1]
        if single_branch is None:
            single_branch = [i == 3 or split_size[i] >= img_size // 4 // 2 ** i for i in range(4)]
        self.single_branch = tuple(bool(s) for s in single_branch)
        self.stem = stem_layer(in_chans, embed_dim, norm_layer)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depth), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(4):
            blocks = [
                block_layer(
                    dims[i], num_heads[i], split_size=split_size[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                    qk_scale=qk_scale, drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i][j],
                    single_branch=self.single_branch[i], attn_layer=attn_layers[i], norm_layer=norm_layer,
                    stage_idx=i,
                )
                for j in range(depth[i])
            ]
            merge = merge_layer(dims[i - 1], dims[i], norm_layer) if i > 0 else None
            stages.append(CSWinStage(blocks, merge))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights_)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

