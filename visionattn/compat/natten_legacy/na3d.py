"""``natten.na3d``: the module ``NeighborhoodAttention3D`` (NATTEN 0.17 layout)."""
from ._modules import NeighborhoodAttention3D

__all__ = ["NeighborhoodAttention3D"]
