"""Argument checks and mappings the official-constructor adapters share.

The adapters accept exactly what the official constructors accept and refuse (ValueError naming the argument)
whatever the zoo does not implement, so the same checks recur in every family; they live here once.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping

from torch import nn

__all__ = ["expect", "no_extra", "is_layer_norm", "layer_norm_eps", "pop_vit_defaults", "fixed_builder",
           "official_drop_rate", "checkpointed", "registered_function"]


def expect(name: str, value, allowed: tuple) -> None:
    """ValueError unless `value` (of argument `name`) is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported here; allowed: {allowed}")


def no_extra(builder: str, kw: Mapping, allowed: Collection) -> None:
    """ValueError naming every key of `kw` that is not in `allowed` (the official `builder` has no such argument)."""
    extra = sorted(k for k in kw if k not in allowed)
    if extra:
        raise ValueError(f"{builder}: unsupported argument(s) {extra}")


def is_layer_norm(norm) -> bool:
    """`nn.LayerNorm` or `partial(nn.LayerNorm, eps=...)`, as the official code passes it."""
    # other LayerNorm arguments (elementwise_affine, bias) would change the parameters the checkpoints hold
    return norm is nn.LayerNorm or (isinstance(norm, functools.partial) and norm.func is nn.LayerNorm
                                    and not norm.args and set(norm.keywords) <= {"eps"})


def layer_norm_eps(norm, name: str = "norm_layer") -> float:
    """eps of `nn.LayerNorm` or `partial(nn.LayerNorm, eps=...)`; ValueError for any other norm."""
    if not is_layer_norm(norm):
        raise ValueError(f"{name} must be nn.LayerNorm or partial(nn.LayerNorm, eps=...), got {norm!r}")
    return 1e-5 if norm is nn.LayerNorm else float(norm.keywords.get("eps", 1e-5))


def pop_vit_defaults(kw: dict) -> None:
    """Remove from `kw` the timm-VisionTransformer arguments the zoo's DeiTs do not implement.

    Each must keep its default (act_layer may also be nn.GELU, the default it stands for); else ValueError.
    """
    expect("representation_size", kw.pop("representation_size", None), (None,))
    expect("distilled", kw.pop("distilled", False), (False,))
    expect("weight_init", kw.pop("weight_init", ""), ("",))
    expect("act_layer", kw.pop("act_layer", None), (None, nn.GELU))
    embed = kw.pop("embed_layer", None)
    # compared by name: the official code passes timm's PatchEmbed or its own copy of it
    if embed is not None and getattr(embed, "__name__", "") != "PatchEmbed":
        raise ValueError(f"embed_layer must be the default PatchEmbed, got {embed!r}")


def fixed_builder(builder: str, fixed: Collection[str], target: str,
                  make: Callable[[bool, dict], nn.Module]) -> Callable[..., nn.Module]:
    """An official builder function `builder(pretrained=False, **kwargs)`: `make(pretrained, kwargs)`.

    The official function sets the `fixed` arguments itself, so passing one is a ValueError pointing at
    `target`, the class that takes it. `builder` may be 'file.py:name'; the function is called `name`.
    """
    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        for k in fixed:
            if k in kwargs:
                raise ValueError(f"{builder} fixes {k}; pass it to {target} instead")
        return make(pretrained, kwargs)

    build.__name__ = builder.split(":")[-1]
    return build


def official_drop_rate(kw: dict, pos_drop: bool = True) -> dict:
    """`kw` with the official `drop_rate` (dropout after the patch / position embedding and in the blocks, none
    before the head) under timm's names: `pos_drop_rate` (when the official model has that dropout) and
    `proj_drop_rate`; timm's `drop_rate` (head dropout) stays 0."""
    drop = kw.pop("drop_rate", 0.0)
    kw["proj_drop_rate"] = drop
    if pos_drop:
        kw["pos_drop_rate"] = drop
    return kw


def checkpointed(model: nn.Module, enable) -> nn.Module:
    """`model` with timm's gradient checkpointing on where the official `use_checkpoint` / `use_chk` asks."""
    model.set_grad_checkpointing(bool(enable))
    return model


def registered_function(name: str, adapt: Callable[[dict], dict] = dict) -> Callable[..., nn.Module]:
    """The official registered function `fn(pretrained=False, **kwargs)` as the zoo entrypoint `name`
    (`pretrained=True` loads the official weights, as there); `adapt` maps the official keyword arguments."""

    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=pretrained, **adapt(kwargs))

    build.__name__ = f"official_{name}"
    return build
