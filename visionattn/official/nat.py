"""Official NAT / DiNAT constructors (SHI-Labs/Neighborhood-Attention-Transformer, NATTEN <= 0.15) -> zoo modules.

The adapters take the official constructors' keyword arguments as objects (``norm_layer=nn.LayerNorm``,
``layer=NATransformerLayer``) and return the equivalent zoo module; the official state dicts load into it through
``visionattn.backbones.nat.checkpoint_filter_fn``. ``NATransformerLayer`` and ``VisionTransformerLayer`` are the
two layer classes the official isotropic constructor takes (``classification/dinats.py`` /
``classification/isotropic.py``), with the official signatures; each is also a usable block.
NATTEN's module (``src/natten/natten2d.py:NeighborhoodAttention2D``, the module-only fixtures) is registered for
both families.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from visionattn.backbones.nat import (
    NAT,
    DiNATs,
    NATBlock,
    NATIsotropic,
    ViTRPBBlock,
    checkpoint_filter_fn,
)
from visionattn.layers.na import NeighborhoodAttention2D
from visionattn.mm.dense.nat import DiNATsDense, NATDense

from . import register_official

__all__ = ["NATransformerLayer", "VisionTransformerLayer"]


class NATransformerLayer(NATBlock):
    """Official ``dinats.NATransformerLayer``: a pre-norm (dilated) NA block without layer scale, NHWC."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int | None = 1,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, **kwargs):
        if act_layer is not nn.GELU:
            raise ValueError(f"act_layer must be nn.GELU (every official config), got {act_layer!r}")
        # kwargs: what the isotropic constructor passes to every layer class and this one ignores (input_size)
        super().__init__(dim, num_heads, kernel_size=kernel_size, dilation=dilation or 1, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, qk_scale=qk_scale, proj_drop=drop, attn_drop=attn_drop,
                         drop_path=drop_path, norm_layer=norm_layer)


class VisionTransformerLayer(ViTRPBBlock):
    """Official ``isotropic.VisionTransformerLayer``: pre-norm global attention with a relative positional bias
    table for an ``input_size`` x ``input_size`` token grid (ViT-RPB), NHWC."""

    def __init__(self, dim: int, input_size: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 **kwargs):
        if act_layer is not nn.GELU:
            raise ValueError(f"act_layer must be nn.GELU (every official config), got {act_layer!r}")
        # kwargs: kernel_size / dilation, passed by the isotropic constructor to every layer class
        super().__init__(dim, num_heads, input_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         proj_drop=drop, attn_drop=attn_drop, drop_path=drop_path, norm_layer=norm_layer)


def _common(kwargs: dict) -> dict:
    # the dense constructors' pretrain_img_size sizes nothing; drop_path_rate=None means the default
    kwargs.pop("pretrain_img_size", None)
    if kwargs.get("drop_path_rate", 0.0) is None:
        kwargs.pop("drop_path_rate")
    return kwargs


def _nat(**kwargs) -> NAT:
    return NAT(**_common(kwargs))


def _dinats(**kwargs) -> DiNATs:
    return DiNATs(**_common(kwargs))


def _nat_dense(**kwargs) -> NATDense:
    return NATDense(**_common(kwargs))


def _dinats_dense(**kwargs) -> DiNATsDense:
    return DiNATsDense(**_common(kwargs))


def _isotropic(layer: type[nn.Module] = NATransformerLayer, **kwargs) -> NATIsotropic:
    kwargs = _common(kwargs)
    if isinstance(layer, type) and issubclass(layer, VisionTransformerLayer):
        kwargs.update(block_type="mhsa_rpb")
        kwargs.pop("kernel_size", None)
        kwargs.pop("dilation", None)
    elif isinstance(layer, type) and issubclass(layer, NATransformerLayer):
        kwargs.update(block_type="na")
    else:
        raise ValueError("layer must be visionattn.official.nat.NATransformerLayer or VisionTransformerLayer (the "
                         f"official isotropic layer classes), got {layer!r}")
    return NATIsotropic(**kwargs)


for _family, _builder, _fn in (
    ("nat", "classification/nat.py:NAT", _nat),
    ("dinat", "classification/dinat.py:DiNAT", _nat),
    ("dinat", "classification/dinats.py:DiNAT_s", _dinats),
    ("dinat", "classification/isotropic.py:NATIsotropic", _isotropic),
    ("nat", "detection/nat.py:NAT", _nat_dense),
    ("nat", "segmentation/nat.py:NAT", _nat_dense),
    ("dinat", "detection/dinat.py:DiNAT", _nat_dense),
    ("dinat", "segmentation/dinat.py:DiNAT", _nat_dense),
    ("dinat", "detection/dinats.py:DiNAT_s", _dinats_dense),
    ("dinat", "segmentation/dinats.py:DiNAT_s", _dinats_dense),
):
    register_official(_family, _builder, checkpoint_filter_fn)(_fn)


def _registered_function(name: str) -> Callable[..., nn.Module]:
    """The official registered functions (`nat_mini(pretrained=False, **kwargs)`): `pretrained=True` loads the
    official weights, as there."""

    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = f"official_{name}"
    return build


for _family, _file, _names in (
    ("nat", "classification/nat.py", ("nat_mini", "nat_tiny", "nat_small", "nat_base")),
    ("dinat", "classification/dinat.py", ("dinat_mini", "dinat_tiny", "dinat_small", "dinat_base", "dinat_large",
                                          "dinat_large_384", "dinat_large_384_11x11")),
    ("dinat", "classification/dinats.py", ("dinat_s_tiny", "dinat_s_small", "dinat_s_base", "dinat_s_large",
                                           "dinat_s_large_384")),
    ("dinat", "classification/isotropic.py", ("nat_isotropic_small", "nat_isotropic_base", "dinat_isotropic_small",
                                              "dinat_isotropic_base", "vitrpb_small", "vitrpb_base")),
):
    for _name in _names:
        register_official(_family, f"{_file}:{_name}", checkpoint_filter_fn)(_registered_function(_name))


def _natten_module(dim: int, num_heads: int, kernel_size: int, dilation: int | None = 1, bias: bool = True,
                   qkv_bias: bool = True, qk_scale: float | None = None, attn_drop: float = 0.0,
                   proj_drop: float = 0.0, rel_pos_bias: bool | None = None) -> NeighborhoodAttention2D:
    """NATTEN's NeighborhoodAttention2D: `bias` (<= 0.15) or `rel_pos_bias` (0.17) adds the `rpb` table."""
    rpb = bias if rel_pos_bias is None else rel_pos_bias
    return NeighborhoodAttention2D(dim, num_heads, kernel_size=kernel_size, dilation=dilation or 1, rpb=rpb,
                                   qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=proj_drop)


for _family in ("nat", "dinat"):
    # the module's state dict has NATTEN's names (rpb, qkv, proj): no filter
    register_official(_family, "src/natten/natten2d.py:NeighborhoodAttention2D")(_natten_module)
