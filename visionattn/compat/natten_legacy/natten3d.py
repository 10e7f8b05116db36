"""``natten.natten3d``: the pre-0.17 import path of ``NeighborhoodAttention3D`` (deprecated in NATTEN 0.17)."""
from ._modules import NeighborhoodAttention3D

__all__ = ["NeighborhoodAttention3D"]
