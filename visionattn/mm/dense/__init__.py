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
           "SLABSwinDense", "filter_for"]


def filter_for(model):
    """The checkpoint filter (official / zoo keys -> the model's) of a dense backbone."""
    import sys

    return sys.modules[type(model).__module__].checkpoint_filter_fn
