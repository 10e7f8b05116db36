"""NAT and DiNAT: Neighborhood Attention Transformers (Hassani et al., CVPR 2023; Hassani & Shi, 2022).

Papers: https://arxiv.org/abs/2204.07143, https://arxiv.org/abs/2209.15001 -- official code (MIT):
https://github.com/SHI-Labs/Neighborhood-Attention-Transformer. `NAT` (NAT / DiNAT: conv tokenizer and
downsamplers), `DiNATs` (the Swin layout), `NATIsotropic` (isotropic NAT / DiNAT and ViT-RPB); (dilated)
neighborhood attention with relative positional bias in every block. Any input size (small maps are padded as
NATTEN <= 0.15 did; ViT-RPB up to its table's grid). `forward_features` is NHWC; `attn_backend=` picks the NA
kernel. `checkpoint_filter_fn` maps official (and mmdet / mmseg) checkpoints. The official det/seg backbones are
`visionattn.mm.dense.NATDense` / `DiNATsDense`. Design notes: docs/models.md.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import (
    ClassifierHead,
    DropPath,
    LayerScale,
    Mlp,
    calculate_drop_path_rates,
    resize_rel_pos_bias_table_simple,
    to_2tuple,
)
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices  # timm exports no public name for it
from timm.models.swin_transformer import PatchMerging
from torch import nn

from visionattn._registry import register_zoo_model
from visionattn.checkpoint import build_model_with_pretrained_file, unwrap_state_dict
from visionattn.layers.fused import set_fused_linear
from visionattn.layers.na import NeighborhoodAttention2D
from visionattn.utils import (
    ClassifierHeadMixin,
    LinearHeadMixin,
    check_backend,
    init_weights_,
    pad_right_bottom,
    set_attn_backend,
    trunc_normal_unless_meta,
)

from ._common import StagedModelMixin, in1k_cfg

__all__ = [
    "NAT",
    "DiNATs",
    "NATIsotropic",
    "NATBlock",
    "NATStage",
    "ViTRPBBlock",
    "MHSARPB",
    "ConvTokenizer",
    "ConvDownsampler",
    "PatchEmbed",
    "checkpoint_filter_fn",
]


# --------------------------------------------------------------------------------------------------------------
# stems and downsamplers (NHWC out)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    # the stem's convs then write channels-last maps, so the NHWC permute after them is a free view: from NCHW,
    # LayerNorm copied it to contiguous (and its backward and the conv backward copied the gradients back)
    return x.contiguous(memory_format=torch.channels_last)


class ConvTokenizer(nn.Module):
    """NAT stem: two 3x3 stride-2 convs (no activation between them), then LayerNorm on NHWC."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, norm_layer: Callable | None = nn.LayerNorm):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(_channels_last(x)).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """NAT downsampler: 3x3 stride-2 conv (no bias) doubling the channels, then LayerNorm; NHWC in and out."""

    def __init__(self, dim: int, norm_layer: Callable = nn.LayerNorm):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = norm_layer(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """DiNAT_s / isotropic stem: zero-pad right/bottom to a multiple of the patch, patchify conv, NHWC, norm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96,
                 norm_layer: Callable | None = nn.LayerNorm):
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_right_bottom(x, self.patch_size)
        return self.norm(self.proj(_channels_last(x)).permute(0, 2, 3, 1))


# --------------------------------------------------------------------------------------------------------------
# blocks


class NATBlock(nn.Module):
    """Official NATLayer / NATransformerLayer: x + [ls1] NA(norm1(x)), x + [ls2] MLP(norm2(x)), NHWC.

    layer_scale: a number adds `ls1` / `ls2` (the official `gamma1` / `gamma2`), None or False none.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            proj_drop: float = 0.0,
            attn_drop: float = 0.0,
            drop_path: float = 0.0,
            norm_layer: Callable = nn.LayerNorm,
            layer_scale: float | None = None,
            attn_backend: str = "auto",
    ):
        super().__init__()
        # official rule: layer scale only when a number is given (gamma1/gamma2 keys exist only then)
        ls = isinstance(layer_scale, (int, float)) and not isinstance(layer_scale, bool)
        self.norm1 = norm_layer(dim)
        self.attn = NeighborhoodAttention2D(
            dim, num_heads, kernel_size=kernel_size, dilation=dilation, rpb=True, qkv_bias=qkv_bias,
            qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=proj_drop, backend=attn_backend,
        )
        self.ls1 = LayerScale(dim, layer_scale) if ls else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.ls2 = LayerScale(dim, layer_scale) if ls else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def _rpb_index(grid: tuple[int, int], table: tuple[int, int], device=None) -> torch.Tensor:
    """[N, N] index into a flattened [2*Th-1, 2*Tw-1] table for a (H, W) grid, key-minus-query offsets.

    At grid == table this equals the official index (Swin's table flipped in both axes).
    """
    (h, w), (th, tw) = grid, table
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[None, :] - ys[:, None] + th - 1
    dx = xs[None, :] - xs[:, None] + tw - 1
    return dy * (2 * tw - 1) + dx


@torch.fx.wrap
def _rpb_bias(rpb: torch.Tensor, index: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The [heads, N, N] bias of an NHWC map `x` from the table `rpb` ([heads, 2S-1, 2S-1], `index` its S x S
    index); smaller grids use the table's centre (no interpolation), larger ones raise."""
    h, w = x.shape[1:3]
    gh, gw = (rpb.shape[1] + 1) // 2, (rpb.shape[2] + 1) // 2
    if (h, w) != (gh, gw):
        if h > gh or w > gw:
            raise ValueError(
                f"token grid {h}x{w} is larger than the relative position table's {gh}x{gw}; create the model "
                f"with a larger img_size (the checkpoint filter resizes the table)")
        index = _rpb_index((h, w), (gh, gw), device=rpb.device)
    n = h * w
    return rpb.flatten(1)[:, index.reshape(-1)].reshape(rpb.shape[0], n, n)


class MHSARPB(nn.Module):
    """ViT-RPB attention: global multi-head self attention plus a relative positional bias table (NHWC in/out).

    The table covers offsets of a `grid_size` token grid; grids up to that size use its centre, larger ones raise.
    The index is a non-persistent buffer (rebuilt from `grid_size`; the official checkpoints store it and the
    checkpoint filter drops it).
    """

    def __init__(self, dim: int, grid_size, num_heads: int, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.grid_size = tuple(to_2tuple(grid_size))
        gh, gw = self.grid_size
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * gh - 1, 2 * gw - 1))
        trunc_normal_unless_meta(self.rpb, std=0.02)
        self.register_buffer("relative_position_index", _rpb_index(self.grid_size, self.grid_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).flatten(1, 2).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        bias = _rpb_bias(self.rpb, self.relative_position_index, x).unsqueeze(0).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale)
        out = out.transpose(1, 2).flatten(2).reshape_as(x)
        return self.proj_drop(self.proj(out))


class ViTRPBBlock(nn.Module):
    """Official isotropic VisionTransformerLayer: pre-norm MHSA+RPB and MLP residual blocks on NHWC tokens."""

    def __init__(self, dim: int, num_heads: int, grid_size, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_layer: Callable = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = MHSARPB(dim, grid_size, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                            proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class NATStage(nn.Module):
    """One level: the downsampler from the previous level's width (Identity for the first), then its blocks."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None = None):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


# --------------------------------------------------------------------------------------------------------------
# models


def _per_level_dilations(dilations, depths: Sequence[int]) -> list[list[int]]:
    if dilations is None:
        return [[1] * d for d in depths]
    if len(dilations) != len(depths) or any(len(dl) != d for dl, d in zip(dilations, depths)):
        raise ValueError(f"dilations must give one list per level with one value per block (depths {list(depths)}), "
                         f"got {dilations!r}")
    return [[1 if v is None else int(v) for v in dl] for dl in dilations]


class NAT(StagedModelMixin, ClassifierHeadMixin, nn.Module):
    """NAT / DiNAT (official classification/nat.py:NAT, dinat.py:DiNAT): hierarchical (dilated) NA transformer.

    Args (official names): embed_dim, depths, num_heads, kernel_size, dilations (per level, per block; None = 1),
        mlp_ratio, qkv_bias, qk_scale, attn_drop_rate, drop_path_rate, layer_scale (number -> ls1/ls2),
        norm_layer (a class; nn.LayerNorm).
        drop_rate, pos_drop_rate, proj_drop_rate: timm's (head, after the stem, in the blocks); the official
            `drop_rate` is the last two (mapped in `visionattn.official.nat`).
        global_pool: 'avg' (mean over tokens) or '' (the head keeps the NHWC map).
        out_norms: True or stage indices: add the dense backbones' per-output LayerNorm (`out_norms.i`), applied to
            the maps `forward_intermediates` / `features_only` return.
        attn_backend: NA backend of every block (`visionattn.kernels.na.BACKENDS`; None -> 'auto').
    """

    output_fmt = "NHWC"
    stem_name = "patch_embed"

    def __init__(
            self,
            embed_dim: int = 64,
            depths: Sequence[int] = (3, 4, 6, 5),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            kernel_size: int = 7,
            dilations: Sequence[Sequence[int]] | None = None,
            mlp_ratio: float = 3.0,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.2,
            layer_scale: float | None = None,
            norm_layer: Callable[[int], nn.Module] | None = None,
            out_norms: bool | Sequence[int] = False,
            attn_backend: str | None = None,
            patch_size: int = 4,
            patch_norm: bool = True,
    ):
        super().__init__()
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads must have one entry per level ({len(depths)}), got {num_heads!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        norm_layer = norm_layer or nn.LayerNorm  # the official default (eps 1e-5)
        backend = check_backend(attn_backend, NeighborhoodAttention2D.backends)
        dilations = _per_level_dilations(dilations, depths)
        self.num_classes = num_classes
        self.num_levels = len(depths)
        dims = [int(embed_dim * 2 ** i) for i in range(self.num_levels)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.patch_embed = self._make_stem(in_chans, embed_dim, patch_size, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info = [], []
        for i, depth in enumerate(depths):
            blocks = [
                NATBlock(
                    dims[i], num_heads[i], kernel_size=kernel_size, dilation=dilations[i][j], mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) + j], norm_layer=norm_layer, layer_scale=layer_scale,
                    attn_backend=backend,
                )
                for j in range(depth)
            ]
            down = self._make_downsample(dims[i - 1], norm_layer) if i > 0 else None
            stages.append(NATStage(blocks, down))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        if out_norms is True:
            out_norms = range(self.num_levels)
        self.out_norm_indices = tuple(sorted(int(i) for i in (out_norms or ())))
        for i in self.out_norm_indices:
            if not 0 <= i < self.num_levels:
                raise ValueError(f"out_norms indices must be in [0, {self.num_levels - 1}], got {i}")
        self.out_norms = nn.ModuleList([
            norm_layer(d) if i in self.out_norm_indices else nn.Identity() for i, d in enumerate(dims)
        ]) if self.out_norm_indices else None
        self.norm = norm_layer(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt="NHWC")
        self.apply(init_weights_)  # the official init: Linear and LayerNorm only, convs keep PyTorch defaults

    @staticmethod
    def _make_stem(in_chans, embed_dim, patch_size, norm_layer) -> nn.Module:
        return ConvTokenizer(in_chans, embed_dim, norm_layer)

    @staticmethod
    def _make_downsample(dim, norm_layer) -> nn.Module:
        return ConvDownsampler(dim, norm_layer)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x))

    def _take(self, i: int, x: torch.Tensor, norm: bool) -> torch.Tensor:
        # the dense backbones' per-output norm replaces the final one
        return self.out_norms[i](x) if i in self.out_norm_indices else super()._take(i, x, norm)

    def _reset_head(self) -> None:
        self.head.reset(0, in_features=self.num_features)
        self.num_classes = 0

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        self.out_norm_indices = tuple(i for i in self.out_norm_indices if i < len(self.stages))
        return take_indices

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # the official optimizer exempts every 'rpb' (no_weight_decay_keywords); timm exempts 1-D params itself
        return {n for n, _ in self.named_parameters() if n.endswith("rpb")}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        return {"rpb"}

    @torch.jit.ignore
    def set_attn_backend(self, backend: str):
        """Switch the NA backend of every block (e.g. 'torch' before ONNX export, 'reference' to debug)."""
        set_attn_backend(self, backend)


class DiNATs(NAT):
    """DiNAT_s (official classification/dinats.py:DiNAT_s): the Swin layout with (dilated) NA blocks.

    4x4 patch embedding, Swin patch merging (at the start of stages 1-3), no layer scale. Arguments as `NAT`
    (mlp_ratio default 4, patch_size / patch_norm of the patch embedding).
    """

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), mlp_ratio: float = 4.0, **kwargs):
        if kwargs.get("layer_scale") is not None:
            raise ValueError("layer_scale must be None for DiNAT_s (the official layout has no layer scale)")
        super().__init__(embed_dim=embed_dim, depths=depths, num_heads=num_heads, mlp_ratio=mlp_ratio, **kwargs)

    @staticmethod
    def _make_stem(in_chans, embed_dim, patch_size, norm_layer) -> nn.Module:
        return PatchEmbed(patch_size, in_chans, embed_dim, norm_layer)

    @staticmethod
    def _make_downsample(dim, norm_layer) -> nn.Module:
        return PatchMerging(dim, norm_layer=norm_layer)


class NATIsotropic(LinearHeadMixin, nn.Module):
    """Isotropic NAT / DiNAT / ViT-RPB (official classification/isotropic.py:NATIsotropic).

    block_type: 'na' (NA blocks, dilation 1 in even blocks and `dilation` in odd ones) or 'mhsa_rpb' (ViT-RPB:
        global attention with a relative positional bias table sized for img_size // patch_size tokens).
    Input size: NA models take any size; ViT-RPB takes grids up to img_size // patch_size (see module docstring).
    """

    output_fmt = "NHWC"

    def __init__(
            self,
            img_size=224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 384,
            depth: int = 12,
            num_heads: int = 12,
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            qk_scale: float | None = None,
            kernel_size: int = 7,
            dilation: int = 2,
            block_type: str = "na",
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
            norm_layer: Callable[[int], nn.Module] | None = None,
            patch_norm: bool = True,
            attn_backend: str | None = None,
    ):
        super().__init__()
        if block_type not in ("na", "mhsa_rpb"):
            raise ValueError(f"block_type must be 'na' or 'mhsa_rpb', got {block_type!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        norm_layer = norm_layer or nn.LayerNorm  # the official default (eps 1e-5)
        backend = check_backend(attn_backend, NeighborhoodAttention2D.backends)
        img_size = to_2tuple(img_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.block_type = block_type
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=proj_drop_rate,
                      attn_drop=attn_drop_rate, norm_layer=norm_layer)
        if block_type == "na":
            blocks = [NATBlock(embed_dim, num_heads, kernel_size=kernel_size,
                               dilation=1 if i % 2 == 0 or dilation is None else dilation, drop_path=dpr[i],
                               attn_backend=backend, **common) for i in range(depth)]
        else:
            blocks = [ViTRPBBlock(embed_dim, num_heads, self.grid_size, drop_path=dpr[i], **common)
                      for i in range(depth)]
        self.blocks = nn.Sequential(*blocks)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}") for i in range(depth)]
        self.norm = norm_layer(embed_dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights_)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {n for n, _ in self.named_parameters() if n.endswith("rpb")}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        return {"rpb"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^patch_embed", blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_attn_backend(self, backend: str):
        """Switch the NA backend of every NA block (ViT-RPB has no NA block: ValueError)."""
        set_attn_backend(self, backend)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs (stride = patch size); norm: apply the final norm to every taken map."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        x = self.pos_drop(self.patch_embed(x))
        for i, blk in enumerate(blocks):
            x = blk(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final-norm NHWC token map [B, H/patch, W/patch, C]."""
        x = self.pos_drop(self.patch_embed(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


# --------------------------------------------------------------------------------------------------------------
# checkpoints

# official key layouts -> ours (first match wins)
_STAGE_RULES = [
    (re.compile(r"^(?:levels|layers)\.(\d+)\.blocks\."), lambda m: f"stages.{m[1]}.blocks."),
    # the official downsampler ends level i; ours starts stage i + 1
    (re.compile(r"^(?:levels|layers)\.(\d+)\.downsample\."), lambda m: f"stages.{int(m[1]) + 1}.downsample."),
    (re.compile(r"^layers\.(\d+)\."), lambda m: f"blocks.{m[1]}."),  # isotropic
    (re.compile(r"^norm(\d+)\."), lambda m: f"out_norms.{m[1]}."),  # the dense backbones' output norms
]
_LAYER_SCALE = re.compile(r"\.gamma([12])$")
_OPTIONAL = re.compile(r"^(norm\.|head\.|out_norms\.)")


def _official_to_ours(key: str, head_fc: bool) -> str:
    for pattern, repl in _STAGE_RULES:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            key = new
            break
    key = _LAYER_SCALE.sub(lambda m: f".ls{m[1]}.gamma", key)
    if head_fc and key in ("head.weight", "head.bias"):
        key = "head.fc." + key.split(".", 1)[1]
    return key


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official NAT / DiNAT / DiNAT_s / isotropic checkpoint (or an mmdet/mmseg one) onto `model`.

    Opens 'model' / 'state_dict' / 'module.' envelopes and keeps only `backbone.*` of dense checkpoints; renames
    the official keys (see the module docstring) and drops the ViT-RPB index buffers (rebuilt by the model).
    RPB tables are resized bicubically when the model's kernel size (NA) or token grid (ViT-RPB) differs. The
    classifier (`norm`, `head`) and the dense output norms may be absent on one side: a missing one keeps the
    model's own values, one the model lacks (or sizes differently) is dropped, as the official dense code does
    when it loads a classification checkpoint.
    """
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict()
    head_fc = "head.fc.weight" in own or "head.fc.bias" in own or isinstance(getattr(model, "head", None),
                                                                              ClassifierHead)
    out = {}
    for k, v in sd.items():
        if k.endswith("relative_position_index"):
            continue
        k = _official_to_ours(k, head_fc)
        target = own.get(k)
        if target is None or target.shape != v.shape:
            if _OPTIONAL.match(k):
                continue
            if target is not None and k.endswith("rpb"):
                heads, th, tw = target.shape
                v = resize_rel_pos_bias_table_simple(v.float(), ((th + 1) // 2, (tw + 1) // 2), tuple(target.shape))
                v = v.to(target.dtype)
        out[k] = v
    for k, v in own.items():
        if k not in out and _OPTIONAL.match(k):
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------------------------
# timm registration

_NAT_CLS = "https://shi-labs.com/projects/nat/checkpoints/CLS/"
_DINAT_1K = "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/"
_DINAT_22K = "https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/"
_DINAT_ISO = "https://shi-labs.com/projects/dinat/checkpoints/isotropic/"
_PAPERS = {
    "nat": ("Neighborhood Attention Transformer", "arXiv:2204.07143"),
    "dinat": ("Dilated Neighborhood Attention Transformer", "arXiv:2209.15001"),
}


def _cfg(url: str, paper: str = "dinat", first_conv: str = "patch_embed.proj", **kwargs) -> dict:
    name, ids = _PAPERS[paper]
    return in1k_cfg(url, **{
        "first_conv": first_conv, "classifier": "head.fc", "license": "mit", "paper_name": name, "paper_ids": ids,
        "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer", **kwargs})


_TOK = "patch_embed.proj.0"
_IN22K = dict(
    num_classes=21841, notes=("ImageNet-22k pre-training checkpoint (head size 21841: not verified offline)",),
)
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
_ISO = dict(pool_size=(14, 14), classifier="head")

default_cfgs = generate_default_cfgs({
    "nat_mini.in1k": _cfg(_NAT_CLS + "nat_mini.pth", "nat", _TOK),
    "nat_tiny.in1k": _cfg(_NAT_CLS + "nat_tiny.pth", "nat", _TOK),
    "nat_small.in1k": _cfg(_NAT_CLS + "nat_small.pth", "nat", _TOK),
    "nat_base.in1k": _cfg(_NAT_CLS + "nat_base.pth", "nat", _TOK),
    "dinat_mini.in1k": _cfg(_DINAT_1K + "dinat_mini_in1k_224.pth", first_conv=_TOK),
    "dinat_tiny.in1k": _cfg(_DINAT_1K + "dinat_tiny_in1k_224.pth", first_conv=_TOK),
    "dinat_small.in1k": _cfg(_DINAT_1K + "dinat_small_in1k_224.pth", first_conv=_TOK),
    "dinat_base.in1k": _cfg(_DINAT_1K + "dinat_base_in1k_224.pth", first_conv=_TOK),
    "dinat_large.in22k_ft_in1k": _cfg(_DINAT_1K + "dinat_large_in22k_in1k_224.pth", first_conv=_TOK),
    "dinat_large.in22k": _cfg(_DINAT_22K + "dinat_large_in22k_224.pth", first_conv=_TOK, **_IN22K),
    "dinat_large_384.in22k_ft_in1k": _cfg(_DINAT_1K + "dinat_large_in22k_in1k_384.pth", first_conv=_TOK, **_384),
    "dinat_large_384_11x11.in22k_ft_in1k": _cfg(
        _DINAT_1K + "dinat_large_in22k_in1k_384_11x11.pth", first_conv=_TOK, **_384),
    # the 22k checkpoint whose RPB was interpolated 13x13 -> 21x21 to start the 11x11 fine-tune (224 px)
    "dinat_large_384_11x11.in22k": _cfg(
        _DINAT_22K + "dinat_large_in22k_224_11x11interp.pth", first_conv=_TOK, **_IN22K),
    "dinat_s_tiny.in1k": _cfg(_DINAT_1K + "dinat_s_tiny_in1k_224.pth"),
    "dinat_s_small.in1k": _cfg(_DINAT_1K + "dinat_s_small_in1k_224.pth"),
    "dinat_s_base.in1k": _cfg(_DINAT_1K + "dinat_s_base_in1k_224.pth"),
    "dinat_s_large.in22k_ft_in1k": _cfg(_DINAT_1K + "dinat_s_large_in1k_224.pth"),
    "dinat_s_large.in22k": _cfg(_DINAT_22K + "dinat_s_large_in22k_224.pth", **_IN22K),
    "dinat_s_large_384.in22k_ft_in1k": _cfg(_DINAT_1K + "dinat_s_large_in1k_384.pth", **_384),
    "nat_isotropic_small.in1k": _cfg(_DINAT_ISO + "nat_isotropic_small_in1k_224.pth", **_ISO),
    "nat_isotropic_base.in1k": _cfg(_DINAT_ISO + "nat_isotropic_base_in1k_224.pth", **_ISO),
    "dinat_isotropic_small.in1k": _cfg(_DINAT_ISO + "dinat_isotropic_small_in1k_224.pth", **_ISO),
    "dinat_isotropic_base.in1k": _cfg(_DINAT_ISO + "dinat_isotropic_base_in1k_224.pth", **_ISO),
    "vitrpb_small.in1k": _cfg(_DINAT_ISO + "vitrpb_small_in1k_224.pth", **_ISO),
    "vitrpb_base.in1k": _cfg(_DINAT_ISO + "vitrpb_base_in1k_224.pth", **_ISO),
})


def _create(cls, variant: str, pretrained: bool, out_indices=(0, 1, 2, 3), **kwargs):
    model = build_model_with_pretrained_file(
        cls, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )
    return set_fused_linear(model)


def _create_nat(variant: str, pretrained: bool = False, **kwargs) -> NAT:
    return _create(NAT, variant, pretrained, **kwargs)


def _create_dinats(variant: str, pretrained: bool = False, **kwargs) -> DiNATs:
    return _create(DiNATs, variant, pretrained, **kwargs)


def _create_isotropic(variant: str, pretrained: bool = False, **kwargs) -> NATIsotropic:
    return _create(NATIsotropic, variant, pretrained, out_indices=kwargs.pop("out_indices", (2, 5, 8, 11)), **kwargs)


def _cycle(depths: Sequence[int], patterns: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per-block dilations: each level repeats its pattern (e.g. (1, 8) -> 1, 8, 1 for 3 blocks)."""
    return [[p[j % len(p)] for j in range(d)] for d, p in zip(depths, patterns)]


_D224 = ((1, 8), (1, 4), (1, 2), (1,))
_D384 = ((1, 13), (1, 6), (1, 3), (1,))
_MINI = dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2)
_TINY = dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3, drop_path_rate=0.2)
_SMALL = dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2, drop_path_rate=0.3)
_BASE = dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2, drop_path_rate=0.5,
             layer_scale=1e-5)
_LARGE = dict(depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2, drop_path_rate=0.35)


def _dinat(variant: str, pretrained: bool, args: dict, patterns=_D224, **kwargs) -> NAT:
    args = dict(args, **kwargs)
    args.setdefault("dilations", _cycle(args["depths"], patterns))
    return _create_nat(variant, pretrained, **args)


@register_zoo_model("nat")
def nat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Mini (20.0M params, 2.7 GMACs at 224, 81.8% IN-1k top-1)."""
    return _create_nat("nat_mini", pretrained, **dict(_MINI, **kwargs))


@register_zoo_model("nat")
def nat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Tiny (27.9M params, 4.3 GMACs, 83.2%)."""
    return _create_nat("nat_tiny", pretrained, **dict(_TINY, **kwargs))


@register_zoo_model("nat")
def nat_small(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Small (50.7M params, 7.8 GMACs, 83.7%; layer scale 1e-5)."""
    return _create_nat("nat_small", pretrained, **dict(_SMALL, layer_scale=1e-5, **kwargs))


@register_zoo_model("nat")
def nat_base(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Base (89.8M params, 13.7 GMACs, 84.3%; layer scale 1e-5)."""
    return _create_nat("nat_base", pretrained, **dict(_BASE, **kwargs))


@register_zoo_model("dinat")
def dinat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Mini (20.0M params, 2.7 GMACs, 81.8%)."""
    return _dinat("dinat_mini", pretrained, _MINI, **kwargs)


@register_zoo_model("dinat")
def dinat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Tiny (27.9M params, 4.3 GMACs, 82.7%)."""
    return _dinat("dinat_tiny", pretrained, _TINY, **kwargs)


@register_zoo_model("dinat")
def dinat_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Small (50.7M params, 7.8 GMACs, 83.8%; no layer scale, unlike NAT-Small)."""
    return _dinat("dinat_small", pretrained, _SMALL, **kwargs)


@register_zoo_model("dinat")
def dinat_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Base (89.8M params, 13.7 GMACs, 84.4%; layer scale 1e-5)."""
    return _dinat("dinat_base", pretrained, _BASE, **kwargs)


@register_zoo_model("dinat")
def dinat_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large (200.9M params, 30.6 GMACs, 86.6% after IN-22k pre-training)."""
    return _dinat("dinat_large", pretrained, _LARGE, **kwargs)


@register_zoo_model("dinat")
def dinat_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 384 px (dilations 13 / 6 / 3; 89.7 GMACs, 87.4%)."""
    return _dinat("dinat_large_384", pretrained, _LARGE, _D384, **kwargs)


@register_zoo_model("dinat")
def dinat_large_384_11x11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 384 px with 11x11 kernels and the 224 dilations (201.1M params, 92.4 GMACs, 87.5%)."""
    return _dinat("dinat_large_384_11x11", pretrained, dict(_LARGE, kernel_size=11), **kwargs)


_S_TINY = dict(depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), embed_dim=96, drop_path_rate=0.2)
_S_SMALL = dict(depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), embed_dim=96, drop_path_rate=0.3)
_S_BASE = dict(depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), embed_dim=128, drop_path_rate=0.5)
_S_LARGE = dict(depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192, drop_path_rate=0.35)


def _dinat_s(variant: str, pretrained: bool, args: dict, patterns=_D224, **kwargs) -> DiNATs:
    args = dict(args, **kwargs)
    args.setdefault("dilations", _cycle(args["depths"], patterns))
    return _create_dinats(variant, pretrained, **args)


@register_zoo_model("dinat")
def dinat_s_tiny(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Tiny (28.3M params, 4.5 GMACs, 81.8%)."""
    return _dinat_s("dinat_s_tiny", pretrained, _S_TINY, **kwargs)


@register_zoo_model("dinat")
def dinat_s_small(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Small (49.6M params, 8.7 GMACs, 83.5%)."""
    return _dinat_s("dinat_s_small", pretrained, _S_SMALL, **kwargs)


@register_zoo_model("dinat")
def dinat_s_base(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Base (87.8M params, 15.4 GMACs, 83.8%)."""
    return _dinat_s("dinat_s_base", pretrained, _S_BASE, **kwargs)


@register_zoo_model("dinat")
def dinat_s_large(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Large (196.5M params, 34.5 GMACs, 86.5% after IN-22k pre-training)."""
    return _dinat_s("dinat_s_large", pretrained, _S_LARGE, **kwargs)


@register_zoo_model("dinat")
def dinat_s_large_384(pretrained: bool = False, **kwargs) -> DiNATs:
    """DiNAT_s-Large at 384 px (dilations 13 / 6 / 3; 101.5 GMACs, 87.4%)."""
    return _dinat_s("dinat_s_large_384", pretrained, _S_LARGE, _D384, **kwargs)


_ISO_SMALL = dict(embed_dim=384, num_heads=12, drop_path_rate=0.1)
_ISO_BASE = dict(embed_dim=768, num_heads=24, drop_path_rate=0.4)


@register_zoo_model("nat")
def nat_isotropic_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic NAT-S (22.0M params, 4.3 GMACs, 80.0%); any input size."""
    return _create_isotropic("nat_isotropic_small", pretrained, **dict(_ISO_SMALL, dilation=1, **kwargs))


@register_zoo_model("nat")
def nat_isotropic_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic NAT-B (86.5M params, 16.9 GMACs, 81.6%); any input size."""
    return _create_isotropic("nat_isotropic_base", pretrained, **dict(_ISO_BASE, dilation=1, **kwargs))


@register_zoo_model("dinat")
def dinat_isotropic_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic DiNAT-S (dilation 2 in odd blocks; 22.0M params, 4.3 GMACs, 80.8%); any input size."""
    return _create_isotropic("dinat_isotropic_small", pretrained, **dict(_ISO_SMALL, dilation=2, **kwargs))


@register_zoo_model("dinat")
def dinat_isotropic_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """Isotropic DiNAT-B (86.5M params, 16.9 GMACs, 82.1%); any input size."""
    return _create_isotropic("dinat_isotropic_base", pretrained, **dict(_ISO_BASE, dilation=2, **kwargs))


@register_zoo_model("dinat")
def vitrpb_small(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """ViT-RPB-S (22.1M params, 4.6 GMACs, 81.2%); inputs up to img_size (224 default; pass img_size= for more)."""
    return _create_isotropic("vitrpb_small", pretrained, **dict(_ISO_SMALL, block_type="mhsa_rpb", **kwargs))


@register_zoo_model("dinat")
def vitrpb_base(pretrained: bool = False, **kwargs) -> NATIsotropic:
    """ViT-RPB-B (86.6M params, 17.5 GMACs, 82.5%); inputs up to img_size (224 default)."""
    return _create_isotropic("vitrpb_base", pretrained, **dict(_ISO_BASE, block_type="mhsa_rpb", **kwargs))
