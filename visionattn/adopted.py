"""Glue for the timm families the zoo adopts as they are (GC ViT, SHViT, EfficientViM).

timm's own classes are used unchanged; what lives here is what timm lacks: the key mappings of the official GC ViT
(NVlabs `.pth.tar`) and SHViT (GitHub release) checkpoints, used by `visionattn.load_official(model, path)`, the
trainer's starting weights and the mm backbones (GC ViT's official dense backbone maps its keys with the same
rules). Building SHViT from the official constructor arguments is
`visionattn.from_official("shvit", "model/shvit.py:SHViT", ...)`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .checkpoint import unwrap_state_dict

__all__ = ["gcvit_checkpoint_filter_fn", "gcvit_official_key", "gcvit_fit_tensor", "resize_rpb_table_bicubic",
           "shvit_checkpoint_filter_fn"]

# Official SHViT nests each downsample inside the next stage's Sequential (blocksK.0-2); timm splits it out.
_SHVIT_RULES = [
    (re.compile(r"^blocks1\.(\d+)\."), lambda m: f"stages.0.blocks.{m[1]}."),
    (re.compile(r"^blocks([23])\.0\.([01])\."), lambda m: f"stages.{int(m[1]) - 1}.downsample.{m[2]}."),
    (re.compile(r"^blocks([23])\.1\."), lambda m: f"stages.{int(m[1]) - 1}.downsample.2."),
    (re.compile(r"^blocks([23])\.2\.([01])\."), lambda m: f"stages.{int(m[1]) - 1}.downsample.{3 + int(m[2])}."),
    (re.compile(r"^blocks([23])\.(\d+)\."), lambda m: f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 3}."),
]


def shvit_checkpoint_filter_fn(state_dict: Mapping, model: torch.nn.Module | None = None) -> dict:
    """Official SHViT (GitHub release) checkpoint -> timm `SHViT` keys; timm-layout dicts pass through."""
    sd = unwrap_state_dict(state_dict)
    out = {}
    for k, v in sd.items():
        for pattern, repl in _SHVIT_RULES:
            new, n = pattern.subn(repl, k, count=1)
            if n:
                k = new
                break
        out[k] = v
    return out


# NVlabs GC ViT -> timm: the conv units (depthwise 3x3, SE as Linears, pointwise 1x1) of the stem, the downsamplers
# and the global-query generators; a level's downsampler starts timm's next stage.
_GCVIT_UNIT = {"conv.0.": "conv_dw.", "conv.2.fc.0.": "se.fc1.", "conv.2.fc.2.": "se.fc2.", "conv.3.": "conv_pw."}
_GCVIT_BLOCK_KEYS = re.compile(r"^(norm[12]|attn\.(qkv|proj)|mlp\.fc[12])\.(weight|bias)$")


def _gcvit_unit(prefix: str, rest: str, key: str, down: bool) -> str:
    """A conv unit's tensor (`conv.k...`), or with `down` also a downsampler's norms / reduction conv."""
    for old, new in _GCVIT_UNIT.items():
        if rest.startswith(old) and rest[len(old):] == "weight":
            return f"{prefix}{'conv_block.' if down else ''}{new}weight"
    if down and re.match(r"^(norm[12]\.(weight|bias)|reduction\.weight)$", rest):
        return prefix + rest
    raise ValueError(f"GC ViT checkpoint key {key!r} has no timm counterpart")


def gcvit_official_key(key: str) -> str | None:
    """The timm `GlobalContextVit` name of an NVlabs GC ViT key (classification or detection backbone); None for
    what timm does not store (relative-position index buffers); timm names pass through. ValueError names a key
    that maps to nothing. The detection backbone's output norms (`norm{i}`) are the dense model's to map."""
    if key.startswith(("stem.", "stages.", "head.fc.")):
        return key
    if key.startswith("patch_embed.proj."):
        return "stem.conv1." + key[len("patch_embed.proj."):]
    if key.startswith("patch_embed.conv_down."):
        return _gcvit_unit("stem.down.", key[len("patch_embed.conv_down."):], key, down=True)
    if key.startswith(("norm.", "head.")):
        return ("stages.3.norm." if key.startswith("norm.") else "head.fc.") + key.split(".", 1)[1]
    m = re.match(r"^levels\.(\d+)\.(.*)$", key)
    if m:
        i, rest = int(m[1]), m[2]
        if rest.startswith("downsample."):
            return _gcvit_unit(f"stages.{i + 1}.downsample.", rest[len("downsample."):], key, down=True)
        q = re.match(r"^q_global_gen\.to_q_global\.(\d+)\.(.*)$", rest)
        if q:
            return _gcvit_unit(f"stages.{i}.global_block.blocks.conv{int(q[1]) + 1}.", q[2], key, down=False)
        b = re.match(r"^blocks\.(\d+)\.(.*)$", rest)
        if b:
            j, tail = b[1], b[2]
            if tail == "attn.relative_position_index":
                return None
            if tail == "attn.relative_position_bias_table":
                return f"stages.{i}.blocks.{j}.attn.rel_pos.relative_position_bias_table"
            if tail in ("gamma1", "gamma2"):
                return f"stages.{i}.blocks.{j}.ls{tail[-1]}.gamma"
            if _GCVIT_BLOCK_KEYS.match(tail):
                return f"stages.{i}.blocks.{j}.{tail}"
    raise ValueError(f"GC ViT checkpoint key {key!r} has no timm counterpart")


def resize_rpb_table_bicubic(table: torch.Tensor, window: int) -> torch.Tensor:
    """((2w'-1)^2, heads) -> ((2w-1)^2, heads), bicubic on the square offset grid (the official resize)."""
    n, heads = table.shape
    s1, s2 = math.isqrt(n), 2 * window - 1
    if s1 == s2:
        return table
    t = F.interpolate(table.float().permute(1, 0).reshape(1, heads, s1, s1), size=(s2, s2), mode="bicubic")
    return t.reshape(heads, s2 * s2).permute(1, 0).to(table.dtype)


def gcvit_fit_tensor(key: str, v: torch.Tensor, own: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """An official tensor in the shape of the model's: SE Linears as 1x1 convs, relative-position tables resized
    (bicubic) to the model's window."""
    if ".se.fc" in key and v.ndim == 2:
        return v[:, :, None, None]
    t = own.get(key)
    if t is None or t.shape == v.shape:
        return v
    if key.endswith("relative_position_bias_table") and v.ndim == 2 and t.ndim == 2 and v.shape[1] == t.shape[1]:
        return resize_rpb_table_bicubic(v, (math.isqrt(t.shape[0]) + 1) // 2)
    return v


def gcvit_checkpoint_filter_fn(state_dict: Mapping, model: torch.nn.Module | None = None) -> dict:
    """Official NVlabs GC ViT classification checkpoint (`.pth.tar`: `state_dict` / `state_dict_ema`) -> timm
    `GlobalContextVit` keys; timm-layout dicts pass through. With `model`, SE Linears become its 1x1 convs and
    relative-position tables are resized to its windows. A key that maps to nothing raises ValueError."""
    sd = unwrap_state_dict(state_dict)
    own = model.state_dict() if model is not None else {}
    out = {}
    for k, v in sd.items():
        nk = gcvit_official_key(k)
        if nk is not None:
            out[nk] = gcvit_fit_tensor(nk, v, own)
    return out
