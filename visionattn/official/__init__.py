"""Build zoo models from the official implementations' constructor arguments.

One module per family (``visionattn.official.<family>``) holds the adapters that turn the official
constructor's keyword arguments into our model; it is imported the first time that family is asked for,
so model files stay free of them.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["register_official", "from_official", "official_builders", "OFFICIAL_FAMILIES"]

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
    if state_dict is not None:
        sd = filter_fn(dict(state_dict), model) if filter_fn is not None else dict(state_dict)
        model.load_state_dict(sd, strict=True)
    return model
