"""timm registration glue: zoo models are registered with timm under a family tag, never over a timm name."""
from __future__ import annotations

from collections.abc import Callable

import timm
from timm.models import is_model, register_model

__all__ = ["ModelNameClashError", "register_zoo_model", "list_models", "get_family", "ZooModel", "FAMILIES"]

# Our own families (the folder names of the parity fixtures) and the timm families the zoo adopts as they are.
OWN_FAMILIES = ("biformer", "nat", "dinat", "agent_attention", "slab")
ADOPTED_FAMILIES = {"gcvit": "gcvit_*", "shvit": "shvit_*", "efficientvim": "efficientvim_*"}
FAMILIES = OWN_FAMILIES + tuple(ADOPTED_FAMILIES)

_ZOO: dict[str, str] = {}


class ModelNameClashError(RuntimeError):
    """A zoo model tried to register under a name timm already has."""


class ZooModel(str):
    """A model name that also carries its family (`name.family`); usable wherever timm expects a name."""

    family: str

    def __new__(cls, name: str, family: str):
        obj = super().__new__(cls, name)
        obj.family = family
        return obj

    def __repr__(self) -> str:
        return f"ZooModel({str(self)!r}, family={self.family!r})"


def register_zoo_model(family: str) -> Callable[[Callable], Callable]:
    """Decorator: register a model entrypoint with timm, tagged with `family`.

    Raises ModelNameClashError when timm already knows the name: timm's own registry would silently
    replace its model, and users would get ours under a timm name.
    """
    if family not in OWN_FAMILIES:
        raise ValueError(f"family must be one of {OWN_FAMILIES}, got {family!r}")

    def deco(fn: Callable) -> Callable:
        name = fn.__name__
        if name in _ZOO or is_model(name):
            raise ModelNameClashError(
                f"visionattn model {name!r} (family {family!r}) clashes with a model timm already registers; "
                "rename it: the zoo never overwrites a timm name"
            )
        register_model(fn)
        _ZOO[name] = family
        return fn

    return deco


def _adopted() -> dict[str, str]:
    out = {}
    for family, pattern in ADOPTED_FAMILIES.items():
        for name in timm.list_models(pattern):
            out[name] = family
    return out


def _all() -> dict[str, str]:
    return {**_adopted(), **_ZOO}


def get_family(name: str) -> str:
    """Family of a zoo model name (`biformer_s` -> 'biformer'); KeyError if not in the zoo."""
    base = name.split(".")[0]
    fams = _all()
    if base not in fams:
        raise KeyError(f"{name!r} is not a visionattn zoo model")
    return fams[base]


def list_models(family: str | None = None, pretrained: bool = False) -> list[ZooModel]:
    """Zoo models, own and adopted, sorted by name; each entry is a str with a `.family` attribute.

    family: restrict to one family (see `visionattn.FAMILIES`); pretrained: only models with a pretrained
    config that names weights (a URL, hub id or file).
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES} or None, got {family!r}")
    fams = _all()
    names = sorted(n for n, f in fams.items() if family is None or f == family)
    if pretrained:
        with_weights = {n.split(".")[0] for n in timm.list_pretrained()}
        names = [n for n in names if n in with_weights]
    return [ZooModel(n, fams[n]) for n in names]
