"""Official Agent-Attention constructors -> zoo models (`visionattn.from_official('agent_attention', ...)`).

Each adapter takes exactly the keyword arguments of the official class or builder function in
`LeapLabTHU/Agent-Attention` (`agent_transformer/models/*.py`), with the official defaults for the ones not
passed, and builds the equivalent zoo model (same function; official state dicts load through
`visionattn.backbones.agent.checkpoint_filter_fn`). Arguments that change nothing in any released model and
that the zoo does not implement (`representation_size`, `distilled`, `ape`, ...) must keep their defaults; any
other value raises ValueError. The builder functions (`agent_pvt_tiny(pretrained=...)`, ...) map to the
registered zoo entrypoints, so `pretrained=True` loads the release checkpoint named in the zoo's cfg.
"""
from __future__ import annotations

import functools

from torch import nn

from visionattn.backbones import agent as A
from visionattn.official import register_official
from visionattn.official._common import (
    checkpointed,
    expect,
    fixed_builder,
    layer_norm_eps,
    no_extra,
    official_drop_rate,
    pop_vit_defaults,
)

_ROOT = "agent_transformer/models/"
_FAMILY = "agent_attention"


def _register(builder: str):
    return register_official(_FAMILY, _ROOT + builder, A.checkpoint_filter_fn)


# ---------------------------------------------------------------------------------------------- DeiT


_DEIT_ARGS = {"img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads", "mlp_ratio",
              "qkv_bias", "drop_rate", "attn_drop_rate", "drop_path_rate", "agent_num", "agent_layer", "norm_layer"}


def _deit_kwargs(kw: dict, builder: str) -> dict:
    """Official VisionTransformer arguments -> AgentVisionTransformer arguments (same defaults)."""
    kw = dict(kw)
    pop_vit_defaults(kw)
    norm = kw.pop("norm_layer", None)
    if norm is not None:
        layer_norm_eps(norm)
        kw["norm_layer"] = norm
    no_extra(builder, kw, _DEIT_ARGS)
    return official_drop_rate(kw)


@_register("agent_deit.py:VisionTransformer")
def vision_transformer(**kwargs) -> A.AgentVisionTransformer:
    return A.AgentVisionTransformer(**_deit_kwargs(kwargs, "VisionTransformer"))


def _deit_builder(entry, builder: str, fixed: tuple = ("patch_size", "embed_dim", "depth", "num_heads")):
    def make(pretrained: bool, kwargs: dict) -> A.AgentVisionTransformer:
        return entry(pretrained=pretrained, **_deit_kwargs(kwargs, builder))
    return _register(f"agent_deit.py:{builder}")(fixed_builder(builder, fixed, "VisionTransformer", make))


agent_deit_tiny = _deit_builder(A.agent_deit_t, "agent_deit_tiny")
agent_deit_small = _deit_builder(A.agent_deit_s, "agent_deit_small")
agent_deit_base = _deit_builder(A.agent_deit_b, "agent_deit_base",
                                ("patch_size", "embed_dim", "depth", "num_heads", "agent_layer"))


# ---------------------------------------------------------------------------------------------- PVT

_PVT_CLASS_DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dims=(64, 128, 256, 512),
                           num_heads=(1, 2, 4, 8), mlp_ratios=(4, 4, 4, 4), qkv_bias=False, drop_rate=0.0,
                           attn_drop_rate=0.0, drop_path_rate=0.0, norm_layer=nn.LayerNorm, depths=(3, 4, 6, 3),
                           sr_ratios=(8, 4, 2, 1), agent_sr_ratios="1111", agent_num=(9, 16, 49, 49),
                           attn_type="AAAA")


def _pvt_kwargs(kw: dict, defaults: dict, builder: str) -> dict:
    kw = {**defaults, **kw}
    expect("qk_scale", kw.pop("qk_scale", None), (None,))
    expect("num_stages", kw.pop("num_stages", 4), (4,))
    if kw.get("attn_type") is None:
        kw["attn_type"] = "AAAA"  # the official class treats None as 'AAAA'
    layer_norm_eps(kw["norm_layer"])
    no_extra(builder, kw, _PVT_CLASS_DEFAULTS)
    return official_drop_rate(kw)


@_register("agent_pvt.py:PyramidVisionTransformer")
def pyramid_vision_transformer(**kwargs) -> A.AgentPyramidVisionTransformer:
    return A.AgentPyramidVisionTransformer(**_pvt_kwargs(kwargs, _PVT_CLASS_DEFAULTS, "PyramidVisionTransformer"))


def _pvt_builder(entry, builder: str, depths: tuple):
    # what the official builder fixes (it passes LayerNorm(eps=1e-6), the zoo entrypoints' default too)
    fixed = dict(patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4),
                 qkv_bias=True, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6), depths=depths,
                 sr_ratios=(8, 4, 2, 1))

    def make(pretrained: bool, kwargs: dict) -> A.AgentPyramidVisionTransformer:
        return entry(pretrained=pretrained, **_pvt_kwargs({**fixed, **kwargs}, _PVT_CLASS_DEFAULTS, builder))
    return _register(f"agent_pvt.py:{builder}")(fixed_builder(builder, fixed, "PyramidVisionTransformer", make))


agent_pvt_tiny = _pvt_builder(A.agent_pvt_t, "agent_pvt_tiny", (2, 2, 2, 2))
agent_pvt_small = _pvt_builder(A.agent_pvt_s, "agent_pvt_small", (3, 4, 6, 3))
agent_pvt_medium = _pvt_builder(A.agent_pvt_m, "agent_pvt_medium", (3, 4, 18, 3))
agent_pvt_large = _pvt_builder(A.agent_pvt_l, "agent_pvt_large", (3, 8, 27, 3))


# ---------------------------------------------------------------------------------------------- Swin


@_register("agent_swin.py:AgentSwinTransformer")
def agent_swin_transformer(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96,
                           depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0,
                           qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1,
                           norm_layer=nn.LayerNorm, ape=False, patch_norm=True, use_checkpoint=False,
                           agent_num=(9, 16, 49, 49), attn_type="BBBB", **kwargs) -> A.AgentSwinTransformer:
    """`window_size` is the official WINDOW_SIZE: agent blocks use it (clipped to the stage grid, so they are
    global in every released config) and the softmax window blocks max(7, window_size // 8)."""
    expect("ape", ape, (False,))
    expect("patch_norm", patch_norm, (True,))
    expect("qk_scale", qk_scale, (None,))
    no_extra("AgentSwinTransformer", kwargs, ())
    layer_norm_eps(norm_layer)
    grid = img_size // patch_size
    if window_size < grid and any(ch in "AM" for ch in str(attn_type)[:4]):
        raise ValueError(f"window_size={window_size} below the stage-1 grid {grid}: windowed agent attention is not "
                         "supported (every official config makes agent blocks global)")
    return checkpointed(A.AgentSwinTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
        depths=depths, num_heads=num_heads, window_size=max(7, window_size // 8), mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias, pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate, agent_num=agent_num, attn_type=attn_type, norm_layer=norm_layer,
    ), use_checkpoint)


# ---------------------------------------------------------------------------------------------- CSWin

_CSWIN_CLASS_DEFAULTS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=96,
                             depth=(2, 2, 6, 2), split_size=(1, 2, 7, 7), la_split_size="1-2-7-7",
                             num_heads=(2, 4, 8, 16), mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                             attn_drop_rate=0.0, drop_path_rate=0.0, hybrid_backbone=None, norm_layer=nn.LayerNorm,
                             use_chk=False, agent_num=49, attn_type="AAAA")


def _cswin_kwargs(kw: dict, builder: str) -> tuple[dict, bool]:
    """Official CSWinTransformer arguments -> (AgentCSWinTransformer arguments, use_chk)."""
    kw = {**_CSWIN_CLASS_DEFAULTS, **kw}
    no_extra(builder, kw, _CSWIN_CLASS_DEFAULTS)
    expect("patch_size", kw.pop("patch_size"), (4,))  # the stem is a fixed stride-4 conv whatever it says
    expect("hybrid_backbone", kw.pop("hybrid_backbone"), (None,))
    if kw.pop("norm_layer") is not nn.LayerNorm:
        raise ValueError("norm_layer must be nn.LayerNorm (the official stem and merges ignore it)")
    use_chk = bool(kw.pop("use_chk"))
    return official_drop_rate(kw, pos_drop=False), use_chk


@_register("agent_cswin.py:CSWinTransformer")
def cswin_transformer(**kwargs) -> A.AgentCSWinTransformer:
    kw, use_chk = _cswin_kwargs(kwargs, "CSWinTransformer")
    return checkpointed(A.AgentCSWinTransformer(**kw), use_chk)


def _cswin_builder(entry, builder: str, fixed: dict):
    def make(pretrained: bool, kwargs: dict) -> A.AgentCSWinTransformer:
        kw, use_chk = _cswin_kwargs({**fixed, **kwargs}, builder)
        return checkpointed(entry(pretrained=pretrained, **kw), use_chk)
    return _register(f"agent_cswin.py:{builder}")(fixed_builder(builder, fixed, "CSWinTransformer", make))


_CSWIN_T = dict(patch_size=4, embed_dim=64, depth=(2, 4, 18, 1), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16))
_CSWIN_S = dict(patch_size=4, embed_dim=64, depth=(3, 6, 29, 2), split_size=(1, 2, 7, 7), num_heads=(2, 4, 8, 16))
_CSWIN_B = dict(patch_size=4, embed_dim=96, depth=(3, 6, 29, 2), split_size=(1, 2, 7, 7), num_heads=(4, 8, 16, 32))
Agent_CSWin_64_24181_tiny_224 = _cswin_builder(A.agent_cswin_t, "Agent_CSWin_64_24181_tiny_224", _CSWIN_T)
Agent_CSWin_64_36292_small_224 = _cswin_builder(A.agent_cswin_s, "Agent_CSWin_64_36292_small_224", _CSWIN_S)
Agent_CSWin_96_36292_base_224 = _cswin_builder(A.agent_cswin_b, "Agent_CSWin_96_36292_base_224", _CSWIN_B)
Agent_CSWin_96_36292_base_384 = _cswin_builder(A.agent_cswin_b_384, "Agent_CSWin_96_36292_base_384",
                                               dict(_CSWIN_B, split_size=(1, 2, 12, 12)))
