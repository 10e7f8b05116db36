"""mmdet 3.x / mmseg 1.x backbones for every zoo family.

One class, `ZooBackboneMM`, wraps any zoo (or adopted timm) model; the per-family subclasses only fix which
family `model_name` must belong to and the per-output norm the family's official dense backbone uses:

=================  =====================  ===============================================================
registry name      family                 per-output norm
=================  =====================  ===============================================================
BiFormerMM         biformer               the model's own `out_norms.i` (LayerNorm2d, `BiFormer_mm`'s extra_norms)
NATMM / DiNATMM    nat / dinat            the model's own `out_norms.i` (the official `NAT` / `DiNAT_s` norm{i})
AgentAttentionMM   agent_attention        `norm{i}` LayerNorm2d added here (Swin/PVT mmdet style)
SLABMM             slab                   `norm{i}` LayerNorm2d added here (official `norm0..norm3`)
GCViTMM            gcvit                  `norm{i}` LayerNorm2d added here (official GC ViT det)
SHViTMM            shvit                  none (BN model; the neck `EfficientViTFPN` adapts 3 levels)
EfficientViMMM     efficientvim           none (the neck's `pre_norm=True`, as the official config)
=================  =====================  ===============================================================

All are registered in the mmdet and mmseg MODELS registries (and mmengine's root registry), so a config
only needs ``custom_imports=dict(imports=['visionattn.mm'], allow_failed_imports=False)``.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import timm
import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d, resize_rel_pos_bias_table
from timm.models import group_parameters
from torch import nn

import visionattn
from visionattn.checkpoint import load_state_dict_file, strip_prefix, unwrap_state_dict

from .checkpoint import mm_checkpoint_globals
from .dense import DENSE_VARIANTS, build_dense, filter_for
from .dense.loading import check_filtered, load_filtered

__all__ = [
    "ZooBackboneMM", "BiFormerMM", "NATMM", "DiNATMM", "AgentAttentionMM", "SLABMM", "GCViTMM", "SHViTMM",
    "EfficientViMMM",
]


def _filter_fn(model: nn.Module):
    """The family's `checkpoint_filter_fn` (official -> zoo keys), found beside the model class."""
    from visionattn import adopted

    family = visionattn.get_family(model.pretrained_cfg["architecture"])
    own = getattr(adopted, f"{family}_checkpoint_filter_fn", None)  # adopted timm families timm does not map
    if own is not None:
        return own
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def _resize_rel_table(key: str, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative-position tables of window models built for another window (e.g. GC ViT at a new img_size)."""
    if v.shape == target.shape or not key.endswith("relative_position_bias_table") or v.ndim != 2:
        return v
    side = round(math.sqrt(target.shape[0]))
    if side * side != target.shape[0] or side % 2 == 0 or v.shape[1] != target.shape[1]:
        return v
    return resize_rel_pos_bias_table(v, ((side + 1) // 2,) * 2, tuple(target.shape))


class ZooBackboneMM(BaseModule):
    """A zoo model as an mmdet/mmseg backbone: forward returns a tuple of NCHW maps for `out_indices`.

    Args:
        model_name: a zoo / adopted timm name (`visionattn.list_models()`); other kwargs go to the model.
        out_indices: stage indices to return (0-based; default every stage: 4, or 3 for SHViT / EfficientViM).
        frozen_stages: -1 none; >= 0 freezes the stem, k > 0 also stages 0..k-1 (the model's coarse
            `group_matcher` says which parameters form the stem and each stage). Kept frozen across `train()`.
        norm_eval: keep every BatchNorm in eval mode in `train()` (statistics frozen, affine still trained).
        out_norm: 'auto' (the family's official choice, see the module table), 'ln' (LayerNorm2d `norm{i}` per
            output added here) or 'none'.
        pad_multiple: zero-pad the input right/bottom to a multiple of this before the model and crop every
            map back to ceil(side / stride). Default: 32 for Agent Attention (windows), none for the rest
            (they handle any size themselves). GC ViT and SLAB are built for `img_size` (windows / position
            tables) and pad smaller inputs up to it; a larger input raises ValueError (build with a larger
            `img_size`; the checkpoint filters resize the tables).
        init_cfg: e.g. ``dict(type='Pretrained', checkpoint=PATH)``: our or official classification / dense
            checkpoints (``backbone.`` prefixes stripped), read with weights_only=True and mapped through the
            family's `checkpoint_filter_fn`, with the rule of ``timm.create_model(pretrained=True)``: a file that
            does not match the backbone raises RuntimeError (see `load_checkpoint`).
    """

    family: str | tuple[str, ...] | None = None
    _own_norm_families = ("biformer", "nat", "dinat")
    _ln_families = ("agent_attention", "slab", "gcvit")
    _pad_families = ("agent_attention",)
    _fixed_size_families = ("gcvit", "slab")  # windows / position tables tied to `img_size`

    def __init__(self, model_name: str, out_indices: Sequence[int] | None = None, frozen_stages: int = -1,
                 norm_eval: bool = False, out_norm: str = "auto", pad_multiple: int | None = None,
                 init_cfg: dict | None = None, **model_kwargs):
        super().__init__(init_cfg=None)
        self._init_cfg_pretrained = init_cfg
        family = visionattn.get_family(model_name)
        allowed = (self.family,) if isinstance(self.family, str) else self.family
        if allowed is not None and family not in allowed:
            raise ValueError(f"model_name {model_name!r} is a {family!r} model; {type(self).__name__} takes "
                             f"{allowed} models")
        if out_norm not in ("auto", "ln", "none"):
            raise ValueError(f"out_norm must be 'auto', 'ln' or 'none', got {out_norm!r}")
        self.model_name, self.model_family = model_name, family
        kwargs = dict(model_kwargs)
        if out_indices is None:  # every stage: 4, or 3 (SHViT / EfficientViM)
            out_indices = (0, 1, 2) if family in ("shvit", "efficientvim") else (0, 1, 2, 3)
        # the official dense backbone of this variant (official arguments), else the zoo / timm model
        self.dense = model_name in DENSE_VARIANTS
        if self.dense:
            kwargs.pop("pretrained", None)  # the official `pretrained=` path: use init_cfg here
            self.model = build_dense(model_name, out_indices=tuple(out_indices), **kwargs)
        else:
            if family in self._own_norm_families:
                kwargs.setdefault("out_norms", tuple(out_indices))
            self.model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        # what a checkpoint of this model may hold beyond the pruned backbone (load_checkpoint)
        self._unpruned_keys = set(self.model.state_dict())
        classifier = getattr(self.model, "pretrained_cfg", {}).get("classifier") or ()
        self._classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        n_stages = len(self.model.feature_info)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < n_stages for i in out_indices) or list(out_indices) != sorted(
                set(out_indices)):
            raise ValueError(f"out_indices must be increasing stage indices in [0, {n_stages - 1}], got {out_indices}")
        if not -1 <= frozen_stages <= n_stages:
            raise ValueError(f"frozen_stages must be in [-1, {n_stages}], got {frozen_stages}")
        self.out_indices, self.frozen_stages, self.norm_eval = out_indices, frozen_stages, norm_eval
        self.reductions = [self.model.feature_info[i]["reduction"] for i in out_indices]
        self.channels = [self.model.feature_info[i]["num_chs"] for i in out_indices]
        # Stage membership comes from the unpruned model (the matcher names the modules pruning keeps).
        self._stage_params = self._stage_param_names(n_stages)
        if not self.dense:
            self.model.prune_intermediate_layers(list(out_indices), prune_norm=True, prune_head=True)

        if self.dense:
            norms = getattr(self.model, "out_norms", None)  # BiFormer_mm keeps 4 norms whatever is returned
            for i, norm in enumerate(norms or ()):
                if i not in out_indices:
                    norm.requires_grad_(False)  # unused: no gradient (DDP without find_unused_parameters)
            if out_norm == "ln":
                raise ValueError(f"out_norm='ln': the official dense {model_name} has its own output norms (or "
                                 "none); leave out_norm at 'auto'")
            out_norm = "none"
        elif out_norm == "auto":
            out_norm = "ln" if family in self._ln_families else "none"
        if family in self._own_norm_families and out_norm == "ln":
            out_norm = "none"  # the model's own per-output norms already apply
        self.out_norm = out_norm
        if out_norm == "ln":
            for i, c in zip(out_indices, self.channels):
                self.add_module(f"norm{i}", LayerNorm2d(c, eps=1e-5))
        if pad_multiple is None and family in self._pad_families and not self.dense:
            pad_multiple = max(self.reductions)
        if pad_multiple is not None and pad_multiple < 1:
            raise ValueError(f"pad_multiple must be >= 1 or None, got {pad_multiple}")
        self.pad_multiple = pad_multiple
        self.fixed_size = None
        if family in self._fixed_size_families and not self.dense:
            self.fixed_size = tuple(timm.layers.to_2tuple(kwargs.get("img_size", 224)))
        self._freeze_stages()
        self.register_load_state_dict_pre_hook(_map_backbone_keys_on_load)

    # ----------------------------------------------------------------------------------------------------------
    def _stage_param_names(self, n_stages: int) -> list[set[str]]:
        """[stem, stage 0, ..., stage n-1] parameter-name sets from the model's coarse group matcher."""
        try:
            groups = group_parameters(self.model, self.model.group_matcher(coarse=True))
        except (ValueError, TypeError):  # a matcher timm cannot order: fall back to the feature_info modules
            groups = None
        if groups is not None:
            out = [set(groups[g]) for g in sorted(groups)[: n_stages + 1]]
            return out + [set()] * (n_stages + 1 - len(out))
        prefixes = [f["module"] + "." for f in self.model.feature_info]
        out = [set() for _ in range(n_stages + 1)]
        for name, _ in self.model.named_parameters():
            idx = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
            if idx is not None:
                out[idx + 1].add(name)
            elif not name.startswith(("head", "norm.", "fc_norm")):
                out[0].add(name)
        return out

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = set().union(*self._stage_params[: self.frozen_stages + 1])
        params = dict(self.model.named_parameters())
        for name in frozen:
            if name in params:
                params[name].requires_grad = False
        for name, m in self.model.named_modules():
            names = [f"{name}.{n}" if name else n for n, _ in m.named_parameters()]
            if names and all(n in frozen for n in names):
                m.eval()
        for i in range(self.frozen_stages):
            norm = getattr(self, f"norm{i}", None)
            if norm is not None:
                norm.eval()
                norm.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self._freeze_stages()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    # ----------------------------------------------------------------------------------------------------------
    def init_weights(self):
        cfg = self._init_cfg_pretrained
        if cfg is None:
            return
        if cfg.get("type") != "Pretrained":
            raise ValueError(f"init_cfg must be dict(type='Pretrained', checkpoint=PATH or None), got {cfg}")
        if not cfg.get("checkpoint"):  # configs ship checkpoint=None: random init until a path is given
            return
        self.load_checkpoint(cfg["checkpoint"], prefix=cfg.get("prefix"))

    def load_checkpoint(self, path: str, prefix: str | None = None) -> tuple[list[str], list[str]]:
        """Load our or an official checkpoint (weights_only) through the family's filter; returns the keys
        (missing, unexpected) that were allowed to differ.

        As ``timm.create_model(pretrained=True)``: every backbone tensor must come from the file with its shape.
        Allowed: the classifier and final norm, and the stages beyond `out_indices` (the backbone dropped them),
        and missing per-output norms (a classification file has none: they keep their init). Anything else
        raises RuntimeError naming the keys (e.g. another architecture's file).
        """
        with mm_checkpoint_globals():
            sd = unwrap_state_dict(load_state_dict_file(path))
        if prefix:
            sd = strip_prefix({k: v for k, v in sd.items() if k.startswith(prefix)}, prefix)
        if self.dense:
            return self._load_dense(sd, path)
        # `unwrap_state_dict` already dropped mmdet's `backbone.`; this wrapper's own files nest the model in `model.`
        sd = strip_prefix(sd, "model.")
        own = {}
        if self.out_norm == "ln":
            own = {k: sd.pop(k) for k in list(sd) if k.split(".", 1)[0] in {f"norm{i}" for i in self.out_indices}}
        # Checkpoints saved from this wrapper carry `model.` (stripped above) -- official ones go through the filter.
        filt = _filter_fn(self.model)
        if filt is not None:
            sd = filt(sd, self.model)
        model_sd = self.model.state_dict()
        sd = {k: _resize_rel_table(k, v, model_sd[k]) if k in model_sd else v for k, v in sd.items()}
        wrong_shape = [f"{k} {tuple(v.shape)} (backbone {tuple(model_sd[k].shape)})" for k, v in sd.items()
                       if k in model_sd and model_sd[k].shape != v.shape]
        if wrong_shape:
            raise RuntimeError(f"{type(self).__name__}: checkpoint {path} does not match {self.model_name}: "
                               f"{len(wrong_shape)} tensors of another shape, e.g. {wrong_shape[:5]}")
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        unexpected = [k for k in unexpected if k not in self._unpruned_keys
                      and not any(k.startswith(c + ".") for c in self._classifier)]
        missing = [k for k in missing if not k.startswith("out_norms.")]
        if missing or unexpected:
            n = len(model_sd)
            raise RuntimeError(
                f"{type(self).__name__}: checkpoint {path} does not match {self.model_name}: {len(missing)} of "
                f"{n} backbone tensors missing (e.g. {missing[:5]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:5]}); pass the checkpoint of this architecture")
        if own:
            unexpected = list(nn.Module.load_state_dict(self, own, strict=False).unexpected_keys)
            if unexpected:
                raise RuntimeError(f"{type(self).__name__}: checkpoint {path} has output norms this backbone "
                                   f"lacks: {unexpected[:5]}")
        missing = [k for k in self.state_dict() if k.split(".", 1)[0].startswith("norm") and k not in own]
        print_log(f"{type(self).__name__}: loaded {path} ({len(model_sd)} backbone tensors); output norms kept "
                  f"at their init: {missing[:8]}", logger="current")
        return missing, []

    def map_state_dict(self, sd: dict) -> dict:
        """Backbone keys of a checkpoint (without `backbone.`) -> this module's: ours (`model.*`, `norm{i}`) as they
        are, official ones through the family's filter."""
        if sd and all(k.startswith("model.") or (k.startswith("norm") and k.split(".", 1)[0][4:].isdigit()
                                                 and not self.dense) for k in sd):
            return dict(sd)
        if self.dense:
            return {f"model.{k}": v for k, v in filter_for(self.model)(strip_prefix(sd, "model."),
                                                                      self.model).items()}
        own = {k: sd[k] for k in list(sd) if k.split(".", 1)[0][:4] == "norm" and k.split(".", 1)[0][4:].isdigit()
               and self.out_norm == "ln"}
        rest = {k: v for k, v in sd.items() if k not in own}
        filt = _filter_fn(self.model)
        rest = filt(rest, self.model) if filt is not None else rest
        model_sd = self.model.state_dict()
        rest = {k: _resize_rel_table(k, v, model_sd[k]) if k in model_sd else v for k, v in rest.items()}
        return {**{f"model.{k}": v for k, v in rest.items()}, **own}

    def _load_dense(self, sd: dict, path: str) -> tuple[list[str], list[str]]:
        sd = filter_for(self.model)(strip_prefix(sd, "model."), self.model)
        missing, _ = load_filtered(self.model, sd, str(path), optional=("out_norms.",))
        print_log(f"{type(self).__name__}: loaded {path} into the official dense {self.model_name}; output norms "
                  f"kept at their init: {missing[:8]}", logger="current")
        return missing, []

    # ----------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.dense:
            outs = self.model(x)
            if len(outs) == len(self.out_indices):
                return tuple(outs)
            return tuple(outs[i] for i in self.out_indices)  # Agent-PVT returns every stage, as the official
        h, w = x.shape[-2:]
        if self.fixed_size is not None:
            fh, fw = self.fixed_size
            if h > fh or w > fw:
                raise ValueError(f"input {h}x{w} is larger than the img_size {fh}x{fw} the {self.model_family} model "
                                 f"was built for (windows / position tables are tied to it); pass img_size >= the "
                                 f"largest input")
            x = F.pad(x, (0, fw - w, 0, fh - h))
        elif self.pad_multiple is not None:
            m = self.pad_multiple
            x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m))
        feats = self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        outs = []
        for i, r, y in zip(self.out_indices, self.reductions, feats):
            if y.ndim == 3:  # token outputs (B, N, C) of a plain ViT are returned as a grid
                gh, gw = math.ceil(x.shape[-2] / r), math.ceil(x.shape[-1] / r)
                y = y.transpose(1, 2).reshape(y.shape[0], -1, gh, gw)
            y = y[..., : math.ceil(h / r), : math.ceil(w / r)]
            if self.out_norm == "ln":
                y = getattr(self, f"norm{i}")(y)
            outs.append(y.contiguous())
        return tuple(outs)


def _map_backbone_keys_on_load(module: ZooBackboneMM, state_dict, prefix, local_metadata, strict, missing_keys,
                               unexpected_keys, error_msgs):
    """Whole-detector / segmentor checkpoints (mmengine `load_from`, `tools/det_test.py`): the backbone keys under
    `prefix` are mapped onto this module (official mmdet 2.x / mmseg 0.x names through the family's filter). A
    backbone key that cannot be mapped, a backbone tensor the file lacks, or a file without backbone weights is a
    RuntimeError naming them, never a silently random backbone."""
    if not prefix:
        return  # the backbone loaded on its own: its caller checks
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not keys:
        raise RuntimeError(f"{type(module).__name__} ({module.model_name}): the checkpoint has no `{prefix}*` "
                           "weights; the backbone would stay randomly initialised")
    sub = {k[len(prefix):]: state_dict.pop(k) for k in keys}
    mapped = module.map_state_dict(sub)
    check_filtered(module, mapped, f"(loaded under `{prefix}`)")
    for k, v in mapped.items():
        state_dict[prefix + k] = v


def _family_class(name: str, family, doc: str):
    return type(name, (ZooBackboneMM,), {"family": family, "__doc__": doc, "__module__": __name__})


BiFormerMM = _family_class("BiFormerMM", "biformer", "BiFormer (T/S/B/STL) as `BiFormer_mm`: out_norms outputs.")
NATMM = _family_class("NATMM", "nat", "NAT: official det/seg `NAT` maps with `norm{i}` per output.")
DiNATMM = _family_class("DiNATMM", "dinat", "DiNAT / DiNAT_s (pass the dense config's `dilations=`).")
AgentAttentionMM = _family_class("AgentAttentionMM", "agent_attention", "Agent-PVT / Agent-Swin / Agent-CSwin.")
SLABMM = _family_class("SLABMM", "slab", "SLAB / PRepBN PVT, Swin, CSwin (RepBN kept in eval with norm_eval).")
GCViTMM = _family_class("GCViTMM", "gcvit", "GC ViT (timm); built for `img_size`, smaller inputs are padded.")
SHViTMM = _family_class("SHViTMM", "shvit", "SHViT (timm): 3 maps, strides 16/32/64; pair with `EfficientViTFPN`.")
EfficientViMMM = _family_class("EfficientViMMM", "efficientvim",
                               "EfficientViM (timm): 3 maps, strides 16/32/64; pair with `EfficientViTFPN`.")

_ALL = [ZooBackboneMM, BiFormerMM, NATMM, DiNATMM, AgentAttentionMM, SLABMM, GCViTMM, SHViTMM, EfficientViMMM]
