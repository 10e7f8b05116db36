"""The official SHViT dense backbone (ysj9909/SHViT downstream/shvit.py:Partial_ViT_Exp, registered as `shvit_s4`)
on timm's SHViT.

The official detection backbone is the classification network without its head: the stride-16 stem and three
stages, returning the three stage maps (strides 16 / 32 / 64) for any input size (all convolutions, the single-head
attention is global). Its `train()` keeps every BatchNorm in eval mode (statistics frozen, affine parameters
trained) whatever the config says; `frozen_stages >= 0` freezes the stem (the wrapper's `frozen_stages` does the
same for 0 and extends it to stages). Module names are timm's (`patch_embed`, `stages.i.{downsample,blocks}`);
`checkpoint_filter_fn` maps the official classification checkpoints (`blocks1..3`, `head`) and the official
detectors' `backbone.*` keys onto them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.shvit import SHViT
from torch import nn

from visionattn.adopted import shvit_checkpoint_filter_fn
from visionattn.checkpoint import unwrap_state_dict

from ._common import FrozenBatchNormMixin, check_no_extra

__all__ = ["SHViTDense", "checkpoint_filter_fn"]


class SHViTDense(FrozenBatchNormMixin, nn.Module):
    """Official `Partial_ViT_Exp`: official arguments (`embed_dim`, `partial_dim`, `qk_dim`, `depth`, `types`;
    `img_size`, `patch_size`, `down_ops`, `distillation` accepted as the official class does, without effect on the
    backbone); forward returns the NCHW maps of `out_indices` (default: the three stages, as the official)."""

    default_out_indices = (0, 1, 2)
    # the names the official constructor reads (the config generator leaves out the rest, saying so)
    official_args = frozenset({"img_size", "patch_size", "frozen_stages", "in_chans", "embed_dim", "partial_dim",
                               "qk_dim", "depth", "types", "down_ops", "pretrained", "distillation"})

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=(128, 256, 384), partial_dim=(32, 64, 96),
                 qk_dim=(16, 16, 16), depth=(1, 2, 3), types=("s", "s", "s"),
                 down_ops=(("subsample", 2), ("subsample", 2), ("",)), distillation=False, out_indices=(0, 1, 2),
                 frozen_stages=-1, pretrained=None, **kwargs):
        check_no_extra(type(self).__name__, kwargs)
        super().__init__()
        n = len(embed_dim)
        if not (len(partial_dim) == len(qk_dim) == len(depth) == len(types) == n):
            raise ValueError(f"embed_dim, partial_dim, qk_dim, depth and types must have one entry per stage, got "
                             f"{embed_dim}, {partial_dim}, {qk_dim}, {depth}, {types}")
        if any(t not in ("s", "i") for t in types):
            raise ValueError(f"types must be 's' (attention) or 'i' (conv only) per stage, got {types}")
        ops = [tuple(o) for o in down_ops]
        if [o[0] if o else "" for o in ops[: n - 1]] != ["subsample"] * (n - 1) or any(
                len(o) > 1 and o[1] != 2 for o in ops[: n - 1]):
            raise ValueError(f"down_ops must subsample by 2 after every stage but the last (as every SHViT), got "
                             f"{down_ops}")
        if patch_size != 16:
            raise ValueError(f"patch_size must be 16 (the SHViT stem), got {patch_size}")
        self.out_indices = tuple(int(i) for i in out_indices)
        if not self.out_indices or any(not 0 <= i < n for i in self.out_indices):
            raise ValueError(f"out_indices must be stage indices in [0, {n - 1}], got {out_indices}")
        net = SHViT(in_chans=in_chans, num_classes=0, embed_dim=tuple(embed_dim), partial_dim=tuple(partial_dim),
                    qk_dim=tuple(qk_dim), depth=tuple(depth), types=tuple(types))
        self._adopt(net, frozen_stages, pretrained, checkpoint_filter_fn)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(x)
        outs = []
        last = max(self.out_indices)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
            if i == last:
                break
        return tuple(outs)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official SHViT checkpoints -> `SHViTDense` names: classification (`model` / `state_dict`, `blocks1..3`; the
    classifier `head` / `head_dist` dropped) and detection (`backbone.*` already stripped); timm-named ones pass.
    2-D weights where the model has 1x1 convs get their two trailing dims (the official classification loader's
    rule)."""
    sd = unwrap_state_dict(state_dict)
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "head_dist."))}
    out = shvit_checkpoint_filter_fn(sd)
    own = model.state_dict()
    for k, v in out.items():
        if k in own and v.ndim == 2 and own[k].ndim == 4 and own[k].shape[2:] == (1, 1):
            out[k] = v[:, :, None, None]
    return out


_VARIANTS: dict[str, dict] = {  # the official classification sizes (model/build.py; downstream `shvit_s4`)
    "shvit_s1": dict(embed_dim=(128, 224, 320), depth=(2, 4, 5), partial_dim=(32, 48, 68), types=("i", "s", "s")),
    "shvit_s2": dict(embed_dim=(128, 308, 448), depth=(2, 4, 5), partial_dim=(32, 66, 96), types=("i", "s", "s")),
    "shvit_s3": dict(embed_dim=(192, 352, 448), depth=(3, 5, 5), partial_dim=(48, 75, 96), types=("i", "s", "s")),
    "shvit_s4": dict(img_size=256, embed_dim=(224, 336, 448), depth=(4, 7, 6), partial_dim=(48, 72, 96),
                     types=("i", "s", "s")),
}
