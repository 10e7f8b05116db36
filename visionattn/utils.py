"""Helpers shared by the backbones (drop-path schedules, meta-safe init) and model-level switches used by the
tools (attention backend selection, inference fusion)."""
from __future__ import annotations

import copy

import torch
from timm.layers import trunc_normal_
from torch import nn

__all__ = ["drop_path_rates", "trunc_normal_unless_meta", "set_attn_backend", "is_reparameterizable",
           "fuse_for_inference"]


def drop_path_rates(drop_path_rate: float, n: int) -> list[float]:
    """torch.linspace(0, drop_path_rate, n) as Python floats, computed without a tensor so that building under
    `torch.device("meta")` works."""
    return [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]


def trunc_normal_unless_meta(t: torch.Tensor, std: float = 0.02) -> None:
    """timm's trunc_normal_, skipped on the meta device (where it is slow and meaningless)."""
    if not t.is_meta:
        trunc_normal_(t, std=std)


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


class LinearHeadMixin:
    """timm classifier API for models ending in 'avg' (or no, '') pooling + a Linear `head` on
    `num_features`."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
