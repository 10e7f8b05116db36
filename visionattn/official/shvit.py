"""Official SHViT constructor (ysj9909/SHViT, ``model/shvit.py:SHViT``) -> timm's SHViT, for ``from_official``."""
from __future__ import annotations

from visionattn.adopted import shvit_checkpoint_filter_fn

from . import register_official

__all__: list[str] = []

# arguments of the official constructor that size nothing in timm's SHViT
_NO_EFFECT = {"img_size", "patch_size", "frozen_stages", "down_ops", "pretrained", "model_cfg"}


@register_official("shvit", "model/shvit.py:SHViT", filter_fn=shvit_checkpoint_filter_fn)
def _shvit(
    in_chans=3, num_classes=1000, embed_dim=(128, 256, 384), partial_dim=(32, 64, 96), qk_dim=(16, 16, 16),
    depth=(1, 2, 3), types=("s", "s", "s"), distillation=False, **other,
):
    from timm.models.shvit import SHViT

    if distillation:
        raise ValueError("distillation=True: timm's SHViT has no distillation head (head_dist); use False")
    unsupported = set(other) - _NO_EFFECT
    if unsupported:
        raise ValueError(f"unsupported official SHViT arguments: {sorted(unsupported)}")
    return SHViT(in_chans=in_chans, num_classes=num_classes, embed_dim=tuple(embed_dim),
                 partial_dim=tuple(partial_dim), qk_dim=tuple(qk_dim), depth=tuple(depth), types=tuple(types))
