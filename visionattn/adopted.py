"""Glue for the timm families the zoo adopts as they are (GC ViT, SHViT, EfficientViM).

timm's own classes are used unchanged; what lives here is what timm lacks: the key mapping of the official SHViT
GitHub-release checkpoints (`visionattn.load_official(model, path)` uses it). Building SHViT from the official
constructor arguments is `visionattn.from_official("shvit", "model/shvit.py:SHViT", ...)`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .checkpoint import unwrap_state_dict

__all__ = ["shvit_checkpoint_filter_fn"]

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
