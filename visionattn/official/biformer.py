"""Official BiFormer constructors (rayleizhu/BiFormer) -> zoo modules, for ``visionattn.from_official``.

Each adapter takes the official constructor's keyword arguments as a user of the official code passes them
(``norm_layer=nn.BatchNorm2d``, ...) and returns the equivalent zoo module; the official state dict loads
into it through ``visionattn.backbones.biformer.checkpoint_filter_fn``. Only the configuration every released
model uses is implemented (the other options are ablations of the paper): anything else is a ValueError
naming the argument.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from visionattn.backbones.biformer import BiFormer, _per_stage, checkpoint_filter_fn
from visionattn.checkpoint import load_pretrained_file
from visionattn.layers.bra import BiLevelRoutingAttention, NchwBiLevelRoutingAttention
from visionattn.mm.dense.biformer import BiFormerDense

from . import register_official

__all__: list[str] = []

_FAMILY = "biformer"


def _require(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"official argument {name}={value!r} is not supported (allowed: {allowed})")


def _checkpoint_stages(model: BiFormer, use_checkpoint_stages) -> BiFormer:
    # the official per-stage activation checkpointing
    for i in use_checkpoint_stages or ():
        model.stages[i].grad_checkpointing = True
    return model


def _biformer(
        depth=(3, 4, 8, 3), in_chans=3, num_classes=1000, embed_dim=(64, 128, 320, 512), head_dim=64, qk_scale=None,
        representation_size=None, drop_path_rate=0.0, drop_rate=0.0, use_checkpoint_stages=(), n_win=7,
        kv_downsample_mode="ada_avgpool", kv_per_wins=None, topks=(8, 8, -1, -1), side_dwconv=5,
        layer_scale_init_value=-1, qk_dims=(None, None, None, None), param_routing=False, diff_routing=False,
        soft_routing=False, pre_norm=True, pe=None, pe_stages=(0,), before_attn_dwconv=3, auto_pad=False,
        kv_downsample_kernels=None, kv_downsample_ratios=None, mlp_ratios=(4, 4, 4, 4), param_attention="qkvo",
        mlp_dwconv=False, cls: type[BiFormer] = BiFormer, **extra,
) -> BiFormer:
    _require("representation_size", representation_size, (None, 0))
    _require("kv_downsample_mode", kv_downsample_mode, ("identity",))
    _require("param_routing", param_routing, (False,))
    _require("diff_routing", diff_routing, (False,))
    _require("soft_routing", soft_routing, (False,))
    _require("pre_norm", pre_norm, (True,))
    _require("pe", pe, (None, "none"))
    _require("param_attention", param_attention, ("qkvo",))
    _require("mlp_dwconv", mlp_dwconv, (False,))
    # kv_per_wins / kv_downsample_kernels / kv_downsample_ratios / pe_stages only act with the modes refused
    # above; the official class accepts drop_rate and never uses it
    qk_dims = tuple(q or d for q, d in zip(qk_dims, embed_dim))
    model = cls(
        depths=tuple(depth), embed_dims=tuple(embed_dim), in_chans=in_chans, num_classes=num_classes,
        mlp_ratios=tuple(mlp_ratios), head_dim=head_dim, qk_dims=qk_dims, qk_scale=qk_scale, n_win=n_win,
        topks=tuple(topks), side_dwconv=side_dwconv, before_attn_dwconv=before_attn_dwconv, stem_type="overlap",
        layout="nhwc", auto_pad=auto_pad, layer_scale_init_value=layer_scale_init_value,
        drop_path_rate=drop_path_rate, **extra,
    )
    return _checkpoint_stages(model, use_checkpoint_stages)


@register_official(_FAMILY, "models/biformer.py:BiFormer", checkpoint_filter_fn)
def _biformer_cls(**kwargs) -> BiFormer:
    return _biformer(**kwargs)


def _stl(
        layout: str, in_chans=3, num_classes=1000, depth=(2, 2, 6, 2), embed_dim=(96, 192, 384, 768), head_dim=32,
        qk_scale=None, drop_path_rate=0.0, drop_rate=0.0, use_checkpoint_stages=(), mlp_ratios=(4, 4, 4, 4),
        norm_layer: Callable[[int], nn.Module] | None = None,
        pre_head_norm_layer: Callable[[int], nn.Module] | None = None,
        n_wins=(7, 7, 7, 7), topks=(1, 4, 16, -2), side_dwconv=5,
) -> BiFormer:
    # The official STL blocks ignore qk_scale (BasicLayer does not forward it) and use qk_dim = dim; the
    # default norm_layer is timm's LayerNorm2d (eps 1e-6); the final norm is pre_head_norm_layer or norm_layer;
    # drop_rate is accepted and unused, as there.
    norm = norm_layer if norm_layer is not None else "layernorm2d"
    model = BiFormer(
        depths=tuple(depth), embed_dims=tuple(embed_dim), in_chans=in_chans, num_classes=num_classes,
        mlp_ratios=tuple(mlp_ratios), head_dim=head_dim, n_win=_per_stage(n_wins, "n_wins"),
        topks=_per_stage(topks, "topks"), side_dwconv=side_dwconv, before_attn_dwconv=0, stem_type="patch",
        layout=layout, norm_layer=norm, final_norm_layer=pre_head_norm_layer, auto_pad=False,
        drop_path_rate=drop_path_rate,
    )
    return _checkpoint_stages(model, use_checkpoint_stages)


@register_official(_FAMILY, "models/biformer_stl.py:BiFormerSTL", checkpoint_filter_fn)
def _biformer_stl_cls(**kwargs) -> BiFormer:
    return _stl("nhwc", **kwargs)


@register_official(_FAMILY, "models/biformer_stl_nchw.py:nchwBiFormerSTL", checkpoint_filter_fn)
def _biformer_stl_nchw_cls(**kwargs) -> BiFormer:
    return _stl("nchw", **kwargs)


def _mm(pretrained: str | None = None, norm_eval: bool = False, disable_bn_grad: bool = False,
        num_classes: int = 1000, **kwargs) -> BiFormerDense:
    """BiFormer_mm: `num_classes` only sizes the head it deletes; `pretrained` is a checkpoint path, loaded
    through the filter and refused (RuntimeError) when its keys do not match the backbone."""
    model = _biformer(cls=BiFormerDense, norm_eval=norm_eval, frozen_bn=disable_bn_grad, **kwargs)
    if pretrained is not None:
        load_pretrained_file(model, pretrained, checkpoint_filter_fn, strict=True)
    return model


@register_official(_FAMILY, "semantic_segmentation/models_mm/biformer_mm.py:BiFormer_mm", checkpoint_filter_fn)
def _biformer_mm_seg(**kwargs) -> BiFormerDense:
    return _mm(**kwargs)


@register_official(_FAMILY, "object_detection/models_mm/biformer_mm.py:BiFormer_mm", checkpoint_filter_fn)
def _biformer_mm_det(norm_eval: bool = True, **kwargs) -> BiFormerDense:
    return _mm(norm_eval=norm_eval, **kwargs)


def _registered_function(name: str, auto_pad: bool | None) -> Callable[..., BiFormer]:
    """The official registered functions (`biformer_tiny(pretrained=False, ...)`): their classification models
    keep auto_pad False (sizes must divide); `pretrained=True` loads the official weights, as there."""

    def build(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, drop_rate=0.0,
              **kwargs) -> BiFormer:
        import timm

        # the official classes accept drop_rate and never use it (ours would drop out before the head)
        if auto_pad is not None:
            kwargs.setdefault("auto_pad", auto_pad)
        return timm.create_model(name, pretrained=pretrained, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)

    build.__name__ = f"official_{name}"
    return build


for _builder, _name, _pad in (
    ("models/biformer.py:biformer_tiny", "biformer_t", False),
    ("models/biformer.py:biformer_small", "biformer_s", False),
    ("models/biformer.py:biformer_base", "biformer_b", False),
    ("models/biformer_stl.py:biformer_stl", "biformer_stl", False),
    ("models/biformer_stl_nchw.py:biformer_stl_nchw", "biformer_stl_nchw", None),
):
    register_official(_FAMILY, _builder, checkpoint_filter_fn)(_registered_function(_name, _pad))


@register_official(_FAMILY, "ops/bra_legacy.py:BiLevelRoutingAttention")
def _bra_legacy(**kwargs) -> BiLevelRoutingAttention:
    return BiLevelRoutingAttention(**kwargs)


@register_official(_FAMILY, "ops/bra_nchw.py:nchwBRA")
def _bra_nchw(**kwargs) -> NchwBiLevelRoutingAttention:
    return NchwBiLevelRoutingAttention(**kwargs)
