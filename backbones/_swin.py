"""Swin v1 host (Liu et al., ICCV 2021, https://arxiv.org/abs/2103.14030) of Agent-Swin and SLAB-Swin.

timm's layout and pieces: patch embedding (NHWC out), stages `layers.{i}` = timm's `PatchMerging` (i > 0) + blocks,
final norm, `ClassifierHead` (`head.fc`). Blocks come from a factory, so each family places its own attention:
`block_fn(dim, input_resolution, num_heads, *, stage_idx, block_idx, drop_path, norm_layer)`, NHWC in and out.
`WindowBlock` is timm's shifted-window block for the softmax stages (any input size).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import ClassifierHead, PatchEmbed, calculate_drop_path_rates, register_notrace_function, to_2tuple
from timm.models import checkpoint_seq
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    window_partition,
    window_reverse,
)
from torch import nn

from visionattn.checkpoint import shift_swin_downsample_keys
from visionattn.utils import ClassifierHeadMixin, init_weights_

from ._common import StagedModelMixin, check_divisible, inference_cached

torch.fx.wrap("check_divisible")

__all__ = ["SwinStage", "SwinTransformerHost", "WindowAttentionExplicit", "WindowBlock", "official_to_timm"]


def official_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Swin layout (patch merging at the end of a stage, plain `head`) -> this host's (timm's)."""
    if not any(k.startswith("layers.0.downsample.") for k in state_dict):
        return dict(state_dict)
    sd = shift_swin_downsample_keys(state_dict)
    return {("head.fc." + k[5:] if k in ("head.weight", "head.bias") else k): v for k, v in sd.items()}


class WindowAttentionExplicit(WindowAttention):
    """timm's window attention with the bias added inside the QK^T product (`baddbmm`), no SDPA mask path.

    Same parameters and function; on CPU SDPA with a float mask first scans the mask for -inf rows, which costs
    more than the attention itself at window size 7. The gathered relative-position bias is cached for
    inference (see `inference_cached`). Batch 0 gives an empty result.
    """

    def _rel_bias(self) -> torch.Tensor:
        def build():
            return self._get_rel_pos_bias()  # (1, nH, N, N)
        return inference_cached(self, ("rpb",), (self.relative_position_bias_table,), build)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self._rel_bias()
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.unsqueeze(1).unsqueeze(0)).reshape(1, nw, h, n, n)
            attn = torch.matmul(q.reshape(b // nw, nw, h, n, c // h) * self.scale,
                                k.reshape(b // nw, nw, h, n, c // h).transpose(-2, -1)) + bias
            attn = attn.reshape(b, h, n, n)
        else:
            attn = torch.baddbmm(bias.expand(b, h, n, n).reshape(b * h, n, n),
                                 (q * self.scale).reshape(b * h, n, c // h),
                                 k.reshape(b * h, n, c // h).transpose(-2, -1)).reshape(b, h, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


@register_notrace_function
def shift_window_mask(x: torch.Tensor, window: tuple[int, int], shift: tuple[int, int],
                      cached: torch.Tensor | None = None, cached_hw: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """The (nW, N, N) 0 / -100 mask of a shifted-window block on the padded NHWC map `x`.

    Tokens that the cyclic shift brought together from different image regions do not attend to each other.
    `cached` is returned when it was made for this grid (`cached_hw`).
    """
    h, w = x.shape[1], x.shape[2]
    if cached is not None and (h, w) == tuple(cached_hw):
        return cached
    (wh, ww), (sh, sw) = window, shift
    region = torch.zeros(h, w, device=x.device, dtype=x.dtype)
    label = 0
    for rows in (slice(0, h - wh), slice(h - wh, h - sh), slice(h - sh, h)):
        for cols in (slice(0, w - ww), slice(w - ww, w - sw), slice(w - sw, w)):
            region[rows, cols] = label
            label += 1
    win = region.reshape(h // wh, wh, w // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0)


torch.fx.wrap("shift_window_mask")


class WindowBlock(SwinTransformerBlock):
    """timm's `SwinTransformerBlock` with `WindowAttentionExplicit`: any input size (padded windows; the shift mask
    of the construction grid is a buffer, others are made when met), empty batches pass through."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int = 4, window_size: int = 7,
                 shift_size: int = 0, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 **kwargs):
        kwargs.pop("dynamic_mask", None)
        super().__init__(dim, input_resolution, num_heads=num_heads, window_size=window_size, shift_size=shift_size,
                         qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, dynamic_mask=False, **kwargs)
        self.attn.__class__ = WindowAttentionExplicit  # same parameters and buffers, another forward
        (h, w), (wh, ww) = self.input_resolution, self.window_size
        self._mask_hw = (-(-h // wh) * wh, -(-w // ww) * ww)  # the padded grid the `attn_mask` buffer is for

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        (wh, ww), (sh, sw) = self.window_size, self.shift_size
        if sh or sw:
            x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
        ph, pw = (wh - h % wh) % wh, (ww - w % ww) % ww
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        mask = shift_window_mask(x, self.window_size, self.shift_size, self.attn_mask, self._mask_hw) \
            if sh or sw else None
        windows = window_partition(x, self.window_size).reshape(-1, wh * ww, c)
        windows = self.attn(windows, mask=mask).reshape(-1, wh, ww, c)
        x = window_reverse(windows, self.window_size, hp, wp)[:, :h, :w]
        if sh or sw:
            x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        x = x.reshape(b, h * w, c)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)


class SwinStage(nn.Module):
    """timm-style stage: `downsample` (PatchMerging or Identity) then `blocks` (NHWC in, NHWC out)."""

    def __init__(
            self,
            dim: int,
            out_dim: int,
            input_resolution: tuple[int, int],
            depth: int,
            num_heads: int,
            block_fn: Callable[..., nn.Module],
            stage_idx: int = 0,
            downsample: bool = True,
            drop_path: Sequence[float] = (),
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            merge_layer: type[nn.Module] = PatchMerging,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = merge_layer(dim, out_dim, norm_layer=norm_layer) if downsample else nn.Identity()
        res = tuple(input_resolution)
        self.output_resolution = (res[0] // 2, res[1] // 2) if downsample else res
        self.blocks = nn.Sequential(*[
            block_fn(out_dim, self.output_resolution, num_heads, stage_idx=stage_idx, block_idx=j,
                     drop_path=drop_path[j], norm_layer=norm_layer)
            for j in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SwinTransformerHost(StagedModelMixin, ClassifierHeadMixin, nn.Module):
    """Swin v1 classifier with the timm model API; `forward_features` is NHWC (`output_fmt`).

    Args:
        block_fn: the block factory (module docstring).
        norm_layer: every norm (patch embedding, merging, blocks, final).
        embed_layer, merge_layer: patch embedding / merging classes (timm's or subclasses with fold hooks).
        drop_rate: head dropout; pos_drop_rate: dropout after the patch embedding (the official `drop_rate` is
            pos_drop_rate plus the blocks' proj_drop_rate, mapped in `visionattn.official`).
        strict_img_size: inputs must have the construction size (when window / token tables are tied to it);
            otherwise any multiple of `patch_size`.
    """

    output_fmt = "NHWC"
    stages_name = "layers"
    stem_name = "patch_embed"

    def __init__(
            self,
            img_size: int | tuple[int, int] = 224,
            patch_size: int = 4,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 96,
            depths: Sequence[int] = (2, 2, 6, 2),
            num_heads: Sequence[int] = (3, 6, 12, 24),
            block_fn: Callable[..., nn.Module] | None = None,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.1,
            norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
            embed_layer: type[nn.Module] = PatchEmbed,
            merge_layer: type[nn.Module] = PatchMerging,
            strict_img_size: bool = False,
    ):
        super().__init__()
        if block_fn is None:
            raise ValueError("block_fn must be a block factory")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths and num_heads must have one entry per stage, got {depths}, {num_heads}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        n = len(depths)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.strict_img_size = strict_img_size
        dims = [int(embed_dim * 2 ** i) for i in range(n)]
        self.num_features = self.head_hidden_size = dims[-1]
        self.patch_embed = embed_layer(to_2tuple(img_size), patch_size, in_chans, embed_dim, norm_layer=norm_layer,
                                       output_fmt="NHWC", strict_img_size=strict_img_size)
        self.pos_drop = nn.Dropout(pos_drop_rate)
        res = tuple(self.patch_embed.grid_size)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(n):
            stage = SwinStage(dims[max(i - 1, 0)], dims[i], res, depths[i], num_heads[i], block_fn, stage_idx=i,
                              downsample=i > 0, drop_path=dpr[i], norm_layer=norm_layer, merge_layer=merge_layer)
            stages.append(stage)
            res = stage.output_resolution
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2 ** i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(dims[-1])
        self.head = ClassifierHead(dims[-1], num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt="NHWC")
        self.apply(init_weights_)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # as the official recipes: relative position tables are not decayed
        return {n for n, _ in self.named_parameters() if "relative_position_bias_table" in n}

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        if not self.strict_img_size:
            x = check_divisible(x, self.patch_embed.patch_size[0], "patch_size")
        return self.pos_drop(self.patch_embed(x))

