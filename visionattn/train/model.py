"""The model of a run: timm.create_model on the config (zoo models are plain timm models after
`import visionattn`), with the config's drop rates and kwargs; its starting weights are `weights.py`'s."""
from __future__ import annotations

import timm
from torch import nn

import visionattn  # noqa: F401  (registers the zoo with timm)

from .config import ConfigError, suggest

__all__ = ["check_model_name", "build_model", "step_hooks"]


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        raise ConfigError(f"unknown model {name!r}{suggest(name, timm.list_models())}; "
                          "see visionattn.list_models() or timm.list_models()")


def build_model(cfg: dict, num_classes: int, **extra) -> nn.Module:
    """timm.create_model from the config, randomly initialised (the run's starting weights are loaded by
    `visionattn.train.weights.load_starting_weights`)."""
    check_model_name(cfg["model"])
    kwargs = dict(cfg["model_kwargs"])
    kwargs.update(extra)
    if cfg["drop_rate"] is not None:
        kwargs["drop_rate"] = cfg["drop_rate"]
    if cfg["drop_path"] is not None:
        kwargs["drop_path_rate"] = cfg["drop_path"]
    try:
        model = timm.create_model(cfg["model"], pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {cfg['model']!r} rejected its arguments {sorted(kwargs)}: {e}") from None
    if cfg["prepbn_steps"] is not None or cfg["prepbn_warm"]:
        # SLAB: the LN -> BN blend length is a property of the model's PRepBN norms
        from ..layers.prepbn import prepbn_modules, set_prepbn_step

        if not prepbn_modules(model):
            raise ConfigError(f"config keys 'prepbn_steps' / 'prepbn_warm' are set, but model {cfg['model']!r} has "
                              "no PRepBN norm")
        set_prepbn_step(model, 0, total_steps=cfg["prepbn_steps"], warm_steps=cfg["prepbn_warm"])
    return model


def step_hooks(model: nn.Module) -> list:
    """The modules of `model` that follow the optimizer step: each has `set_train_step(step)`, which the trainer
    calls before the forwards of every step (and at set-up and resume)."""
    return [m for m in model.modules() if callable(getattr(m, "set_train_step", None))]
