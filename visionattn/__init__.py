"""visionattn: efficient-attention vision backbones registered with timm."""
# ruff: noqa: I001
# The registry and the official-constructor hooks come first: the model files import them from here.
from ._registry import FAMILIES, ModelNameClashError, ZooModel, get_family, list_models, register_zoo_model
from .official import from_official, official_builders, register_official
from .utils import set_attn_backend

from . import (  # noqa: E402
    backbones,  # registers every zoo model with timm
    kernels,  # maps to the top-level kernels/ folder
    layers,
)

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
    "set_attn_backend",
]
