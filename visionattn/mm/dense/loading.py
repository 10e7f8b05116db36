"""Strict loading of a filtered checkpoint into a dense backbone (the rule of `timm.create_model(pretrained=True)`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["load_filtered", "check_filtered"]


def check_filtered(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                   optional: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """RuntimeError naming the keys when `sd` (already in the model's names) does not cover the model: a tensor
    of another shape, a key the model lacks, or a model tensor the file lacks (unless its name starts with one of
    `optional`). Returns (missing optional keys, [])."""
    own = model.state_dict()
    optional = tuple(optional)
    wrong = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in sd.items()
             if k in own and own[k].shape != v.shape]
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd and not k.startswith(optional)]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} tensors of another shape, e.g. {wrong[:4]}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys it cannot map, e.g. {unexpected[:6]}")
    if missing:
        problems.append(f"{len(missing)} backbone tensors it lacks, e.g. {missing[:6]}")
    if problems:
        raise RuntimeError(f"checkpoint {source} does not match {type(model).__name__}: " + "; ".join(problems))
    return [k for k in own if k not in sd], []


def load_filtered(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                  optional: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """`check_filtered`, then load; returns the optional keys the file did not have."""
    missing, unexpected = check_filtered(model, sd, source, optional)
    model.load_state_dict(dict(sd), strict=False)
    return missing, unexpected
