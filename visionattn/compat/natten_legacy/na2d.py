"""``natten.na2d``: the module ``NeighborhoodAttention2D`` (NATTEN 0.17 layout)."""
from ._modules import NeighborhoodAttention2D

__all__ = ["NeighborhoodAttention2D"]
