"""Official SLAB constructors -> zoo models (`visionattn.from_official('slab', ...)`).

Each adapter takes exactly the keyword arguments of the official class or builder function in
`xinghaochen/SLAB` (`classification/models/*.py`), with the official defaults for the ones not passed, and
builds the equivalent zoo model (official state dicts load through `visionattn.backbones.slab.checkpoint_filter_fn`).
Norm layers are the objects the official constructors take, built from this package's equivalents of the
official classes: `RepBN`, `partial(LinearNorm, norm1=..., norm2=RepBN, step=...)` (`visionattn.layers.prepbn`),
`nn.LayerNorm` / `partial(nn.LayerNorm, eps=...)`. `focusing_factor` is accepted and ignored (the official SLA
ignores it too). Arguments the zoo does not implement must keep their defaults, else ValueError. Builder
functions map to the registered zoo entrypoints (`pretrained=True` loads the SLAB release named in the cfg).
"""
from __future__ import annotations

import functools

from torch import nn

from visionattn.backbones import slab as S
from visionattn.layers.prepbn import LinearNorm, RepBN, linear_norm
from visionattn.official import register_official
from visionattn.official._common import (
    checkpointed,
    expect,
    fixed_builder,
    is_layer_norm,
    no_extra,
    official_drop_rate,
    pop_vit_defaults,
)

_ROOT = "classification/models/"
_FAMILY = "slab"


def _check_norm(norm):
    """The official norm objects: LayerNorm (partial), RepBN, or partial(LinearNorm, norm1=LN, norm2=RepBN, ...)."""
    if is_layer_norm(norm) or norm is RepBN:
        return norm
    if isinstance(norm, functools.partial) and norm.func is LinearNorm and not norm.args:
        kw = norm.keywords
        if (set(kw) <= {"norm1", "norm2", "warm", "step", "r0"} and is_layer_norm(kw.get("norm1", nn.LayerNorm))
                and kw.get("norm2", RepBN) is RepBN):
            return norm
    raise ValueError("norm_layer must be nn.LayerNorm / partial(nn.LayerNorm, eps=...), RepBN or "
                     f"partial(LinearNorm, norm1=<LayerNorm>, norm2=RepBN, step=...), got {norm!r}")


def _register(builder: str):
    return register_official(_FAMILY, _ROOT + builder, S.checkpoint_filter_fn)


# ---------------------------------------------------------------------------------------------- DeiT

_VIT_ARGS = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
             "qkv_bias", "representation_size", "distilled", "drop_rate", "attn_drop_rate", "drop_path_rate",
             "embed_layer", "norm_layer", "act_layer", "weight_init"}


def _vit(kw: dict, linear: bool, builder: str) -> S.SlabVisionTransformer:
    no_extra(builder, kw, _VIT_ARGS)
    kw = dict(kw)
    pop_vit_defaults(kw)
    norm = kw.pop("norm_layer", None)
    # the official `norm_layer or LayerNorm(eps=1e-6)`
    norm = _check_norm(norm) if norm is not None else functools.partial(nn.LayerNorm, eps=1e-6)
    return S.SlabVisionTransformer(linear_attn=linear, norm_layer=norm,
                                   **{"embed_dim": 768, "depth": 12, "num_heads": 12, **official_drop_rate(kw)})


@_register("deit.py:VisionTransformer")
def deit_vision_transformer(**kwargs) -> S.SlabVisionTransformer:
    """The softmax DeiT of the PRepBN baselines."""
    return _vit(kwargs, False, "deit.py:VisionTransformer")


@_register("slab_deit.py:VisionTransformer")
def slab_vision_transformer(**kwargs) -> S.SlabVisionTransformer:
    """SLAB-DeiT: SLA in every block, no class token in the forward."""
    return _vit(kwargs, True, "slab_deit.py:VisionTransformer")


def _entry(builder: str, entry, fixed: tuple = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
                                                 "qkv_bias", "norm_layer")):
    def make(pretrained: bool, kwargs: dict) -> S.SlabVisionTransformer:
        no_extra(builder, kwargs, {"img_size", "in_chans", "num_classes", "drop_rate", "attn_drop_rate",
                                   "drop_path_rate"})
        return entry(pretrained=pretrained, **official_drop_rate(dict(kwargs)))
    return _register(builder)(fixed_builder(builder, fixed, "the model class", make))


deit_tiny_patch16_224_repbn = _entry("deit.py:deit_tiny_patch16_224_repbn", S.deit_t_prepbn)
deit_small_patch16_224_repbn = _entry("deit.py:deit_small_patch16_224_repbn", S.deit_s_prepbn)
deit_tiny_patch16_224_linear_repbn = _entry("slab_deit.py:deit_tiny_patch16_224_linear_repbn", S.slab_deit_t)
deit_small_patch16_224_linear_repbn = _entry("slab_deit.py:deit_small_patch16_224_linear_repbn", S.slab_deit_s)


# ---------------------------------------------------------------------------------------------- PVT

_PVT_DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dims=(64, 128, 256, 512),
                     num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4), qkv_bias=False, qk_scale=None, drop_rate=0.0,
                     attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm, depths=(3, 4, 6, 3),
                     sr_ratios=(8, 4, 2, 1), la_sr_ratios="8421", num_stages=4, focusing_factor=3, kernel_size=5,
                     attn_type="LLLL")


def _pvt_kwargs(kw: dict, builder: str) -> dict:
    no_extra(builder, kw, _PVT_DEFAULTS)
    kw = {**_PVT_DEFAULTS, **kw}
    kw.pop("focusing_factor")
    expect("qk_scale", kw.pop("qk_scale"), (None,))
    expect("num_stages", kw.pop("num_stages"), (4,))
    attn_type = kw["attn_type"] = kw["attn_type"] or "LLLL"  # the official class treats None as 'LLLL'
    la = str(kw.pop("la_sr_ratios"))
    for i, c in enumerate(attn_type):
        if c == "L" and int(la[i]) != 1:
            raise ValueError(f"la_sr_ratios must be 1 on 'L' stages (SLA with spatial reduction is not supported), "
                             f"got {la!r} for attn_type {attn_type!r}")
    kw["norm_layer"] = _check_norm(kw["norm_layer"])
    return official_drop_rate(kw)


@_register("slab_pvt.py:PyramidVisionTransformer")
def pyramid_vision_transformer(**kwargs) -> S.SlabPyramidVisionTransformer:
    return S.SlabPyramidVisionTransformer(**_pvt_kwargs(kwargs, "PyramidVisionTransformer"))


def _pvt_entry(builder: str, slab_entry, prepbn_entry, depths):
    fixed = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                 qkv_bias=True, norm_layer=linear_norm(300000, 1e-6), depths=depths, sr_ratios=(8, 4, 2, 1))

    def make(pretrained: bool, kwargs: dict) -> S.SlabPyramidVisionTransformer:
        kw = _pvt_kwargs({**fixed, **kwargs}, builder)
        entry = {"LLLL": slab_entry, "SSSS": prepbn_entry}.get(kw["attn_type"], slab_entry)
        return entry(pretrained=pretrained, **kw)
    return _register(f"slab_pvt.py:{builder}")(fixed_builder(builder, fixed, "PyramidVisionTransformer", make))


slab_pvt_tiny = _pvt_entry("slab_pvt_tiny", S.slab_pvt_t, S.pvt_t_prepbn, (2, 2, 2, 2))
slab_pvt_small = _pvt_entry("slab_pvt_small", S.slab_pvt_s, S.pvt_s_prepbn, (3, 4, 6, 3))
slab_pvt_medium = _pvt_entry("slab_pvt_medium", S.slab_pvt_m, S.pvt_m_prepbn, (3, 4, 18, 3))


# ---------------------------------------------------------------------------------------------- Swin


def _swin(builder: str, default_norm, default_attn: str | None, img_size=224, patch_size=4, in_chans=3,
          num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
          mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
          norm_layer=None, ape=False, patch_norm=True, use_checkpoint=False, focusing_factor=3, kernel_size=5,
          attn_type=None, fused_window_process=False, **kwargs) -> S.SlabSwinTransformer:
    no_extra(builder, kwargs, ())
    expect("qk_scale", qk_scale, (None,))
    expect("ape", ape, (False,))
    expect("patch_norm", patch_norm, (True,))
    softmax_window = None
    if default_attn is None:  # the plain Swin: softmax windows of window_size everywhere, no SLA arguments
        attn_type, softmax_window = "S" * len(depths), window_size
    else:
        attn_type = attn_type or default_attn
    return checkpointed(S.SlabSwinTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
        depths=depths, num_heads=num_heads, window_size=window_size, attn_type=attn_type, mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate, norm_layer=_check_norm(norm_layer if norm_layer is not None else default_norm),
        kernel_size=kernel_size, softmax_window_size=softmax_window,
    ), use_checkpoint)


@_register("slab_swin.py:SlabSwinTransformer")
def slab_swin_transformer(**kwargs) -> S.SlabSwinTransformer:
    """`window_size` is the SLA window (clipped to the stage map); softmax stages use 7 (12 above 56)."""
    if "fused_window_process" in kwargs:
        raise ValueError("SlabSwinTransformer: unsupported argument(s) ['fused_window_process']")
    return _swin("SlabSwinTransformer", linear_norm(60000, 1e-5), "LLLL", **kwargs)


@_register("swin_transformer.py:SwinTransformer")
def swin_transformer(**kwargs) -> S.SlabSwinTransformer:
    """The Swin-PRepBN baseline (plain RepBN norms by default); `fused_window_process` changes nothing here."""
    for k in ("focusing_factor", "kernel_size", "attn_type"):
        if k in kwargs:
            raise ValueError(f"SwinTransformer: unsupported argument(s) [{k!r}]")
    return _swin("SwinTransformer", RepBN, None, **kwargs)


# ---------------------------------------------------------------------------------------------- CSWin

_CSWIN_DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=96, depth=(2, 2, 6, 2),
                       split_size=(1, 2, 7, 7), la_split_size="1-2-7-7", num_heads=(2, 4, 8, 16), mlp_ratio=4.0,
                       qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                       hybrid_backbone=None, norm_layer=linear_norm(120000, 1e-5), use_chk=False, focusing_factor=3,
                       kernel_size=5, attn_type="LLLL")


def _cswin_kwargs(kw: dict, builder: str) -> tuple[dict, bool]:
    no_extra(builder, kw, _CSWIN_DEFAULTS)
    kw = {**_CSWIN_DEFAULTS, **kw}
    kw.pop("focusing_factor")
    kw.pop("patch_size")  # the stem is a fixed stride-4 conv whatever it says
    expect("hybrid_backbone", kw.pop("hybrid_backbone"), (None,))
    kw["norm_layer"] = _check_norm(kw["norm_layer"])
    use_chk = bool(kw.pop("use_chk"))
    return official_drop_rate(kw, pos_drop=False), use_chk


@_register("slab_cswin.py:CSWinTransformer")
def cswin_transformer(**kwargs) -> S.SlabCSWinTransformer:
    kw, use_chk = _cswin_kwargs(kwargs, "CSWinTransformer")
    return checkpointed(S.SlabCSWinTransformer(**kw), use_chk)


def _cswin_entry(builder: str, entry, fixed: dict):
    def make(pretrained: bool, kwargs: dict) -> S.SlabCSWinTransformer:
        kw, use_chk = _cswin_kwargs({**fixed, **kwargs}, builder)
        return checkpointed(entry(pretrained=pretrained, **kw), use_chk)
    return _register(f"slab_cswin.py:{builder}")(fixed_builder(builder, fixed, "CSWinTransformer", make))


SLAB_CSWin_64_24181_tiny_224 = _cswin_entry("SLAB_CSWin_64_24181_tiny_224", S.slab_cswin_t, dict(
    patch_size=4, embed_dim=64, depth=(2, 4, 18, 1), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16)))
SLAB_CSWin_64_24322_small_224 = _cswin_entry("SLAB_CSWin_64_24322_small_224", S.slab_cswin_s, dict(
    patch_size=4, embed_dim=64, depth=(2, 4, 32, 2), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16)))
