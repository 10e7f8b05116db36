"""visionattn: efficient-attention vision backbones registered with timm."""
from . import (
    backbones,  # noqa: E402  (registers every zoo model with timm)
    kernels,  # noqa: E402,I001  (maps to the top-level kernels/ folder)
    layers,  # noqa: E402
)
from ._registry import FAMILIES, ModelNameClashError, ZooModel, get_family, list_models, register_zoo_model
from .official import from_official, official_builders, register_official

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "ModelNameClashError",
    "ZooModel",
    "backbones",
    "from_official",
    "get_family",
    "kernels",
    "layers",
    "list_models",
    "official_builders",
    "register_official",
    "register_zoo_model",
]
