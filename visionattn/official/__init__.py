"""The official code's side: build zoo models from official constructor arguments, load official checkpoints.

`from_official(family, builder, official_kwargs, state_dict)` builds our module from the arguments the official
constructor takes (one adapter module per family, `visionattn.official.<family>`, imported on first use: official
meanings such as `drop_rate` are mapped there); `load_official(model, path_or_url)` loads an official checkpoint
file into a zoo model (own or adopted family) through the family's checkpoint filter.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from visionattn._registry import OWN_FAMILIES, get_family
from visionattn.checkpoint import download_cached, load_pretrained_file
from visionattn.layers.fused import set_fused_linear

__all__ = ["register_official", "from_official", "official_builders", "load_official", "OFFICIAL_FAMILIES"]

# family -> the module whose import registers its builders
_FAMILY_MODULES = {
    "biformer": "visionattn.official.biformer",
    "nat": "visionattn.official.nat",
    "dinat": "visionattn.official.nat",
    "agent_attention": "visionattn.official.agent_attention",
    "slab": "visionattn.official.slab",
    "shvit": "visionattn.official.shvit",
}
OFFICIAL_FAMILIES = tuple(_FAMILY_MODULES)

# (family, "path/in/official/repo.py:Name") -> (builder(**official_kwargs) -> module, filter_fn or None)
_OFFICIAL: dict[tuple[str, str], tuple[Callable[..., nn.Module], Callable | None]] = {}


def register_official(family: str, builder: str, filter_fn: Callable | None = None):
    """Decorator: `fn(**official_kwargs)` builds our module equivalent to the official `builder`.

    `filter_fn(state_dict, model)` maps an official state dict onto that module (the family's
    checkpoint filter); identity when None.
    """
    if family not in _FAMILY_MODULES:
        raise ValueError(f"family must be one of {OFFICIAL_FAMILIES}, got {family!r}")

    def deco(fn):
        key = (family, builder)
        if key in _OFFICIAL:
            raise RuntimeError(f"official builder {builder!r} of family {family!r} registered twice")
        _OFFICIAL[key] = (fn, filter_fn)
        return fn

    return deco


def _load(family: str | None) -> None:
    for fam in OFFICIAL_FAMILIES if family is None else (family,):
        if fam not in _FAMILY_MODULES:
            raise ValueError(f"family must be one of {OFFICIAL_FAMILIES}, got {fam!r}")
        importlib.import_module(_FAMILY_MODULES[fam])


def official_builders(family: str | None = None) -> list[tuple[str, str]]:
    """Every registered (family, builder) pair, sorted; one family's when `family` is given."""
    _load(family)
    return sorted(k for k in _OFFICIAL if family is None or k[0] == family)


def from_official(
    family: str,
    builder: str,
    official_kwargs: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Our module for the official `builder` (as `path/in/official/repo.py:Name`) with `official_kwargs`.

    `official_kwargs` are what the official constructor takes (e.g. ``norm_layer=partial(nn.LayerNorm,
    eps=1e-6)``). With `state_dict` (official key names), it is loaded strictly through the family's
    checkpoint filter. The module's forward returns what the official one returns.
    """
    _load(family)
    key = (family, builder)
    if key not in _OFFICIAL:
        known = [b for f, b in official_builders(family)]
        raise ValueError(
            f"builder {builder!r} is not known for family {family!r}; known builders: {known or 'none'}"
        )
    fn, filter_fn = _OFFICIAL[key]
    model = fn(**dict(official_kwargs or {}))
    if family in OWN_FAMILIES:  # as their entrypoints; adopted timm models stay exactly timm's
        set_fused_linear(model)
    if state_dict is not None:
        sd = filter_fn(dict(state_dict), model) if filter_fn is not None else dict(state_dict)
        model.load_state_dict(sd, strict=True)
    return model


# family -> "module:function" mapping its official checkpoints (families absent here keep timm's keys)
_FILTERS = {
    "biformer": "visionattn.backbones.biformer:checkpoint_filter_fn",
    "nat": "visionattn.backbones.nat:checkpoint_filter_fn",
    "dinat": "visionattn.backbones.nat:checkpoint_filter_fn",
    "agent_attention": "visionattn.backbones.agent:checkpoint_filter_fn",
    "slab": "visionattn.backbones.slab:checkpoint_filter_fn",
    "gcvit": "visionattn.adopted:gcvit_checkpoint_filter_fn",
    "shvit": "visionattn.adopted:shvit_checkpoint_filter_fn",
}


def _filter_fn(model: nn.Module) -> Callable | None:
    by_module = {v.split(":")[0]: v for v in _FILTERS.values()}
    target = next((by_module[c.__module__] for c in type(model).__mro__ if c.__module__ in by_module), None)
    if target is None:  # an adopted timm model: its family from the registry
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        if arch is None:
            raise ValueError(f"cannot tell the family of {type(model).__name__}: build it with timm.create_model")
        target = _FILTERS.get(get_family(arch))
    if target is None:
        return None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def load_official(model: nn.Module, path_or_url: str | os.PathLike, *, strict: bool = True, use_ema: bool = False,
                  file_name: str | None = None) -> nn.Module:
    """Load an official checkpoint into `model` (a zoo model, own or adopted) and return it.

    `path_or_url`: a file (safetensors or a torch file read with weights_only; trainer envelopes are opened), or a
    URL downloaded once into torch.hub's cache (as `file_name`). The family's `checkpoint_filter_fn` maps the
    official keys; `strict` raises on any missing or unexpected key except a classifier of another size (kept).
    `use_ema`: read the EMA weights of the file.
    """
    path = os.fspath(path_or_url)
    if "://" in path:
        path = download_cached(path, file_name)
    load_pretrained_file(model, path, _filter_fn(model), strict=strict, use_ema=use_ema)
    return model
