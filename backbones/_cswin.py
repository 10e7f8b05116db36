"""CSWin host (Dong et al., CVPR 2022) shared by Agent-CSwin and SLAB-CSwin.

Paper: https://arxiv.org/abs/2107.00652. Stem conv 7x7 / stride 4 + token norm, 4 stages (a 3x3 / stride 2
conv + norm merge at the start of stages 1-3, then CSWin blocks), final norm, token-mean head. Stages pass
channels-last (NHWC) maps: the tokens are a view of them and the merge convs read them without a layout copy
(`forward_features` is NHWC).

State-dict names (timm layout; the families' filters map the official `stage1_conv_embed.{0,2}`,
`stage{i}.{j}`, `merge{i}` names onto them): `stem.{conv,norm}`, `stages.{i}.downsample.{conv,norm}`,
`stages.{i}.blocks.{j}.{norm1, qkv, attns.{0,1}, proj, norm2, mlp}`, `norm`, `head`.

A block is one window branch over all channels (`single_branch`: the last stage, and every stage whose split
reaches its resolution) or two stripe branches on channel halves with half the heads each. The attention is a
factory (`visionattn.layers.cswin` documents it; `LePEAttention` is the original):

    attn_layer(dim, num_heads, branch_idx, split_size, qk_scale, attn_drop, stage_idx) -> module
    module(q, k, v, hw) -> out    # (B, H*W, dim) tokens of the branch's channels
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
from timm.layers import DropPath, Mlp, calculate_drop_path_rates
from timm.models import checkpoint
from timm.models._features import feature_take_indices  # timm exports no public name for it
from torch import nn

from visionattn.layers.cswin import LePEAttention
from visionattn.utils import LinearHeadMixin, inference_linear, inference_mlp, init_weights_

__all__ = ["CSWinBlock", "CSWinStem", "CSWinMerge", "CSWinStage", "CSWinTransformer", "OFFICIAL_RENAMES"]

# the official CSWin names -> this host's (for `_common.rename_keys`)
OFFICIAL_RENAMES = (
    (re.compile(r"^stage1_conv_embed\.0\."), lambda m: "stem.conv."),
    (re.compile(r"^stage1_conv_embed\.2\."), lambda m: "stem.norm."),
    (re.compile(r"^stage(\d)\.(\d+)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (re.compile(r"^merge(\d)\."), lambda m: f"stages.{m.group(1)}.downsample."),
)


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
        q, k, v = inference_linear(self.qkv, self.norm1(x)).chunk(3, dim=-1)
        if self.single_branch:
            y = self.attns[0](q, k, v, hw)
        else:
            h = q.shape[-1] // 2
            y = torch.cat([
                self.attns[0](q[..., :h], k[..., :h], v[..., :h], hw),
                self.attns[1](q[..., h:], k[..., h:], v[..., h:], hw),
            ], dim=-1)
        x = x + self.drop_path(self.proj_drop(inference_linear(self.proj, y)))
        return x + self.drop_path(inference_mlp(self.mlp, self.norm2(x)))


class CSWinStem(nn.Module):
    """Conv 7x7 / stride 4 / padding 2, then a token norm: NCHW image in, NHWC map out."""

    def __init__(self, in_chans: int, embed_dim: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, embed_dim, 7, 4, 2)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class CSWinMerge(nn.Module):
    """Conv 3x3 / stride 2 / padding 1 then a token norm (the official `Merge_Block`): NHWC in, NHWC out."""

    def __init__(self, dim: int, dim_out: int, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


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
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, hw)
            else:
                x = blk(x, hw)
        return x.reshape(b, h, w, c)


class CSWinTransformer(LinearHeadMixin, nn.Module):
    """The 4-stage CSWin classifier with the timm model API (`forward_features` is NHWC).

    Args:
        attn_layer: one attention factory (module docstring) or one per stage.
        split_size: stripe width per stage.
        single_branch: per stage, force the one-window form; default: the last stage and every stage whose split
            reaches its resolution at `img_size` (the official rule).
        norm_layer: every token norm (stem, blocks, merges, final norm).
        block_layer, stem_layer, merge_layer: the block / stem / merge classes (subclasses may add fold hooks).
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
                    qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i][j],
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

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        for s in self.stages:
            s.grad_checkpointing = enable

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs as NCHW or NHWC maps (the last one through the final norm when `norm`)."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        x = self.stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

