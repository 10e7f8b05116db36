"""PVT v1 host (Wang et al., ICCV 2021, https://arxiv.org/abs/2102.12122) of Agent-PVT and SLAB-PVT / PVT-PRepBN.

Four stages of conv patch embedding + position embedding (resized bilinearly at run time, as the official
forward) + pre-norm blocks; no class token, no final norm, the head reads the mean token. Stages pass NHWC maps.
The attention is a per-stage factory `attn_layer(dim, num_heads, grid_size, *, qkv_bias, attn_drop, proj_drop)`
whose module is called as `attn(x, hw)` on (B, H*W, C) tokens, `grid_size` being the construction-size grid.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from timm.layers import DropPath, Mlp, calculate_drop_path_rates, to_2tuple
from torch import nn

from visionattn.checkpoint import rename_keys
from visionattn.utils import LinearHeadMixin, init_weights_, trunc_normal_unless_meta

from ._common import StagedModelMixin, check_divisible, resize_token_grid, run_blocks

torch.fx.wrap("check_divisible")
torch.fx.wrap("resize_token_grid")

__all__ = ["ConvPatchEmbed", "PvtBlock", "PvtStage", "PyramidVisionTransformerV1", "official_to_timm"]

# the official PVT v1 names -> this host's
_OFFICIAL_RENAMES = (
    (re.compile(r"^patch_embed(\d)\."), lambda m: f"stages.{int(m.group(1)) - 1}.patch_embed."),
    (re.compile(r"^pos_embed(\d)$"), lambda m: f"stages.{int(m.group(1)) - 1}.pos_embed"),
    (re.compile(r"^block(\d)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks."),
)


def official_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official PVT v1 keys -> this host's."""
    return rename_keys(state_dict, _OFFICIAL_RENAMES)


class ConvPatchEmbed(nn.Module):
    """Conv (kernel = stride = `patch_size`) then a token norm: an NCHW (or channels-last) map in, the normed
    NHWC map out."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, norm_layer: Callable[[int], nn.Module]):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PvtBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x), hw), then x + mlp(norm2(x)) (one DropPath for both, as PVT)."""

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float = 4.0, proj_drop: float = 0.0,
                 drop_path: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: type[nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PvtStage(nn.Module):
    """Patch embedding + position embedding + blocks; NHWC in, NHWC out."""

    def __init__(
            self,
            in_chans: int,
            dim: int,
            depth: int,
            num_heads: int,
            grid_size: tuple[int, int],
            patch_size: int,
            attn_layer: Callable[..., nn.Module],
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: Sequence[float] = (),
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            embed_norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            block_layer: type[PvtBlock] = PvtBlock,
            embed_layer: type[ConvPatchEmbed] = ConvPatchEmbed,
    ):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.grad_checkpointing = False
        self.patch_embed = embed_layer(in_chans, dim, patch_size, embed_norm_layer)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.blocks = nn.ModuleList([
            block_layer(
                dim,
                attn_layer(dim, num_heads, self.grid_size, qkv_bias=qkv_bias, attn_drop=attn_drop,
                           proj_drop=proj_drop_rate),
                mlp_ratio=mlp_ratio, proj_drop=proj_drop_rate, drop_path=drop_path[j], norm_layer=norm_layer,
            )
            for j in range(depth)
        ])
        trunc_normal_unless_meta(self.pos_embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x.permute(0, 3, 1, 2))
        b, h, w, c = x.shape
        hw = (h, w)
        x = self.pos_drop(x.reshape(b, h * w, c) + resize_token_grid(self.pos_embed, self.grid_size, hw))
        return run_blocks(self.blocks, x, hw, self.grad_checkpointing).reshape(b, h, w, c)


class PyramidVisionTransformerV1(StagedModelMixin, LinearHeadMixin, nn.Module):
    """The 4-stage PVT v1 classifier with the timm model API (`forward_features` is NHWC).

    Args:
        attn_layer: one attention factory (see the module docstring) or one per stage.
        norm_layer: block norms; embed_norm_layer: patch-embedding norms (default: norm_layer).
        block_layer, embed_layer: the block / patch-embedding classes (subclasses may add fold hooks).
        patch_size: stride of the first patch embedding (2 for the others).
        drop_rate: head dropout; pos_drop_rate: after each position embedding; proj_drop_rate: in the blocks
            (the official `drop_rate` is the last two, mapped in `visionattn.official`).
    """

    output_fmt = "NHWC"

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (64, 128, 320, 512),
            num_heads: Sequence[int] = (1, 2, 5, 8),
            mlp_ratios: Sequence[float] = (8, 8, 4, 4),
            depths: Sequence[int] = (2, 2, 2, 2),
            qkv_bias: bool = True,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            attn_layer: Callable[..., nn.Module] | Sequence[Callable[..., nn.Module]] = None,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            embed_norm_layer: Callable[[int], nn.Module] | None = None,
            block_layer: type[PvtBlock] = PvtBlock,
            embed_layer: type[ConvPatchEmbed] = ConvPatchEmbed,
    ):
        super().__init__()
        if attn_layer is None:
            raise ValueError("attn_layer must be an attention factory (or one per stage)")
        for name, v in (("embed_dims", embed_dims), ("num_heads", num_heads), ("mlp_ratios", mlp_ratios),
                        ("depths", depths)):
            if len(v) != 4:
                raise ValueError(f"{name} must have 4 entries (one per stage), got {tuple(v)}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        attn_layers = list(attn_layer) if isinstance(attn_layer, Sequence) else [attn_layer] * 4
        img = to_2tuple(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.patch_size = patch_size
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, prev = [], in_chans
        self.feature_info = []
        for i in range(4):
            stride = patch_size * 2 ** i
            stages.append(PvtStage(
                prev, embed_dims[i], depths[i], num_heads[i], (img[0] // stride, img[1] // stride),
                patch_size if i == 0 else 2, attn_layers[i], mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias,
                pos_drop_rate=pos_drop_rate, proj_drop_rate=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                norm_layer=norm_layer, embed_norm_layer=embed_norm_layer or norm_layer, block_layer=block_layer,
                embed_layer=embed_layer,
            ))
            prev = embed_dims[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=stride, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.Identity()  # PVT v1 has no final norm
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights_)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f"stages.{i}.pos_embed" for i in range(len(self.stages))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stages\.0\.(?:patch_embed|pos_embed)",
            blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                     (r"^stages\.(\d+)\.(?:patch_embed|pos_embed)", (0,))],
        )

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = check_divisible(x, self.patch_size * 8, "patch_size * 8 (four unpadded patch embeddings)")
        return x.permute(0, 2, 3, 1)  # the stages take NHWC views

