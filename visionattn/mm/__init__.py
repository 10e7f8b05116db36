"""OpenMMLab glue: the official dense backbones of each family, zoo backbones and the 3-level FPN neck for
mmdet 3.x / mmseg 1.x.

`visionattn.mm.dense` holds the dense backbones themselves (plain torch modules, no OpenMMLab import). With
mmengine installed, the registry classes in `backbones.py` wrap them for configs, which load this package with
``custom_imports=dict(imports=['visionattn.mm'], allow_failed_imports=False)``; the classes are registered in the
MODELS registry of mmdet and of mmseg (whichever is installed). Registry names: BiFormerMM, NATMM, DiNATMM,
AgentAttentionMM, SLABMM, GCViTMM, SHViTMM, EfficientViMMM (backbones, `ZooBackboneMM` takes any family),
TransConvFPN (neck) and WeightsOnlyCheckpointHook (mmengine HOOKS). See `backbones.py` for their arguments.
"""
from __future__ import annotations

import importlib
import importlib.util

from . import dense  # noqa: F401

HAS_MMENGINE = importlib.util.find_spec("mmengine") is not None

__all__ = [
    "AgentAttentionMM", "BiFormerMM", "DiNATMM", "EfficientViMMM", "GCViTMM", "NATMM", "SHViTMM", "SLABMM",
    "TransConvFPN", "WeightsOnlyCheckpointHook", "ZooBackboneMM", "register_all", "dense",
]

if HAS_MMENGINE:
    from .backbones import (
        _ALL,
        NATMM,
        SLABMM,
        AgentAttentionMM,
        BiFormerMM,
        DiNATMM,
        EfficientViMMM,
        GCViTMM,
        SHViTMM,
        ZooBackboneMM,
    )
    from .hooks import WeightsOnlyCheckpointHook
    from .necks import TransConvFPN


def register_all() -> list[str]:
    """Register the classes in every installed OpenMMLab MODELS registry; returns the registries used."""
    if not HAS_MMENGINE:
        return []
    used = []
    for scope in ("mmdet", "mmseg"):
        try:
            registry = importlib.import_module(f"{scope}.registry").MODELS
        except ImportError:
            continue
        for cls in [*_ALL, TransConvFPN]:
            registry.register_module(module=cls, force=True)
        used.append(scope)
    return used


register_all()
