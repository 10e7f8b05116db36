"""Model-level switches shared by the tools: attention backend selection and inference fusion."""
from __future__ import annotations

import copy

from torch import nn

__all__ = ["set_attn_backend", "is_reparameterizable", "fuse_for_inference"]


def set_attn_backend(model: nn.Module, backend: str) -> nn.Module:
    """Set `backend` on every visionattn attention module of `model` (in place); returns the model."""
    for m in model.modules():
        if hasattr(m, "backend") and type(m).__module__.startswith("visionattn"):
            m.backend = backend
    return model


def is_reparameterizable(model: nn.Module) -> bool:
    """True when some sub-module can be fused or re-parameterised for inference (SLAB, SHViT, EfficientViM)."""
    return any(
        hasattr(m, name) for m in model.modules() for name in ("fuse", "reparameterize", "switch_to_deploy")
    )


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A fused eval-mode copy of `model`: its own `fuse()` when it has one, else timm's `reparameterize_model`."""
    from timm.utils.model import reparameterize_model

    model = copy.deepcopy(model).eval()
    if callable(getattr(model, "fuse", None)):
        fused = model.fuse()
        model = fused if isinstance(fused, nn.Module) else model
    else:
        model = reparameterize_model(model, inplace=True)
    return model.eval()
