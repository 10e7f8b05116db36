"""BiFormer: Vision Transformer with Bi-Level Routing Attention (Zhu et al., CVPR 2023).

Paper: https://arxiv.org/abs/2303.08810 -- official code (MIT): https://github.com/rayleizhu/BiFormer

Variants (all load the official checkpoints through `checkpoint_filter_fn`):

* `biformer_t` / `biformer_s` / `biformer_b` -- models/biformer.py: overlapping conv stem and downsampling,
  a 3x3 depthwise conv before every block, legacy (NHWC) BRA in stages 1-3, full attention + LePE in stage 4.
* `biformer_stl` -- models/biformer_stl.py: the Swin-T layout (patchify stem, norm + 2x2 conv merging).
* `biformer_stl_nchw` -- models/biformer_stl_nchw.py: the same layout on the refactored NCHW BRA.

The dense-prediction backbone of the official det/seg code (`BiFormer_mm`) is `visionattn.mm.dense.BiFormerDense`;
the same maps come from `timm.create_model(name, features_only=True, out_norms=True, n_win=16)`.

Input size (documented choices, tested in tests/test_biformer.py):

* Legacy BRA cuts each stage map into n_win x n_win regions. The released classification models assert that
  every BRA stage side is divisible by n_win (input a multiple of 112 px at n_win 7). Here `auto_pad=True` is
  the default: a map that does not divide is zero-padded right/bottom before the qkv projection and cropped
  after, exactly as the official dense models do. At divisible sizes nothing is padded, so the logits are
  identical to the official model's; any input size works (96 px, 256 px, 800x1333...). `auto_pad=False`
  restores the official assertion (a ValueError).
* The NCHW BRA (`biformer_stl_nchw`) needs no padding (its regions are H // n_win tokens tall, the last ones
  partial) but cannot work when a BRA stage side is smaller than n_win (regions of 0 tokens): the model raises
  a ValueError naming the stage and the smallest input side (112 px at n_win 7; e.g. pass `n_win=(7, 7, 6, 7)`
  for 96 px inputs, or use `biformer_stl`).
* The STL stems use unpadded stride-4 / stride-2 convs (as the official code), so sides that are not
  multiples of 32 are floored; the T/S/B stems use padded convs (ceil).

Pretrained weights: `timm.create_model(name, pretrained=True)` downloads the official file (cached under its
official name); `pretrained_cfg_overlay=dict(file=PATH)` loads a local one. Official files are read with
weights_only=True (their `args` Namespace allowed) and, like the official loader, the `model` entry is used
even when `model_ema` is present.

Checkpoints use timm-style module names (`stem`, `stages.i.downsample`, `stages.i.blocks.j`, `mlp.fc1`,
`ls1.gamma`, `out_norms.i`, `head.fc`); `checkpoint_filter_fn` maps the official names (and mmdet/mmseg
`backbone.` checkpoints) onto them.
The attention modules keep the official parameter names (`qkv.qkv`, `wo`, `lepe`; `qkv_linear`,
`output_linear`; `qkv`, `proj`).
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
    LayerNorm2d,
    LayerScale,
    Mlp,
    calculate_drop_path_rates,
    get_norm_layer,
)
from timm.models import checkpoint_seq, generate_default_cfgs
from timm.models._features import feature_take_indices  # timm exports no public name for it
from torch import nn

from visionattn import register_zoo_model
from visionattn.checkpoint import build_model_with_pretrained_file, unwrap_state_dict
from visionattn.kernels.bra import BRA_BACKENDS
from visionattn.layers.bra import BiLevelRoutingAttention, NchwBiLevelRoutingAttention
from visionattn.utils import check_backend, inference_linear, inference_mlp, init_weights_, set_attn_backend

__all__ = [
    "BiFormer",
    "BiFormerBlock",
    "NchwBiFormerBlock",
    "BiFormerStage",
    "AttentionLePE",
    "NchwAttentionLePE",
    "checkpoint_filter_fn",
]


def _norm2d(norm_layer: str | Callable[[int], nn.Module], name: str = "norm_layer") -> Callable[[int], nn.Module]:
    """A 2-D norm: a class / partial, or 'batchnorm' (nn.BatchNorm2d) | 'layernorm2d' (LayerNorm2d, eps 1e-6)."""
    if isinstance(norm_layer, str):
        if norm_layer not in ("batchnorm", "layernorm2d"):
            raise ValueError(f"{name} must be 'batchnorm', 'layernorm2d' or a norm class, got {norm_layer!r}")
        return get_norm_layer(norm_layer)
    if not callable(norm_layer):
        raise ValueError(f"{name} must be 'batchnorm', 'layernorm2d' or a norm class, got {norm_layer!r}")
    return norm_layer


def _per_stage(value, name: str, n: int = 4) -> tuple:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            raise ValueError(f"{name} must be a single value or a sequence of {n}, got {value!r}")
        return tuple(value)
    return (value,) * n


class AttentionLePE(nn.Module):
    """Full multi-head self-attention plus a depthwise-conv LePE of the input (official models/_common.py).

    NHWC in and out. `side_dwconv=0` gives the plain `Attention` of the official code (same keys minus lepe).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, side_dwconv: int = 5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        qkv = inference_linear(self.qkv, x).reshape(B, H * W, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, H, W, C)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return inference_linear(self.proj, out)


class NchwAttentionLePE(nn.Module):
    """Full attention on NCHW maps with 1x1-conv projections and LePE on V (official nchwAttentionLePE)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, side_dwconv: int = 5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim) if side_dwconv > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=1)
        heads = lambda t: t.reshape(B, self.num_heads, C // self.num_heads, H * W).transpose(-1, -2)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        if self.lepe is not None:
            out = out + self.lepe(v)
        return self.proj(out)


class BiFormerBlock(nn.Module):
    """Legacy BiFormer block on NHWC tokens: [x + DWConv3(x)] -> x + attn(LN(x)) -> x + MLP(LN(x)).

    topk > 0: bi-level routing attention; -2: full attention + LePE; -1: full attention without LePE.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            n_win: int = 7,
            qk_dim: int | None = None,
            qk_scale: float | None = None,
            topk: int = 4,
            mlp_ratio: float = 3.0,
            side_dwconv: int = 5,
            before_attn_dwconv: int = 3,
            auto_pad: bool = True,
            layer_scale_init_value: float | None = None,
            drop_path: float = 0.0,
            full_attn_heads: int = 8,
            attn_backend: str | None = None,
    ):
        super().__init__()
        if before_attn_dwconv not in (0, 3):
            # the official block hard-codes padding 1, so only kernel 3 keeps the map size
            raise ValueError(f"before_attn_dwconv must be 0 (off) or 3, got {before_attn_dwconv}")
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if before_attn_dwconv else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        if topk > 0:
            kw = {} if attn_backend is None else {"backend": attn_backend}
            self.attn = BiLevelRoutingAttention(
                dim=dim, num_heads=num_heads, n_win=n_win, qk_dim=qk_dim or dim, qk_scale=qk_scale, topk=topk,
                side_dwconv=side_dwconv, auto_pad=auto_pad, **kw,
            )
        elif topk in (-1, -2):
            self.attn = AttentionLePE(dim, num_heads=full_attn_heads, side_dwconv=side_dwconv if topk == -2 else 0)
        else:
            raise ValueError(
                f"topk must be > 0 (routing), -1 (full attention) or -2 (full attention + LePE), got {topk}"
            )
        ls = layer_scale_init_value is not None and layer_scale_init_value > 0
        self.ls1 = LayerScale(dim, layer_scale_init_value) if ls else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, layer_scale_init_value) if ls else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = x + self.pos_embed(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        x = x + self.drop_path(self.ls2(inference_mlp(self.mlp, self.norm2(x))))
        return x


class NchwBiFormerBlock(nn.Module):
    """BiFormer-STL-nchw block on NCHW maps: LayerNorm2d, NCHW BRA (topk > 0) or full attention (topk -1),
    1x1-conv MLP."""

    def __init__(
            self,
            dim: int,
            num_heads: int,
            n_win: int = 7,
            qk_scale: float | None = None,
            topk: int = 4,
            mlp_ratio: float = 4.0,
            side_dwconv: int = 5,
            drop_path: float = 0.0,
            full_attn_heads: int = 8,
            attn_backend: str | None = None,
    ):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        if topk > 0:
            kw = {} if attn_backend is None else {"backend": attn_backend}
            self.attn = NchwBiLevelRoutingAttention(
                dim=dim, num_heads=num_heads, n_win=n_win, qk_scale=qk_scale, topk=topk, side_dwconv=side_dwconv, **kw
            )
        elif topk == -1:
            self.attn = NchwAttentionLePE(dim, num_heads=full_attn_heads, side_dwconv=side_dwconv)
        else:
            raise ValueError(f"topk must be > 0 (routing) or -1 (full attention + LePE) for NCHW blocks, got {topk}")
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, use_conv=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


@torch.fx.wrap
def _check_nchw_stage_size(x: torch.Tensor, n_win: int) -> torch.Tensor:
    if min(x.shape[-2:]) < n_win:
        raise ValueError(
            f"input too small for the NCHW BRA: a stage map of {tuple(x.shape[-2:])} is smaller than n_win={n_win} "
            "on one side (each BRA stage side must be >= n_win); use a larger input, a smaller n_win for this "
            "stage, or the legacy-BRA model (biformer_stl), which pads"
        )
    return x


class BiFormerStage(nn.Module):
    """Downsampling (Identity for the first stage) followed by blocks; NCHW in and out."""

    def __init__(self, downsample: nn.Module, blocks: list[nn.Module], channels_last: bool, n_win: int, routed: bool):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.channels_last = channels_last  # legacy blocks work on NHWC tokens
        self.n_win = n_win
        self.check_min_size = routed and not channels_last  # NCHW BRA needs >= 1 token per region
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.check_min_size:
            x = _check_nchw_stage_size(x, self.n_win)
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return x


class BiFormer(nn.Module):
    """BiFormer classification model (T/S/B, STL and STL-nchw layouts).

    Args:
        depths, embed_dims: blocks and channels per stage.
        mlp_ratios: MLP expansion (one value or per stage).
        head_dim: BRA head dim; BRA stages use qk_dims[i] // head_dim heads. Full-attention stages always
            use `full_attn_heads` (8) heads, as the official code does.
        qk_dims: query/key width of the BRA (default embed_dims); scale is qk_dim ** -0.5 (official).
        n_win: regions per side (one value or per stage).
        topks: routed regions per query region; stage value -2 / -1 selects full attention (+LePE).
        side_dwconv: LePE kernel size. before_attn_dwconv: 3 (official T/S/B) or 0 (STL layouts).
        stem_type: 'overlap' (two 3x3 s2 convs, 3x3 s2 conv downsampling; T/S/B) or 'patch' (4x4 s4 conv,
            norm + 2x2 s2 conv merging; STL).
        layout: 'nhwc' (legacy BRA, official models/biformer*.py) or 'nchw' (refactored BRA, STL-nchw).
        norm_layer: stem/downsample norm of the 'patch' stem and the final norm: a 2-D norm class (e.g.
            nn.BatchNorm2d) or 'batchnorm' | 'layernorm2d'; final_norm_layer overrides the final one.
        auto_pad: legacy BRA pads maps that n_win does not divide (see the module docstring).
        attn_backend: BRA backend of every routed block (`visionattn.kernels.bra.BRA_BACKENDS`; None = 'auto').
        out_norms: True or stage indices: add a LayerNorm2d per stage output (`out_norms.i`, the dense-prediction
            backbone's `extra_norms`), applied to the maps `forward_intermediates` / `features_only` return.
    """

    def __init__(
            self,
            depths: Sequence[int] = (2, 2, 8, 2),
            embed_dims: Sequence[int] = (64, 128, 256, 512),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            mlp_ratios: float | Sequence[float] = 3,
            head_dim: int = 32,
            qk_dims: Sequence[int] | None = None,
            qk_scale: float | None = None,
            n_win: int | Sequence[int] = 7,
            topks: Sequence[int] = (1, 4, 16, -2),
            side_dwconv: int = 5,
            before_attn_dwconv: int = 3,
            stem_type: str = "overlap",
            layout: str = "nhwc",
            norm_layer: str | Callable[[int], nn.Module] = "batchnorm",
            final_norm_layer: str | Callable[[int], nn.Module] | None = None,
            auto_pad: bool = True,
            layer_scale_init_value: float | None = None,
            full_attn_heads: int = 8,
            attn_backend: str | None = None,
            out_norms: bool | Sequence[int] = False,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if len(depths) != 4 or len(embed_dims) != 4 or len(topks) != 4:
            raise ValueError("depths, embed_dims and topks must have 4 entries (one per stage)")
        if stem_type not in ("overlap", "patch"):
            raise ValueError(f"stem_type must be 'overlap' or 'patch', got {stem_type!r}")
        if layout not in ("nhwc", "nchw"):
            raise ValueError(f"layout must be 'nhwc' or 'nchw', got {layout!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        attn_backend = check_backend(attn_backend, BRA_BACKENDS)
        norm_layer = _norm2d(norm_layer)
        final_norm_layer = norm_layer if final_norm_layer is None else _norm2d(final_norm_layer, "final_norm_layer")
        qk_dims = tuple(qk_dims) if qk_dims is not None else tuple(embed_dims)
        n_wins = _per_stage(n_win, "n_win")
        mlp_ratios = _per_stage(mlp_ratios, "mlp_ratios")
        for i, (t, s) in enumerate(zip(topks, n_wins)):
            if s < 1:
                raise ValueError(f"n_win must be >= 1, got {s} for stage {i}")
            if t > s * s:
                raise ValueError(f"topks[{i}] must be <= n_win**2 = {s * s} (the number of regions), got {t}")
            if t > 0 and qk_dims[i] < head_dim:
                raise ValueError(f"head_dim must be <= qk_dims[{i}] ({qk_dims[i]}), got {head_dim}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.embed_dims = tuple(embed_dims)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.grad_checkpointing = False

        if stem_type == "overlap":
            c0 = embed_dims[0]
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, c0 // 2, 3, stride=2, padding=1),
                nn.BatchNorm2d(c0 // 2),
                nn.GELU(),
                nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1),
                nn.BatchNorm2d(c0),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, embed_dims[0], 4, stride=4), norm_layer(embed_dims[0])
            )

        dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
        first = [sum(depths[:i]) for i in range(4)]
        self.feature_info = []
        stages = []
        for i in range(4):
            dim = embed_dims[i]
            if i == 0:
                downsample = nn.Identity()
            elif stem_type == "overlap":
                downsample = nn.Sequential(
                    nn.Conv2d(embed_dims[i - 1], dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim)
                )
            else:
                downsample = nn.Sequential(
                    norm_layer(embed_dims[i - 1]), nn.Conv2d(embed_dims[i - 1], dim, 2, stride=2)
                )
            heads = max(qk_dims[i] // head_dim, 1)  # the official floor division
            if layout == "nhwc":
                blocks = [
                    BiFormerBlock(
                        dim, heads, n_win=n_wins[i], qk_dim=qk_dims[i], qk_scale=qk_scale, topk=topks[i],
                        mlp_ratio=mlp_ratios[i], side_dwconv=side_dwconv, before_attn_dwconv=before_attn_dwconv,
                        auto_pad=auto_pad, layer_scale_init_value=layer_scale_init_value, drop_path=dpr[first[i] + j],
                        full_attn_heads=full_attn_heads, attn_backend=attn_backend,
                    ) for j in range(depths[i])
                ]
            else:
                blocks = [
                    NchwBiFormerBlock(
                        dim, heads, n_win=n_wins[i], qk_scale=qk_scale, topk=topks[i], mlp_ratio=mlp_ratios[i],
                        side_dwconv=side_dwconv, drop_path=dpr[first[i] + j], full_attn_heads=full_attn_heads,
                        attn_backend=attn_backend,
                    ) for j in range(depths[i])
                ]
            stages.append(BiFormerStage(downsample, blocks, layout == "nhwc", n_wins[i], routed=topks[i] > 0))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        idx = range(4) if out_norms is True else tuple(int(i) for i in (out_norms or ()))
        if any(not 0 <= i < 4 for i in idx):
            raise ValueError(f"out_norms must be a bool or stage indices in [0, 3], got {out_norms!r}")
        self.out_norms = nn.ModuleList([
            LayerNorm2d(d, eps=1e-6) if i in idx else nn.Identity() for i, d in enumerate(embed_dims)
        ]) if idx else None
        self.norm = final_norm_layer(embed_dims[-1])
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(init_weights_)  # the official init: Linear and LayerNorm only, convs keep PyTorch defaults

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # no position tables or tokens; timm's optimizer factory already exempts 1-D params (norms, biases)
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^out_norms\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def set_attn_backend(self, backend: str):
        """Switch the BRA backend of every routed block (e.g. 'torch' before ONNX export)."""
        set_attn_backend(self, backend)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False):
        self.num_classes = num_classes
        if reset_other:
            self.norm = nn.Identity()
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (strides 4/8/16/32; after `out_norms` when the model has them).

        norm: apply the final norm to the last stage's map when it is taken.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[: max_index + 1]
        intermediates = []
        x = self.stem(x)
        last = len(self.stages) - 1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = x
                if self.out_norms is not None:
                    y = self.out_norms[i](y)
                elif norm and i == last:
                    y = self.norm(y)
                intermediates.append(y.permute(0, 2, 3, 1) if output_fmt == "NHWC" else y)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if self.out_norms is not None:
            self.out_norms = self.out_norms[: max_index + 1]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.head = ClassifierHead(self.num_features, 0, pool_type=self.head.global_pool.pool_type)
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# --------------------------------------------------------------------------------------------------------------
# checkpoints

_OPTIONAL_GROUPS = ("norm.", "head.", "out_norms.")

_KEY_RULES = [
    (re.compile(r"^downsample_layers\.0\."), "stem."),
    (re.compile(r"^downsample_layers\.(\d+)\."), r"stages.\1.downsample."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), r"stages.\1.blocks.\2."),  # models/biformer.py: Sequential of blocks
    (re.compile(r"^(stages\.\d+\.blocks\.\d+)\.gamma1$"), r"\1.ls1.gamma"),
    (re.compile(r"^(stages\.\d+\.blocks\.\d+)\.gamma2$"), r"\1.ls2.gamma"),
    (re.compile(r"^head\.(weight|bias)$"), r"head.fc.\1"),
    (re.compile(r"^extra_norms\."), "out_norms."),  # BiFormer_mm's per-output norms
]


def _remap_official_key(key: str, mlp_out_index: str) -> str:
    for pattern, repl in _KEY_RULES:
        key = pattern.sub(repl, key)
    key = re.sub(r"(\.blocks\.\d+\.mlp)\.0\.", r"\1.fc1.", key)
    key = re.sub(rf"(\.blocks\.\d+\.mlp)\.{mlp_out_index}\.", r"\1.fc2.", key)
    return key


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an official BiFormer checkpoint (or a mmdet/mmseg one) onto this module's names.

    Opens `model` / `state_dict` / `module.` envelopes (the official loader reads 'model'), keeps only
    `backbone.*` of a dense-prediction checkpoint, renames official keys to timm-style ones. The classifier
    (`norm`, `head`) and the dense per-output norms (official `extra_norms`, here `out_norms`) are the only
    parts that may be absent on one side or differ in shape: a missing one keeps the model's initial values,
    one the model lacks (or sizes differently) is dropped, as the official dense code does when it loads a
    classification checkpoint non-strictly.
    """
    sd = unwrap_state_dict(state_dict)  # 'model' over 'model_ema' (as the official loader); EMA-only files too
    if any(k.startswith(("downsample_layers.", "extra_norms.")) for k in sd):
        # legacy T/S/B MLP is Sequential(Linear, Identity, GELU, Linear); STL drops the Identity slot
        mlp_out = "3" if any(re.match(r"^stages\.\d+\.\d+\.mlp\.3\.", k) for k in sd) else "2"
        sd = {_remap_official_key(k, mlp_out): v for k, v in sd.items()}
    own = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.startswith(_OPTIONAL_GROUPS) and (k not in own or own[k].shape != v.shape):
            continue  # e.g. a classifier for another number of classes: keep the model's own
        out[k] = v
    for k, v in own.items():
        if k not in out and k.startswith(_OPTIONAL_GROUPS):
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------------------------
# timm registration

_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/{}/root/content"
_URLS = {
    "biformer_t.in1k": (_ONEDRIVE.format("s!AkBbczdRlZvChHEOoGkgwgQzEDlM"), "biformer_tiny_in1k.pth"),
    "biformer_s.in1k": (_ONEDRIVE.format("s!AkBbczdRlZvChHDyM-x9KWRBZ832"), "biformer_small_in1k.pth"),
    "biformer_b.in1k": (_ONEDRIVE.format("s!AkBbczdRlZvChHI_XPhoadjaNxtO"), "biformer_base_in1k.pth"),
    "biformer_stl.in1k": (_ONEDRIVE.format("s!AkBbczdRlZvChSf-m7ujkvx9lIQ1"), "biformer_stl_in1k.pth"),
    "biformer_stl_nchw.in1k": (_ONEDRIVE.format("s!AkBbczdRlZvChWYrKbWbMgqd2Ai0"), "biformer_stl_nchw_in1k.pth"),
}


def _cfg(name: str, **kwargs) -> dict:
    url, file_name = _URLS[name]
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.0",
        "classifier": "head.fc",
        "license": "mit",
        "paper_name": "BiFormer: Vision Transformer with Bi-Level Routing Attention",
        "paper_ids": "arXiv:2303.08810",
        "origin_url": "https://github.com/rayleizhu/BiFormer",
        "notes": (f"official OneDrive checkpoint, torch.hub file name {file_name}",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "biformer_t.in1k": _cfg("biformer_t.in1k"),
    "biformer_s.in1k": _cfg("biformer_s.in1k"),
    "biformer_b.in1k": _cfg("biformer_b.in1k"),
    "biformer_stl.in1k": _cfg("biformer_stl.in1k"),
    "biformer_stl_nchw.in1k": _cfg("biformer_stl_nchw.in1k", min_input_size=(3, 112, 112)),
})


# every OneDrive link ends in '/content': cache each file under its official name instead
_CACHE_NAMES = dict(_URLS.values())


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    return build_model_with_pretrained_file(
        BiFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        cache_file_names=_CACHE_NAMES,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )


_TSB = dict(mlp_ratios=3, head_dim=32, n_win=7, topks=(1, 4, 16, -2), side_dwconv=5, before_attn_dwconv=3)
_STL = dict(
    depths=(2, 2, 6, 2), embed_dims=(96, 192, 384, 768), mlp_ratios=4, head_dim=32, n_win=7, side_dwconv=5,
    before_attn_dwconv=0, stem_type="patch", norm_layer="batchnorm",
)


@register_zoo_model("biformer")
def biformer_t(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T (13.1M params, 2.2 GMACs at 224, 81.4% IN-1k top-1)."""
    args = dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512), **_TSB)
    return _create_biformer("biformer_t", pretrained, **dict(args, **kwargs))


@register_zoo_model("biformer")
def biformer_s(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S (25.5M params, 4.5 GMACs at 224, 83.8% IN-1k top-1)."""
    args = dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512), **_TSB)
    return _create_biformer("biformer_s", pretrained, **dict(args, **kwargs))


@register_zoo_model("biformer")
def biformer_b(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B (56.8M params, 9.8 GMACs at 224, 84.3% IN-1k top-1)."""
    args = dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768), **_TSB)
    return _create_biformer("biformer_b", pretrained, **dict(args, **kwargs))


@register_zoo_model("biformer")
def biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-STL: Swin-T layout with legacy BRA (28.4M params, 4.6 GMACs, 82.7% top-1)."""
    args = dict(_STL, topks=(1, 4, 16, -2), layout="nhwc")
    return _create_biformer("biformer_stl", pretrained, **dict(args, **kwargs))


@register_zoo_model("biformer")
def biformer_stl_nchw(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-STL on the refactored NCHW BRA (28.4M params, 4.6 GMACs, 82.7% top-1); inputs >= 112 px."""
    args = dict(_STL, topks=(1, 4, 16, -1), layout="nchw")
    return _create_biformer("biformer_stl_nchw", pretrained, **dict(args, **kwargs))
