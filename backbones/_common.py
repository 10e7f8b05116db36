"""Pieces the host skeletons (`_deit`, `_pvt`, `_swin`, `_cswin`) and their families share.

`StagedModelMixin` is timm's feature API of a `stem -> stages -> norm` model; `check_divisible` (the input-size
check) and `resize_token_grid` (run-time resize of a position table) are FX leaf functions; `inference_cached`
reuses tensors derived from parameters while nothing can change them.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function, resample_abs_pos_embed
from timm.models import checkpoint
from timm.models._features import feature_take_indices  # timm exports no public name for it
from torch import nn

from visionattn.utils import inference_cached

__all__ = ["StagedModelMixin", "check_divisible", "resize_token_grid", "inference_cached", "to_nhwc", "in1k_cfg",
           "run_blocks"]


def in1k_cfg(url: str, **kwargs) -> dict:
    """A pretrained cfg with what the families' ImageNet-1k releases share (224 px, crop 0.875, bicubic, ImageNet
    mean / std, 1000 classes, a 7x7 final grid); `kwargs` adds the rest or overrides."""
    return {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
            "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, **kwargs}


@register_notrace_function
def check_divisible(x: torch.Tensor, multiple: int, what: str) -> torch.Tensor:
    """`x` (NCHW) unchanged; ValueError when its height or width is not a multiple of `multiple`."""
    if x.shape[-2] % multiple or x.shape[-1] % multiple:
        raise ValueError(f"input height and width must be multiples of {what} = {multiple}, "
                         f"got {tuple(x.shape[-2:])}")
    return x


@register_notrace_function
def resize_token_grid(
        pos: torch.Tensor, grid: tuple[int, int], hw: tuple[int, int], num_prefix_tokens: int = 0,
        mode: str = "bilinear",
) -> torch.Tensor:
    """(1, prefix + gh*gw, C) table made for `grid` resized to the run-time grid `hw` (unchanged when equal).

    mode 'bilinear': align_corners=False, as the official PVT forward; 'bicubic': timm's resampling without
    antialias, as the official fine-tuning loaders.
    """
    hw = (int(hw[0]), int(hw[1]))
    if hw == tuple(grid):
        return pos
    if mode == "bicubic":
        return resample_abs_pos_embed(pos, new_size=list(hw), old_size=list(grid),
                                      num_prefix_tokens=num_prefix_tokens, interpolation="bicubic", antialias=False)
    prefix, pos = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    pos = pos.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=hw, mode=mode, align_corners=False).flatten(2).transpose(1, 2)
    return torch.cat([prefix, pos], dim=1) if num_prefix_tokens else pos


def to_nhwc(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, H, W, C) (a view)."""
    return x.reshape(x.shape[0], hw[0], hw[1], x.shape[2])


class StagedModelMixin:
    """`forward_features`, `forward_intermediates`, `prune_intermediate_layers` and `set_grad_checkpointing` of a
    model `_stem(x) -> stages -> norm` (timm's contract); stages pass `stage_fmt` maps.

    Hooks: `_stem(x)`; `_take(i, x, norm)`, the map kept for stage i (the final norm on the last one when `norm`);
    `_reset_head()`, how pruning the end drops the classifier.
    """

    stage_fmt = "NHWC"
    stages_name = "stages"
    stem_name = "stem"

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)

    def _take(self, i: int, x: torch.Tensor, norm: bool) -> torch.Tensor:
        return self.norm(x) if norm and i == len(getattr(self, self.stages_name)) - 1 else x

    def _reset_head(self) -> None:
        self.reset_classifier(0, "")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        for stage in getattr(self, self.stages_name):
            x = stage(x)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs as NCHW or NHWC maps; `norm` passes the last one through the final norm."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        stages = getattr(self, self.stages_name)
        take_indices, max_index = feature_take_indices(len(stages), indices)
        run = stages[: max_index + 1] if stop_early else stages
        x = self._stem(x)
        intermediates = []
        for i, stage in enumerate(run):
            x = stage(x)
            if i in take_indices:
                y = self._take(i, x, norm)
                if output_fmt != self.stage_fmt:
                    y = y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y.permute(0, 2, 3, 1)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if len(run) == len(stages) else x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        stages = getattr(self, self.stages_name)
        take_indices, max_index = feature_take_indices(len(stages), indices)
        setattr(self, self.stages_name, stages[: max_index + 1])
        if getattr(self, "out_norms", None) is not None:
            self.out_norms = self.out_norms[: max_index + 1]
        prune_end = max_index < len(stages) - 1
        if prune_end:  # the last map kept is narrower: the final norm and the classifier cannot follow it
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self._reset_head()
        return take_indices

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in getattr(self, self.stages_name):
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        s = self.stages_name
        return dict(stem=rf"^{self.stem_name}", blocks=rf"^{s}\.(\d+)" if coarse else [
            (rf"^{s}\.(\d+)\.downsample", (0,)), (rf"^{s}\.(\d+)\.blocks\.(\d+)", None),
            (r"^out_norms\.(\d+)", None), (r"^norm\.", (99999,)),
        ])


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, hw: tuple[int, int], grad_checkpointing: bool
               ) -> torch.Tensor:
    """`x` through blocks called as `block(x, hw)`, each re-run in backward when `grad_checkpointing`."""
    for blk in blocks:
        x = checkpoint(blk, x, hw) if grad_checkpointing and torch.is_grad_enabled() else blk(x, hw)
    return x
