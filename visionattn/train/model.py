"""The model of a run: timm.create_model on the config (zoo models are plain timm models after
`import visionattn`), with the config's drop rates, kwargs and initial weights."""
from __future__ import annotations

import timm
from torch import nn

import visionattn  # noqa: F401  (registers the zoo with timm)

from .checkpoint import load_weights
from .config import ConfigError, suggest

__all__ = ["check_model_name", "build_model"]


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        raise ConfigError(f"unknown model {name!r}{suggest(name, timm.list_models())}; "
                          "see visionattn.list_models() or timm.list_models()")


def build_model(cfg: dict, num_classes: int, **extra) -> nn.Module:
    """timm.create_model from the config (zoo models are plain timm models after `import visionattn`)."""
    check_model_name(cfg["model"])
    kwargs = dict(cfg["model_kwargs"])
    kwargs.update(extra)
    if cfg["drop_rate"] is not None:
        kwargs["drop_rate"] = cfg["drop_rate"]
    if cfg["drop_path"] is not None:
        kwargs["drop_path_rate"] = cfg["drop_path"]
    try:
        model = timm.create_model(cfg["model"], pretrained=cfg["pretrained"], num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {cfg['model']!r} rejected its arguments {sorted(kwargs)}: {e}") from None
    if cfg["initial_checkpoint"]:
        load_weights(model, cfg["initial_checkpoint"], strict=False)
    return model

