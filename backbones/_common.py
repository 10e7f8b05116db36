"""Small pieces the host skeletons (`_pvt`, `_swin`, `_deit`, `_cswin`) and their families share.

* `check_divisible`: the one input-size check (a clear ValueError instead of a reshape error deep inside).
* `resize_token_grid`: run-time bilinear / bicubic resize of a (1, N, C) position table to another grid.
* `inference_cached`: reuse a tensor derived from parameters (resized bias tables, gathered relative-position
  biases) while nothing can change it: no gradient wanted, same parameter storage and in-place version.

The first two are registered with timm as FX leaf functions: they branch on run-time shapes.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, resample_abs_pos_embed
from torch import nn

from visionattn.utils import is_graph_capture as _traced

__all__ = ["check_divisible", "resize_token_grid", "inference_cached", "to_nhwc", "rename_keys"]


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




def inference_cached(
        module: nn.Module, key: tuple, params: Sequence[torch.Tensor], fn: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """`fn()`, computed once per (key, parameter state) while no gradient can flow into `params`.

    In training, under autograd with trainable `params`, or while tracing / compiling, `fn()` runs every time
    (so gradients, FX graphs and compiled graphs see the computation). Otherwise the result is kept on
    `module` and reused until a parameter is replaced (new storage), changed in place (its version counter:
    `load_state_dict`, optimizer steps), or moved to another device / dtype.
    """
    if (module.training or _traced() or any(not isinstance(p, torch.Tensor) for p in params)
            or (torch.is_grad_enabled() and any(p.requires_grad for p in params))):
        return fn()
    stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = module.__dict__.setdefault("_inference_cache", {})
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    out = fn()
    cache[key] = (stamp, out)
    return out


def rename_keys(state_dict: Mapping[str, torch.Tensor], renames: Iterable[tuple[re.Pattern, Callable]]
                ) -> dict[str, torch.Tensor]:
    """Apply every (pattern, replacement) of `renames` to each key (official names -> timm-style names)."""
    out = {}
    for k, v in state_dict.items():
        for pat, rep in renames:
            k = pat.sub(rep, k)
        out[k] = v
    return out
