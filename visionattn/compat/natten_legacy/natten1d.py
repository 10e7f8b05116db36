"""``natten.natten1d``: the pre-0.17 import path of ``NeighborhoodAttention1D`` (deprecated in NATTEN 0.17)."""
from ._modules import NeighborhoodAttention1D

__all__ = ["NeighborhoodAttention1D"]
