"""The official dense-prediction backbones of each family (their mmdet 2.x / mmseg 0.x backbone files), built from
the zoo's modules (and timm's for GC ViT): official constructor arguments, zoo parameter names, any input size.

=====================  =========================================================================================
class                  official backbone
=====================  =========================================================================================
NATDense               SHI-Labs detection|segmentation/nat.py:NAT, dinat.py:DiNAT
DiNATsDense            SHI-Labs detection|segmentation/dinats.py:DiNAT_s
BiFormerDense          rayleizhu object_detection|semantic_segmentation/models_mm/biformer_mm.py:BiFormer_mm
AgentSwinDense         LeapLabTHU downstream/detection|segmentation/.../backbones/agent_swin.py:AgentSwinTransformer
AgentPVTDense          LeapLabTHU downstream/detection|segmentation/.../backbones/agent_pvt.py:AgentPVT
GCViTDense             NVlabs detection/models/gc_vit.py:GCViT
SLABSwinDense          xinghaochen detection/mmdet_custom/swin_transformer_slab.py:SwinTransformer_SLAB (and
                       swin_transformer_prepbn.py:SwinTransformer_PRepBN, `attn_type='SSSS'`)
=====================  =========================================================================================

Each module returns a tuple of NCHW maps and has a `checkpoint_filter_fn` beside it that maps official
classification and dense checkpoints onto its names (`visionattn.mm.dense.filter_for(model)`).
"""
from __future__ import annotations

from .agent import AgentPVTDense, AgentSwinDense
from .biformer import BiFormerDense
from .gcvit import GCViTDense
from .nat import DiNATsDense, NATDense
from .slab import SLABSwinDense

__all__ = ["AgentPVTDense", "AgentSwinDense", "BiFormerDense", "DiNATsDense", "GCViTDense", "NATDense",
           "SLABSwinDense", "filter_for", "build_dense", "DENSE_VARIANTS"]


def filter_for(model):
    """The checkpoint filter (official / zoo keys -> the model's) of a dense backbone."""
    import sys

    return sys.modules[type(model).__module__].checkpoint_filter_fn


# zoo variant -> (dense class, the official dense constructor arguments of that size; the attention layout and
# the agent shapes are those of the official detection / segmentation configs)
_AGENT_SWIN = dict(img_size=224, patch_size=4, window_size=56, mlp_ratio=4.0, qkv_bias=True,
                   agent_num=(9, 16, 49, 49), downstream_agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7)))
_AGENT_PVT = dict(img_size=224, patch_size=4, embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
                  mlp_ratios=(8, 8, 4, 4), qkv_bias=True, sr_ratios=(8, 4, 2, 1), agent_sr_ratios="1111",
                  agent_num=(9, 16, 49, 49), downstream_agent_shapes=((12, 12), (16, 16), (28, 28), (28, 28)),
                  attn_type="AAAA")
_SLAB_SWIN = dict(embed_dim=96, num_heads=(3, 6, 12, 24), window_size=7)

def _biformer_mm(**kwargs):
    """`BiFormer_mm` from its official arguments (`depth`, `embed_dim`, ...; visionattn.official adapter)."""
    import visionattn

    kwargs.pop("out_indices", None)  # BiFormer_mm always returns the 4 maps
    return visionattn.from_official("biformer", "object_detection/models_mm/biformer_mm.py:BiFormer_mm", kwargs)


_NAT = dict(kernel_size=7)
_BIFORMER = dict(n_win=7, kv_downsample_mode="identity", kv_per_wins=(-1, -1, -1, -1), topks=(1, 4, 16, -2),
                 side_dwconv=5, before_attn_dwconv=3, layer_scale_init_value=-1, head_dim=32, auto_pad=True,
                 mlp_ratios=(3, 3, 3, 3), norm_eval=False)

DENSE_VARIANTS: dict[str, tuple[type, dict]] = {
    "nat_mini": (NATDense, dict(_NAT, embed_dim=64, mlp_ratio=3.0, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16))),
    "nat_tiny": (NATDense, dict(_NAT, embed_dim=64, mlp_ratio=3.0, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16))),
    "nat_small": (NATDense, dict(_NAT, embed_dim=96, mlp_ratio=2.0, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24),
                                 layer_scale=1e-5)),
    "nat_base": (NATDense, dict(_NAT, embed_dim=128, mlp_ratio=2.0, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32),
                                layer_scale=1e-5)),
    "dinat_mini": (NATDense, dict(_NAT, embed_dim=64, mlp_ratio=3.0, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16))),
    "dinat_tiny": (NATDense, dict(_NAT, embed_dim=64, mlp_ratio=3.0, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16))),
    "dinat_small": (NATDense, dict(_NAT, embed_dim=96, mlp_ratio=2.0, depths=(3, 4, 18, 5),
                                   num_heads=(3, 6, 12, 24), layer_scale=1e-5)),
    "dinat_base": (NATDense, dict(_NAT, embed_dim=128, mlp_ratio=2.0, depths=(3, 4, 18, 5),
                                  num_heads=(4, 8, 16, 32), layer_scale=1e-5)),
    "dinat_large": (NATDense, dict(_NAT, embed_dim=192, mlp_ratio=2.0, depths=(3, 4, 18, 5),
                                   num_heads=(6, 12, 24, 48))),
    "dinat_s_tiny": (DiNATsDense, dict(_NAT, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))),
    "dinat_s_small": (DiNATsDense, dict(_NAT, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))),
    "dinat_s_base": (DiNATsDense, dict(_NAT, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))),
    "dinat_s_large": (DiNATsDense, dict(_NAT, embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))),
    "biformer_t": (_biformer_mm, dict(_BIFORMER, depth=(2, 2, 8, 2), embed_dim=(64, 128, 256, 512),
                                      qk_dims=(64, 128, 256, 512))),
    "biformer_s": (_biformer_mm, dict(_BIFORMER, depth=(4, 4, 18, 4), embed_dim=(64, 128, 256, 512),
                                      qk_dims=(64, 128, 256, 512))),
    "biformer_b": (_biformer_mm, dict(_BIFORMER, depth=(4, 4, 18, 4), embed_dim=(96, 192, 384, 768),
                                      qk_dims=(96, 192, 384, 768))),
    "agent_swin_t": (AgentSwinDense, dict(_AGENT_SWIN, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                          attn_type="AAAB")),
    "agent_swin_s": (AgentSwinDense, dict(_AGENT_SWIN, embed_dim=96, depths=(2, 2, 18, 2),
                                          num_heads=(3, 6, 12, 24), attn_type="AABB")),
    "agent_swin_b": (AgentSwinDense, dict(_AGENT_SWIN, embed_dim=128, depths=(2, 2, 18, 2),
                                          num_heads=(4, 8, 16, 32), attn_type="AAMB2")),
    "agent_pvt_t": (AgentPVTDense, dict(_AGENT_PVT, depths=(2, 2, 2, 2))),
    "agent_pvt_s": (AgentPVTDense, dict(_AGENT_PVT, depths=(3, 4, 6, 3))),
    "agent_pvt_m": (AgentPVTDense, dict(_AGENT_PVT, depths=(3, 4, 18, 3))),
    "agent_pvt_l": (AgentPVTDense, dict(_AGENT_PVT, depths=(3, 8, 27, 3))),
    **{name: (GCViTDense, kw) for name, kw in __import__(
        "visionattn.mm.dense.gcvit", fromlist=["_VARIANTS"])._VARIANTS.items()},
    "slab_swin_t": (SLABSwinDense, dict(_SLAB_SWIN, depths=(2, 2, 6, 2), attn_type="LLSS")),
    "slab_swin_s": (SLABSwinDense, dict(_SLAB_SWIN, depths=(2, 2, 18, 2), attn_type="LLSS")),
    "swin_t_prepbn": (SLABSwinDense, dict(_SLAB_SWIN, depths=(2, 2, 6, 2), attn_type="SSSS")),
}


def build_dense(model_name: str, **kwargs):
    """The official dense backbone of a zoo variant, its official constructor arguments overridden by `kwargs`."""
    if model_name not in DENSE_VARIANTS:
        raise ValueError(f"model_name {model_name!r} has no official dense backbone here; choose from "
                         f"{sorted(DENSE_VARIANTS)}")
    cls, defaults = DENSE_VARIANTS[model_name]
    try:
        return cls(**{**defaults, **kwargs})
    except TypeError as e:  # the zoo models' own constructors (NAT / DiNAT_s) refuse unknown names this way
        if "unexpected keyword" in str(e):
            raise ValueError(f"{model_name}: {e}") from None
        raise
