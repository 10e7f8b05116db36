"""SLAB: Simplified Linear Attention + Progressive Re-parameterized BatchNorm (Guo et al., ICML 2024).

Paper: https://arxiv.org/abs/2405.11582 -- official code: https://github.com/xinghaochen/SLAB (no LICENSE file;
this is a re-implementation from the paper and a written spec, no code copied).

Two drop-in changes to existing backbones, built here on timm's DeiT/ViT, Swin and on PVT v1 / CSwin blocks:

* SLA (`SimplifiedLinearAttention`): ReLU kernel on q and k + a learnable per-token `positional_encoding`,
  `out_i = sum_j (q_i.k_j) v_j / (q_i . sum_j k_j + 1e-6)` in fp32 (autocast off), plus a 5x5 depthwise conv of v
  with head-dim channels shared by all heads. The positional encoding ties each SLA layer to its token count:
  pass `img_size` to build at another resolution (checkpoint_filter_fn resizes the encodings bicubically).
* PRepBN (`visionattn.layers.prepbn.LinearNorm`): LayerNorm -> RepBN blend during training (per-module counter
  buffers `warm/iter/total_step`, in the state dict), RepBN only at inference. Drive it per optimizer step with
  `PRepBNScheduler` / `set_prepbn_step` (see visionattn.layers.prepbn) or keep the official per-forward decrement.

Variants (manifest names; official file names in the default cfgs):
`slab_deit_t/s`, `deit_t_prepbn` (plain RepBN norms), `deit_s_prepbn`, `slab_pvt_t/s/m`, `pvt_t/s/m_prepbn`,
`slab_swin_t/s/b`, `swin_t_prepbn` (plain RepBN norms), `slab_cswin_t/s`.

Inference re-parameterisation: `model.fuse()` (or `timm.utils.model.reparameterize_model(model)`) folds every
RepBN into the following linear/conv layer (block norm1 -> qkv / q+kv(or sr conv), norm2 -> fc1, patch-merging
norm -> reduction, patch-embed norm -> its conv with the correct `a * bias + b` bias, PVT SRA norm -> kv); the
remaining final norm becomes a per-channel affine. Call it in eval mode after training/BN recalibration.
`recalibrate_bn(model, batches)` / `bn_recalibration_mode(model)`: the official post-training BN recalibration
(eval model, BatchNorms re-estimating running statistics).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    resize_rel_pos_bias_table,
    to_2tuple,
    trunc_normal_,
)
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock, window_partition, window_reverse
from timm.models.vision_transformer import Block, VisionTransformer
from timm.utils.model import reparameterize_model
from torch import nn

from visionattn._registry import register_zoo_model
from visionattn.checkpoint import (
    build_model_with_pretrained_file,
    load_pretrained_file,
    load_state_dict_file,
    resample_square_pos_embed,
    shift_swin_downsample_keys,
    unwrap_state_dict,
)
from visionattn.layers.cswin import (
    CSWinBlock,
    CSWinStem,
    CSWinTransformer,
    LePEAttention,
    MergeBlock,
    img_to_windows,
    stripe_window_size,
    windows_to_img,
)
from visionattn.layers.prepbn import (
    ChannelAffine,
    LinearNorm,
    RepBN,
    bn_recalibration_mode,
    fold_affine_after_conv,
    fold_affine_into_conv_in,
    fold_affine_into_linear,
    is_repbn_norm,
    recalibrate_bn,
    repbn_affine,
)
from visionattn.layers.pvt import PvtAttention
from visionattn.official import register_official
from visionattn.utils import LinearHeadMixin

__all__ = [
    "SimplifiedLinearAttention",
    "SlabVisionTransformer",
    "SlabPvt",
    "SlabSwinTransformer",
    "SlabCSWin",
    "CSwinSLA",
    "checkpoint_filter_fn",
    "load_official_checkpoint",
    "make_norm_layer",
    "bn_recalibration_mode",
    "recalibrate_bn",
    "sla_core",
]

_SLA_EPS = 1e-6


# ------------------------------------------------------------------------------------------------- norms


def make_norm_layer(kind: str = "linearnorm", step: int = 60000, ln_eps: float = 1e-6):
    """Norm factory: 'repbn' (plain RepBN), 'linearnorm' (PRepBN LN -> RepBN over `step`) or 'layernorm'."""
    if kind == "repbn":
        return RepBN
    if kind == "linearnorm":
        return partial(LinearNorm, norm1=partial(nn.LayerNorm, eps=ln_eps), norm2=RepBN, step=step)
    if kind == "layernorm":
        return partial(nn.LayerNorm, eps=ln_eps)
    raise ValueError(f"norm must be 'repbn', 'linearnorm' or 'layernorm', got {kind!r}")


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


# ------------------------------------------------------------------------------------------------- SLA


def sla_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Normalised ReLU-kernel linear attention, (BH, N, c) x3 -> (BH, N, d), computed in fp32 with autocast off.

    q, k must already be non-negative (ReLU'd). Picks the cheaper product order as the official code does.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.float(), k.float(), v.float()
        i, j, c, d = q.shape[-2], k.shape[-2], k.shape[-1], v.shape[-1]
        z = 1.0 / (torch.einsum("bic,bc->bi", q, k.sum(dim=1)) + _SLA_EPS)
        if i * j * (c + d) > c * d * (i + j):
            out = torch.einsum("bic,bcd->bid", q, torch.einsum("bjc,bjd->bcd", k, v))
        else:
            out = torch.einsum("bij,bjd->bid", torch.einsum("bic,bjc->bij", q, k), v)
        return out * z.unsqueeze(-1)


class SimplifiedLinearAttention(nn.Module):
    """SLA over a fixed (H, W) token grid (official parameter names).

    Args:
        dim: channels; num_heads: heads (head dim = dim // num_heads).
        grid: (H, W) token grid the `positional_encoding` is built for.
        qkv_layout: 'qkv' (one `qkv` Linear: DeiT/Swin) or 'q_kv' (`q` + `kv` Linears: PVT).
        kernel_size: DWC kernel (odd).
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
        for lin in (self.qkv,) if qkv_layout == "qkv" else (self.q, self.kv):
            trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        B, N, C = x.shape
        H, W = hw if hw is not None else self.grid
        if H * W != N or N != self.positional_encoding.shape[1]:
            raise ValueError(
                f"SLA built for a {self.grid[0]}x{self.grid[1]} token grid got {N} tokens ({H}x{W}); build the model "
                "with the matching img_size (checkpoint_filter_fn resizes positional_encoding)"
            )
        if self.qkv_layout == "qkv":
            q, k, v = self.qkv(x).reshape(B, N, 3, C).unbind(2)
        else:
            q = self.q(x)
            k, v = self.kv(x).reshape(B, N, 2, C).unbind(2)
        q = F.relu(q)
        k = F.relu(k + self.positional_encoding)
        h, d = self.num_heads, self.head_dim
        q, k, v = (t.reshape(B, N, h, d).transpose(1, 2).reshape(B * h, N, d) for t in (q, k, v))
        out = sla_core(q, k, v)
        fmap = self.dwc(v.transpose(1, 2).reshape(B * h, d, H, W)).flatten(2).transpose(1, 2)
        out = out + fmap
        out = out.reshape(B, h, N, d).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


# ------------------------------------------------------------------------------------------------- loading


def load_official_checkpoint(path, use_ema: bool = False, map_location="cpu") -> dict[str, torch.Tensor]:
    """Tensors of an official SLAB checkpoint file (trainer envelope with a yacs config, a bare state dict,
    or .safetensors), read by `visionattn.checkpoint.load_state_dict_file`."""
    return unwrap_state_dict(load_state_dict_file(path, map_location=map_location), use_ema=use_ema)


class _OfficialPretrainedMixin:
    """`model.load_pretrained(path)`: an official trainer file through checkpoint_filter_fn, strict except a
    classifier whose size differs (kept freshly initialised)."""

    def load_pretrained(self, checkpoint_path, prefix: str = ""):
        load_pretrained_file(self, checkpoint_path, checkpoint_filter_fn, strict=True)


# ------------------------------------------------------------------------------------------------- DeiT


class _SlabVitBlock(Block):
    """timm ViT block; `reparameterize()` folds RepBN norms into attn.qkv / mlp.fc1."""

    def reparameterize(self):
        self.norm1 = _fold_norm_into(self.norm1, (self.attn, "qkv"))
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


class _SlaVitAttention(SimplifiedLinearAttention):
    def forward(self, x, attn_mask=None, is_causal=False):  # timm Block passes these; SLA has no mask
        return super().forward(x, self.grid)


class SlabVisionTransformer(_OfficialPretrainedMixin, VisionTransformer):
    """DeiT with PRepBN norms; `linear_attn=True` gives SLAB-DeiT (SLA in every block, no class token in the
    forward, mean-pooled head; the official unused class token is kept as `cls_token_unused`)."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        linear_attn: bool = True,
        norm: str = "linearnorm",
        prepbn_step: int = 60000,
        ln_eps: float = 1e-6,
        kernel_size: int = 5,
        **kwargs,
    ):
        self.linear_attn = linear_attn
        norm_layer = make_norm_layer(norm, prepbn_step, ln_eps)
        if linear_attn:
            kwargs.update(class_token=False, global_pool=kwargs.get("global_pool", "avg") or "avg", fc_norm=False)
        else:
            kwargs.setdefault("global_pool", "token")
        super().__init__(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, norm_layer=norm_layer, block_fn=_SlabVitBlock, **kwargs,
        )
        if linear_attn:
            grid = self.patch_embed.grid_size
            attn_drop = kwargs.get("attn_drop_rate", 0.0)
            proj_drop = kwargs.get("proj_drop_rate", 0.0)
            for blk in self.blocks:
                blk.attn = _SlaVitAttention(
                    embed_dim, num_heads, grid, qkv_bias=kwargs.get("qkv_bias", True), attn_drop=attn_drop,
                    proj_drop=proj_drop, kernel_size=kernel_size,
                )
            # The official model owns an unused class token (it counts in the parameter total); frozen so DDP
            # and optimizers skip it.
            self.cls_token_unused = nn.Parameter(torch.zeros(1, 1, embed_dim), requires_grad=False)
            trunc_normal_(self.cls_token_unused, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token", "cls_token_unused", "dist_token"}

    def fuse(self):
        """Fold every RepBN for inference (in place, eval mode); returns self."""
        self.eval()
        return reparameterize_model(self, inplace=True)


# ------------------------------------------------------------------------------------------------- PVT v1


class _PvtAttentionRep(PvtAttention):
    """PVT v1 SRA; `reparameterize()` folds the reduction norm into kv."""

    def reparameterize(self):
        if self.sr_ratio > 1:
            self.norm = _fold_norm_into(self.norm, (self, "kv"))


class PvtBlock(nn.Module):
    def __init__(self, dim, num_heads, grid, mlp_ratio=4.0, qkv_bias=True, proj_drop=0.0, attn_drop=0.0,
                 drop_path=0.0, norm_layer=None, sr_ratio=1, kernel_size=5, attn_type="L"):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if attn_type == "L":
            self.attn = SimplifiedLinearAttention(dim, num_heads, grid, qkv_bias, attn_drop, proj_drop, kernel_size,
                                                  qkv_layout="q_kv")
        elif attn_type == "S":
            self.attn = _PvtAttentionRep(dim, num_heads, qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                                         sr_ratio=sr_ratio, norm_layer=norm_layer)
        else:
            raise ValueError(f"attn_type letters must be 'L' or 'S', got {attn_type!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, x, hw):
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def reparameterize(self):
        if isinstance(self.attn, PvtAttention) and self.attn.sr_ratio > 1:
            self.attn.reparameterize()
            self.norm1 = _fold_norm_into(self.norm1, (self.attn, "q"), (self.attn, "sr"))
        else:
            self.norm1 = _fold_norm_into(self.norm1, (self.attn, "q"), (self.attn, "kv"))
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


class _ConvNormEmbed(nn.Module):
    """Conv patch embedding + token norm (`proj`, `norm`); reparameterize folds the norm into the conv."""

    def __init__(self, in_chans, embed_dim, patch_size, norm_layer, grid):
        super().__init__()
        self.grid = grid
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x):
        x = self.proj(x)
        hw = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), (hw[0], hw[1])

    def reparameterize(self):
        if is_repbn_norm(self.norm):
            a, b = repbn_affine(self.norm)
            self.proj = fold_affine_after_conv(self.proj, a, b)
            self.norm = nn.Identity()


class PvtStage(nn.Module):
    def __init__(self, in_chans, dim, depth, num_heads, grid, patch_size, mlp_ratio, sr_ratio, attn_type, dpr,
                 norm_layer, qkv_bias=True, drop_rate=0.0, attn_drop=0.0, kernel_size=5):
        super().__init__()
        self.grid = grid
        self.attn_type = attn_type
        self.patch_embed = _ConvNormEmbed(in_chans, dim, patch_size, norm_layer, grid)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            PvtBlock(dim, num_heads, grid, mlp_ratio, qkv_bias, drop_rate, attn_drop, dpr[j], norm_layer, sr_ratio,
                     kernel_size, attn_type)
            for j in range(depth)
        ])
        self.grad_checkpointing = False
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x):
        B = x.shape[0]
        x, (H, W) = self.patch_embed(x)
        pos = self.pos_embed
        if (H, W) != self.grid:
            # as the official PVT: bilinear pos-embed resize (the SLA positional_encoding cannot follow)
            pos = F.interpolate(pos.reshape(1, *self.grid, -1).permute(0, 3, 1, 2), size=(H, W), mode="bilinear")
            pos = pos.flatten(2).transpose(1, 2)
        x = self.pos_drop(x + pos)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(blk, x, (H, W), use_reentrant=False)
            else:
                x = blk(x, (H, W))
        return x.transpose(1, 2).reshape(B, -1, H, W)


class SlabPvt(_OfficialPretrainedMixin, LinearHeadMixin, nn.Module):
    """PVT v1 with PRepBN norms and SLA ('L') or spatial-reduction softmax ('S') stages; no final norm, the
    head reads the mean token of the last stage (as the official SLAB PVT)."""

    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        global_pool="avg",
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
        depths=(2, 2, 2, 2),
        sr_ratios=(8, 4, 2, 1),
        attn_type="LLLL",
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        norm="linearnorm",
        prepbn_step=300000,
        ln_eps=1e-6,
        kernel_size=5,
    ):
        super().__init__()
        if len(attn_type) != 4 or any(c not in "LS" for c in attn_type):
            raise ValueError(f"attn_type must be 4 letters from 'L'/'S', got {attn_type!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        img_size = to_2tuple(img_size)
        norm_layer = make_norm_layer(norm, prepbn_step, ln_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, cur, prev = [], 0, in_chans
        self.feature_info = []
        for i in range(4):
            stride = patch_size * 2 ** i
            grid = (img_size[0] // stride, img_size[1] // stride)
            stages.append(PvtStage(
                prev, embed_dims[i], depths[i], num_heads[i], grid, patch_size if i == 0 else 2, mlp_ratios[i],
                sr_ratios[i], attn_type[i], dpr[cur:cur + depths[i]], norm_layer, qkv_bias, drop_rate,
                attn_drop_rate, kernel_size,
            ))
            cur += depths[i]
            prev = embed_dims[i]
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=stride, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_linear)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {f"stages.{i}.pos_embed" for i in range(4)}

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r"^stages\.0\.(?:patch_embed|pos_embed)",
                    blocks=r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)\.blocks\.(\d+)", None),
                                                             (r"^stages\.(\d+)\.(?:patch_embed|pos_embed)", (0,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        for s in self.stages:
            s.grad_checkpointing = enable

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if not stop_early else self.stages[:max_index + 1]
        inter = []
        for i, st in enumerate(stages):
            x = st(x)
            if i in take:
                inter.append(x)
        return inter if intermediates_only else (x, inter)

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x):
        return self.stages(x)

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def fuse(self):
        self.eval()
        return reparameterize_model(self, inplace=True)


def _init_linear(m):
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------------- Swin


class _SwinBlock(SwinTransformerBlock):
    """timm Swin block (NHWC) whose norms are PRepBN; `reparameterize()` folds them."""

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
        if (H, W) != self.input_resolution:
            raise ValueError(f"SLA block built for {self.input_resolution}, got a {H}x{W} map")
        ws, s = self.window_size, self.shift_size
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        win = window_partition(x, (ws, ws)).reshape(-1, ws * ws, C)
        win = self.attn(win, (ws, ws)).reshape(-1, ws, ws, C)
        x = window_reverse(win, (ws, ws), H, W)
        if s:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        return x

    def forward(self, x):
        B, H, W, C = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(B, -1, C)
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
        if is_repbn_norm(self.norm):
            a, b = repbn_affine(self.norm)
            self.proj = fold_affine_after_conv(self.proj, a, b)
            self.norm = nn.Identity()


class SlabSwinStage(nn.Module):
    def __init__(self, dim, out_dim, input_resolution, depth, num_heads, window_size, attn_type, downsample,
                 mlp_ratio, qkv_bias, proj_drop, attn_drop, drop_path, norm_layer, kernel_size):
        super().__init__()
        self.input_resolution = input_resolution
        self.downsample = _PatchMerging(dim, out_dim, norm_layer=norm_layer) if downsample else nn.Identity()
        res = (input_resolution[0] // 2, input_resolution[1] // 2) if downsample else input_resolution
        self.output_resolution = res
        self.grad_checkpointing = False
        blocks = []
        for i in range(depth):
            if attn_type == "L":
                blocks.append(SlaSwinBlock(out_dim, res, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                           mlp_ratio, qkv_bias, proj_drop, attn_drop, drop_path[i], norm_layer,
                                           kernel_size))
            else:
                blocks.append(_SwinBlock(out_dim, res, num_heads, window_size=window_size,
                                         shift_size=0 if i % 2 == 0 else window_size // 2, mlp_ratio=mlp_ratio,
                                         qkv_bias=qkv_bias, proj_drop=proj_drop, attn_drop=attn_drop,
                                         drop_path=drop_path[i], norm_layer=norm_layer))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SlabSwinTransformer(_OfficialPretrainedMixin, LinearHeadMixin, nn.Module):
    """Swin with PRepBN norms; 'L' stages use SLA (window `window_size`, clipped to the stage map), 'S' stages
    timm's shifted-window softmax attention (window 7, or 12 when window_size > 56, as the official code)."""

    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        global_pool="avg",
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=56,
        attn_type="LLSS",
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
        norm="linearnorm",
        prepbn_step=60000,
        ln_eps=1e-5,
        kernel_size=5,
    ):
        super().__init__()
        n = len(depths)
        if len(attn_type) != n or any(c not in "LS" for c in attn_type):
            raise ValueError(f"attn_type must be {n} letters from 'L'/'S', got {attn_type!r}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        img_size = to_2tuple(img_size)
        norm_layer = make_norm_layer(norm, prepbn_step, ln_eps)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.output_fmt = "NHWC"
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (n - 1))
        self.patch_embed = _PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer=norm_layer,
                                       output_fmt="NHWC")
        grid = self.patch_embed.grid_size
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, cur, dim, res = [], 0, embed_dim, tuple(grid)
        self.feature_info = []
        for i in range(n):
            out_dim = int(embed_dim * 2 ** i)
            ws = window_size if attn_type[i] == "L" else (7 if window_size <= 56 else 12)
            st = SlabSwinStage(dim, out_dim, res, depths[i], num_heads[i], ws, attn_type[i], i > 0, mlp_ratio,
                               qkv_bias, proj_drop_rate, attn_drop_rate, dpr[cur:cur + depths[i]], norm_layer,
                               kernel_size)
            stages.append(st)
            res, dim, cur = st.output_resolution, out_dim, cur + depths[i]
            self.feature_info.append(dict(num_chs=out_dim, reduction=patch_size * 2 ** i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_linear)

    @torch.jit.ignore
    def no_weight_decay(self):
        # as the official recipe: relative position tables not decayed; SLA positional_encoding IS decayed
        return {k for k, _ in self.named_parameters() if "relative_position_bias_table" in k}

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return dict(stem=r"^patch_embed",
                    blocks=r"^layers\.(\d+)" if coarse else [(r"^layers\.(\d+).downsample", (0,)),
                                                             (r"^layers\.(\d+)\.\w+\.(\d+)", None),
                                                             (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable=True):
        for s in self.layers:
            s.grad_checkpointing = enable

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.layers), indices)
        x = self.patch_embed(x)
        stages = self.layers if not stop_early else self.layers[:max_index + 1]
        inter = []
        last = len(self.layers) - 1
        for i, st in enumerate(stages):
            x = st(x)
            if i in take:
                y = self.norm(x) if (norm and i == last) else x
                inter.append(y.permute(0, 3, 1, 2).contiguous())
        if intermediates_only:
            return inter
        return self.norm(x), inter

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True):
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x):
        return self.norm(self.layers(self.patch_embed(x)))

    def forward_head(self, x, pre_logits: bool = False):
        if self.global_pool == "avg":
            x = x.mean((1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def fuse(self):
        self.eval()
        return reparameterize_model(self, inplace=True)


# ------------------------------------------------------------------------------------------------- CSwin


class CSwinSLA(nn.Module):
    """SLA branch for CSwin blocks (factory API of visionattn.layers.cswin): SLA over the branch window + DWC of
    v (head-dim channels) + the CSwin LePE term `get_v(v)`; `scale` is the official unused parameter."""

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
        self.scale = nn.Parameter(torch.zeros(1, 1, dim), requires_grad=False)  # official, unused: frozen
        self.positional_encoding = nn.Parameter(torch.zeros(1, self.window[0] * self.window[1], dim))

    @property
    def grid(self):
        return self.window

    def forward(self, q, k, v, hw):
        win = stripe_window_size(hw, self.branch_idx, self.split_size)
        n = win[0] * win[1]
        if n != self.positional_encoding.shape[1]:
            raise ValueError(f"CSwin SLA built for {self.window[0]}x{self.window[1]} windows got {win[0]}x{win[1]}; "
                             "build the model with the matching img_size")
        c = q.shape[-1]
        h, d = self.num_heads, self.head_dim
        qw = img_to_windows(q, hw, win).flatten(2).transpose(1, 2)
        kw = img_to_windows(k, hw, win).flatten(2).transpose(1, 2)
        vmap = img_to_windows(v, hw, win)
        lepe = self.get_v(vmap).flatten(2).transpose(1, 2)
        vw = vmap.flatten(2).transpose(1, 2)
        bw = qw.shape[0]
        qw = F.relu(qw)
        kw = F.relu(kw + self.positional_encoding)
        qh, kh, vh = (t.reshape(bw, n, h, d).transpose(1, 2).reshape(bw * h, n, d) for t in (qw, kw, vw))
        out = sla_core(qh, kh, vh)
        out = out + self.dwc(vh.transpose(1, 2).reshape(bw * h, d, *win)).flatten(2).transpose(1, 2)
        out = out.reshape(bw, h, n, d).transpose(1, 2).reshape(bw, n, c) + lepe
        return windows_to_img(out, hw, win)


class _CSWinBlockRep(CSWinBlock):
    def reparameterize(self):
        self.norm1 = _fold_norm_into(self.norm1, (self, "qkv"))
        self.norm2 = _fold_norm_into(self.norm2, (self.mlp, "fc1"))


class _CSWinStemRep(CSWinStem):
    def reparameterize(self):
        if is_repbn_norm(self[2]):
            a, b = repbn_affine(self[2])
            self[0] = fold_affine_after_conv(self[0], a, b)
            self[2] = nn.Identity()


class _MergeRep(MergeBlock):
    def reparameterize(self):
        if is_repbn_norm(self.norm):
            a, b = repbn_affine(self.norm)
            self.conv = fold_affine_after_conv(self.conv, a, b)
            self.norm = nn.Identity()


class SlabCSWin(_OfficialPretrainedMixin, CSWinTransformer):
    """SLAB-CSwin: CSwin (visionattn.layers.cswin) whose 'L' stages use `CSwinSLA` with the window given by
    `la_split_size` (a split that reaches the stage resolution gives one global window) and whose norms are
    PRepBN; 'S' stages keep LePE stripe attention with `split_size`."""

    def __init__(self, img_size=224, in_chans=3, num_classes=1000, embed_dim=64, depth=(2, 4, 18, 1),
                 split_size=(1, 2, 7, 7), la_split_size="56-28-14-7", num_heads=(2, 4, 8, 16), mlp_ratio=4.0,
                 qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 attn_type="LLSS", norm="linearnorm", prepbn_step=120000, ln_eps=1e-5, kernel_size=5,
                 global_pool="avg"):
        if len(attn_type) != 4 or any(c not in "LS" for c in attn_type):
            raise ValueError(f"attn_type must be 4 letters from 'L'/'S', got {attn_type!r}")
        la = [int(v) for v in str(la_split_size).split("-")]
        if len(la) != 4:
            raise ValueError(f"la_split_size must be 4 sizes joined by '-', got {la_split_size!r}")
        img = img_size if isinstance(img_size, int) else img_size[0]
        res = [img // 4 // 2 ** i for i in range(4)]
        splits = [la[i] if attn_type[i] == "L" else split_size[i] for i in range(4)]
        single = [i == 3 or splits[i] >= res[i] for i in range(4)]
        layers = []
        for i in range(4):
            if attn_type[i] == "L":
                win = (res[i], res[i]) if single[i] else None
                if win is None:
                    raise ValueError("SLA stripe branches (la_split_size smaller than the stage grid) are not "
                                     "supported: no official config uses them")
                layers.append(partial(CSwinSLA, window=win, kernel_size=kernel_size))
            else:
                layers.append(LePEAttention)
        super().__init__(
            img_size=img, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim, depth=tuple(depth),
            split_size=tuple(splits), num_heads=tuple(num_heads), mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            qk_scale=qk_scale, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            attn_layer=layers, single_branch=single, norm_layer=make_norm_layer(norm, prepbn_step, ln_eps),
            global_pool=global_pool, block_layer=_CSWinBlockRep, stem_layer=_CSWinStemRep, merge_layer=_MergeRep,
        )

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def fuse(self):
        self.eval()
        return reparameterize_model(self, inplace=True)


def _create_cswin(variant, pretrained=False, **kwargs):
    return build_model_with_pretrained_file(SlabCSWin, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                            feature_cfg=_feature_cfg(), **kwargs)


# ------------------------------------------------------------------------------------------------- checkpoints

_PVT_RENAMES = (
    (re.compile(r"^patch_embed(\d)\."), lambda m: f"stages.{int(m.group(1)) - 1}.patch_embed."),
    (re.compile(r"^pos_embed(\d)$"), lambda m: f"stages.{int(m.group(1)) - 1}.pos_embed"),
    (re.compile(r"^block(\d)\."), lambda m: f"stages.{int(m.group(1)) - 1}.blocks."),
)


def _token_grid(model: nn.Module, key: str) -> tuple[tuple[int, int], int]:
    """(grid, prefix tokens) of the positional tensor `key` in `model`."""
    owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
    if key.endswith("positional_encoding"):
        return tuple(owner.grid), 0
    if isinstance(owner, PvtStage):
        return tuple(owner.grid), 0
    if isinstance(model, SlabVisionTransformer):
        return tuple(model.patch_embed.grid_size), 0 if model.no_embed_class else model.num_prefix_tokens
    raise ValueError(f"do not know the token grid of {key}")


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official SLAB checkpoint (trainer envelope or bare state dict) onto `model`.

    Renames: SLAB-DeiT `cls_token` -> `cls_token_unused`; PVT `patch_embed{i}/pos_embed{i}/block{i}` ->
    `stages.{i-1}.*`; Swin `layers.{i}.downsample` -> `layers.{i+1}.downsample`; CSwin see `_cswin_rename`.
    Drops buffers rebuilt at construction (`relative_position_index`, `attn_mask`). Resizes `pos_embed*` and
    SLA `positional_encoding` (bicubic, square source grids) to the model's token grids, else ValueError, and
    Swin `relative_position_bias_table`s to the model's windows.
    """
    sd = unwrap_state_dict(state_dict)
    if isinstance(model, SlabSwinTransformer):
        sd = shift_swin_downsample_keys(sd)
    target = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith(("relative_position_index", "attn_mask")) or k.endswith("relative_coords_table"):
            continue
        if isinstance(model, SlabVisionTransformer):
            if k == "cls_token" and model.linear_attn:
                k = "cls_token_unused"
        elif isinstance(model, SlabPvt):
            for pat, rep in _PVT_RENAMES:
                k = pat.sub(rep, k)
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


def _feature_cfg(n=4):
    return dict(out_indices=tuple(range(n)), feature_cls="getter")


def _create_deit(variant, pretrained=False, **kwargs):
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_pretrained_file(
        SlabVisionTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )


def _create_pvt(variant, pretrained=False, **kwargs):
    return build_model_with_pretrained_file(SlabPvt, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                            feature_cfg=_feature_cfg(), **kwargs)


def _create_swin(variant, pretrained=False, **kwargs):
    return build_model_with_pretrained_file(
        SlabSwinTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=_feature_cfg(), **kwargs,
    )


_URL = "https://github.com/xinghaochen/SLAB/releases/download/ckpts/"


def _cfg(file: str | None = None, **kwargs):
    return {
        "url": _URL + file if file else "",
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "fixed_input_size": True,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "unknown (official repository has no LICENSE file)",
        "paper_ids": "arXiv:2405.11582", "paper_name": "SLAB: Efficient Transformers with Simplified Linear "
        "Attention and Progressive Re-parameterized Batch Normalization",
        "origin_url": "https://github.com/xinghaochen/SLAB",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "slab_deit_t.in1k": _cfg("slab_deit_tiny.pth"),
    "slab_deit_s.in1k": _cfg("slab_deit_small.pth"),
    "deit_t_prepbn.in1k": _cfg("deit_tiny_prepbn.pth"),
    "deit_s_prepbn.in1k": _cfg("deit_small_prepbn.pth"),
    "slab_pvt_t.in1k": _cfg("slab_pvt_tiny.pth", first_conv="stages.0.patch_embed.proj"),
    "slab_pvt_s": _cfg(None, first_conv="stages.0.patch_embed.proj"),
    "slab_pvt_m": _cfg(None, first_conv="stages.0.patch_embed.proj"),
    "pvt_t_prepbn.in1k": _cfg("pvt_tiny_prepbn.pth", first_conv="stages.0.patch_embed.proj", fixed_input_size=False),
    "pvt_s_prepbn.in1k": _cfg("pvt_small_prepbn.pth", first_conv="stages.0.patch_embed.proj", fixed_input_size=False),
    "pvt_m_prepbn.in1k": _cfg("pvt_medium_prepbn.pth", first_conv="stages.0.patch_embed.proj",
                              fixed_input_size=False),
    "slab_swin_t.in1k": _cfg("slab_swin_tiny.pth"),
    "slab_swin_s.in1k": _cfg("slab_swin_small.pth"),
    "slab_swin_b": _cfg(None),
    "swin_t_prepbn.in1k": _cfg("swin_tiny_prepbn.pth"),
    "slab_cswin_t.in1k": _cfg("slab_cswin_tiny.pth", first_conv="stage1_conv_embed.0", crop_pct=0.9),
    "slab_cswin_s": _cfg(None, first_conv="stage1_conv_embed.0", crop_pct=0.9),
})


@register_zoo_model("slab")
def slab_deit_t(pretrained=False, **kwargs) -> SlabVisionTransformer:
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, linear_attn=True, norm="linearnorm",
                prepbn_step=60000, ln_eps=1e-6)
    return _create_deit("slab_deit_t", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_deit_s(pretrained=False, **kwargs) -> SlabVisionTransformer:
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, linear_attn=True, norm="linearnorm",
                prepbn_step=60000, ln_eps=1e-6)
    return _create_deit("slab_deit_s", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def deit_t_prepbn(pretrained=False, **kwargs) -> SlabVisionTransformer:
    """DeiT-T-PRepBN: the released model uses plain RepBN norms (no LN blend, no counters)."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, linear_attn=False, norm="repbn")
    return _create_deit("deit_t_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def deit_s_prepbn(pretrained=False, **kwargs) -> SlabVisionTransformer:
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, linear_attn=False, norm="linearnorm",
                prepbn_step=300000, ln_eps=1e-6)
    return _create_deit("deit_s_prepbn", pretrained, **dict(args, **kwargs))


def _pvt_args(depths, attn_type):
    return dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                depths=depths, sr_ratios=(8, 4, 2, 1), attn_type=attn_type, norm="linearnorm", prepbn_step=300000,
                ln_eps=1e-6)


@register_zoo_model("slab")
def slab_pvt_t(pretrained=False, **kwargs) -> SlabPvt:
    return _create_pvt("slab_pvt_t", pretrained, **dict(_pvt_args((2, 2, 2, 2), "LLLL"), **kwargs))


@register_zoo_model("slab")
def slab_pvt_s(pretrained=False, **kwargs) -> SlabPvt:
    args = dict(_pvt_args((3, 4, 6, 3), "LLLL"), drop_path_rate=0.1)
    return _create_pvt("slab_pvt_s", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_pvt_m(pretrained=False, **kwargs) -> SlabPvt:
    args = dict(_pvt_args((3, 4, 18, 3), "LLLL"), drop_path_rate=0.3)
    return _create_pvt("slab_pvt_m", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def pvt_t_prepbn(pretrained=False, **kwargs) -> SlabPvt:
    return _create_pvt("pvt_t_prepbn", pretrained, **dict(_pvt_args((2, 2, 2, 2), "SSSS"), **kwargs))


@register_zoo_model("slab")
def pvt_s_prepbn(pretrained=False, **kwargs) -> SlabPvt:
    args = dict(_pvt_args((3, 4, 6, 3), "SSSS"), drop_path_rate=0.1)
    return _create_pvt("pvt_s_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def pvt_m_prepbn(pretrained=False, **kwargs) -> SlabPvt:
    args = dict(_pvt_args((3, 4, 18, 3), "SSSS"), drop_path_rate=0.3)
    return _create_pvt("pvt_m_prepbn", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_swin_t(pretrained=False, **kwargs) -> SlabSwinTransformer:
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type="LLSS",
                drop_path_rate=0.2)
    return _create_swin("slab_swin_t", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_swin_s(pretrained=False, **kwargs) -> SlabSwinTransformer:
    args = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=56, attn_type="LLSS",
                drop_path_rate=0.3)
    return _create_swin("slab_swin_s", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_swin_b(pretrained=False, **kwargs) -> SlabSwinTransformer:
    args = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=56, attn_type="LLSS",
                drop_path_rate=0.5)
    return _create_swin("slab_swin_b", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def swin_t_prepbn(pretrained=False, **kwargs) -> SlabSwinTransformer:
    """Swin-T-PRepBN: the released classification model uses plain RepBN norms."""
    args = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, attn_type="SSSS",
                norm="repbn", drop_path_rate=0.1)
    return _create_swin("swin_t_prepbn", pretrained, **dict(args, **kwargs))


# ------------------------------------------------------------------------------------------------- official


def _parse_norm(desc, default: tuple[str, int, float]) -> tuple[str, int, float]:
    """(kind, step, ln_eps) from the fixtures' descriptive `norm_layer` strings; `default` when not passed."""
    if desc is None or not isinstance(desc, str):
        return default
    if desc.startswith("default"):
        kind, step, eps = default
    else:
        kind, step, eps = "layernorm", default[1], default[2]
    if "LinearNorm" in desc:
        kind = "linearnorm"
    elif "RepBN" in desc:
        kind = "repbn"
    m = re.search(r"step=(\d+)", desc)
    if m:
        step = int(m.group(1))
    m = re.search(r"eps[= ]([0-9.]+e-?\d+)", desc)
    if m:
        eps = float(m.group(1))
    return kind, step, eps


def _check_official(kwargs, **allowed):
    for k, v in allowed.items():
        if k in kwargs and kwargs[k] not in v:
            raise ValueError(f"official argument {k}={kwargs[k]!r} is not supported (allowed: {v})")


def _official_vit(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=768, depth=12, num_heads=12,
                  mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                  norm_layer=None, _linear=None, **kw):
    _check_official(kw, representation_size=(None,), distilled=(False,))
    linear = bool(_linear)
    kind, step, eps = _parse_norm(norm_layer, ("layernorm", 300000, 1e-6))
    return SlabVisionTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, linear_attn=linear, norm=kind,
        prepbn_step=step, ln_eps=eps, drop_rate=drop_rate, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
    )


register_official("slab", "classification/models/deit.py:VisionTransformer", checkpoint_filter_fn)(
    partial(_official_vit, _linear=False))
register_official("slab", "classification/models/slab_deit.py:VisionTransformer", checkpoint_filter_fn)(
    partial(_official_vit, _linear=True))


def _official_entry(name):
    def fn(pretrained=False, **kw):
        kw.pop("focusing_factor", None)
        la = kw.pop("la_sr_ratios", "1111")
        if str(la) != "1111":
            raise ValueError(f"la_sr_ratios must be '1111' (no SLA spatial reduction), got {la!r}")
        for k, default in (("img_size", 224), ("in_chans", 3), ("drop_rate", 0.0)):
            if kw.get(k, default) == default:
                kw.pop(k, None)
        if callable(name):
            model_name = name(kw.pop("attn_type", None))
        else:
            model_name = name
        return _ENTRYPOINTS[model_name](pretrained=False, **kw)
    return fn


for _b, _n in {
    "classification/models/deit.py:deit_tiny_patch16_224_repbn": "deit_t_prepbn",
    "classification/models/deit.py:deit_small_patch16_224_repbn": "deit_s_prepbn",
    "classification/models/slab_deit.py:deit_tiny_patch16_224_linear_repbn": "slab_deit_t",
    "classification/models/slab_deit.py:deit_small_patch16_224_linear_repbn": "slab_deit_s",
    "classification/models/slab_pvt.py:slab_pvt_tiny": lambda a: "slab_pvt_t" if (a or "LLLL") == "LLLL" else
    "pvt_t_prepbn",
    "classification/models/slab_pvt.py:slab_pvt_small": lambda a: "slab_pvt_s" if (a or "LLLL") == "LLLL" else
    "pvt_s_prepbn",
    "classification/models/slab_pvt.py:slab_pvt_medium": lambda a: "slab_pvt_m" if (a or "LLLL") == "LLLL" else
    "pvt_m_prepbn",
}.items():
    register_official("slab", _b, checkpoint_filter_fn)(_official_entry(_n))


@register_official("slab", "classification/models/slab_pvt.py:PyramidVisionTransformer", checkpoint_filter_fn)
def _official_pvt(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dims=(64, 128, 256, 512),
                  num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4), qkv_bias=False, qk_scale=None, drop_rate=0.0,
                  attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=None, depths=(3, 4, 6, 3),
                  sr_ratios=(8, 4, 2, 1), la_sr_ratios="8421", num_stages=4, focusing_factor=3, kernel_size=5,
                  attn_type="LLLL"):
    attn_type = attn_type or "LLLL"
    if qk_scale is not None:
        raise ValueError("qk_scale must be None (the default head_dim**-0.5)")
    if num_stages != 4:
        raise ValueError(f"num_stages must be 4, got {num_stages}")
    for i, c in enumerate(attn_type):
        if c == "L" and int(str(la_sr_ratios)[i]) != 1:
            raise ValueError(f"la_sr_ratios must be 1 on 'L' stages (SLA spatial reduction unsupported), "
                             f"got {la_sr_ratios!r}")
    kind, step, eps = _parse_norm(norm_layer, ("layernorm", 300000, 1e-5))
    return SlabPvt(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                   embed_dims=tuple(embed_dims), num_heads=tuple(num_heads), mlp_ratios=tuple(mlp_ratios),
                   depths=tuple(depths), sr_ratios=tuple(sr_ratios), attn_type=attn_type, qkv_bias=qkv_bias,
                   drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm=kind,
                   prepbn_step=step, ln_eps=eps, kernel_size=kernel_size)


def _official_swin_common(default_norm, default_window, default_attn):
    def fn(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
           num_heads=(3, 6, 12, 24), window_size=default_window, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
           drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, ape=False, patch_norm=True, use_checkpoint=False,
           focusing_factor=3, kernel_size=5, attn_type=default_attn, norm_layer=None, fused_window_process=False,
           **kw):
        if qk_scale is not None or ape or not patch_norm:
            raise ValueError("qk_scale must be None, ape False and patch_norm True")
        kind, step, eps = _parse_norm(norm_layer, default_norm)
        model = SlabSwinTransformer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads), window_size=window_size,
            attn_type=attn_type, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, norm=kind, prepbn_step=step, ln_eps=eps,
            kernel_size=kernel_size,
        )
        if use_checkpoint:
            model.set_grad_checkpointing(True)
        return model
    return fn


register_official("slab", "classification/models/slab_swin.py:SlabSwinTransformer", checkpoint_filter_fn)(
    _official_swin_common(("linearnorm", 60000, 1e-5), 7, "LLLL"))


def _official_plain_swin(**kw):
    kw.pop("attn_type", None)
    return _official_swin_common(("repbn", 60000, 1e-5), 7, "SSSS")(attn_type="SSSS", **kw)


register_official("slab", "classification/models/swin_transformer.py:SwinTransformer", checkpoint_filter_fn)(
    _official_plain_swin)


@register_zoo_model("slab")
def slab_cswin_t(pretrained=False, **kwargs) -> SlabCSWin:
    args = dict(embed_dim=64, depth=(2, 4, 18, 1), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16),
                la_split_size="56-28-14-7", attn_type="LLSS", drop_path_rate=0.1)
    return _create_cswin("slab_cswin_t", pretrained, **dict(args, **kwargs))


@register_zoo_model("slab")
def slab_cswin_s(pretrained=False, **kwargs) -> SlabCSWin:
    args = dict(embed_dim=64, depth=(2, 4, 32, 2), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16),
                la_split_size="56-28-14-7", attn_type="LLSS", drop_path_rate=0.3)
    return _create_cswin("slab_cswin_s", pretrained, **dict(args, **kwargs))


@register_official("slab", "classification/models/slab_cswin.py:CSWinTransformer", checkpoint_filter_fn)
def _official_cswin(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=96, depth=(2, 2, 6, 2),
                    split_size=(1, 2, 7, 7), la_split_size="1-2-7-7", num_heads=(2, 4, 8, 16), mlp_ratio=4.0,
                    qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                    hybrid_backbone=None, norm_layer=None, use_chk=False, focusing_factor=3, kernel_size=5,
                    attn_type="LLLL"):
    kind, step, eps = _parse_norm(norm_layer, ("linearnorm", 120000, 1e-5))
    model = SlabCSWin(img_size=img_size, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
                      depth=tuple(depth), split_size=tuple(split_size), la_split_size=la_split_size,
                      num_heads=tuple(num_heads), mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                      drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                      attn_type=attn_type, norm=kind, prepbn_step=step, ln_eps=eps, kernel_size=kernel_size)
    if use_chk:
        model.set_grad_checkpointing(True)
    return model


for _b, _n in {
    "classification/models/slab_cswin.py:SLAB_CSWin_64_24181_tiny_224": "slab_cswin_t",
    "classification/models/slab_cswin.py:SLAB_CSWin_64_24322_small_224": "slab_cswin_s",
}.items():
    register_official("slab", _b, checkpoint_filter_fn)(_official_entry(_n))


_ENTRYPOINTS = {f.__name__: f for f in (
    slab_deit_t, slab_deit_s, deit_t_prepbn, deit_s_prepbn, slab_pvt_t, slab_pvt_s, slab_pvt_m, pvt_t_prepbn,
    pvt_s_prepbn, pvt_m_prepbn, slab_swin_t, slab_swin_s, slab_swin_b, swin_t_prepbn, slab_cswin_t, slab_cswin_s,
)}
