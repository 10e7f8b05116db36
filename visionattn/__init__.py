"""visionattn: efficient-attention vision backbones registered with timm."""
from . import backbones, kernels, layers  # backbones registers every zoo model with timm
from ._registry import FAMILIES, ModelNameClashError, ZooModel, get_family, list_models, register_zoo_model
from .layers.fused import set_fused_linear
from .official import from_official, load_official, official_builders, register_official
from .utils import set_attn_backend

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
    "load_official",
    "official_builders",
    "register_official",
    "register_zoo_model",
    "set_attn_backend",
    "set_fused_linear",
]
