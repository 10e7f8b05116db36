"""``natten.na1d``: the module ``NeighborhoodAttention1D`` (NATTEN 0.17 layout)."""
from ._modules import NeighborhoodAttention1D

__all__ = ["NeighborhoodAttention1D"]
