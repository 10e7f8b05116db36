"""``natten.natten2d``: the pre-0.17 import path of ``NeighborhoodAttention2D`` (deprecated in NATTEN 0.17)."""
from ._modules import NeighborhoodAttention2D

__all__ = ["NeighborhoodAttention2D"]
