"""Attention modules shared by the backbones (official parameter names, so checkpoints load unchanged)."""
from .bra import BiLevelRoutingAttention, NchwBiLevelRoutingAttention
from .cswin import LePEAttention
from .fused import FusedLinear, FusedMlp, set_fused_linear
from .na import NeighborhoodAttention1D, NeighborhoodAttention2D
from .prepbn import LinearNorm, PRepBN, PRepBNScheduler, RepBN, set_prepbn_step
from .pvt import PvtAttention

__all__ = ["BiLevelRoutingAttention", "NchwBiLevelRoutingAttention", "LePEAttention", "FusedLinear", "FusedMlp",
           "set_fused_linear", "NeighborhoodAttention1D", "NeighborhoodAttention2D", "LinearNorm", "PRepBN",
           "PRepBNScheduler", "RepBN", "set_prepbn_step", "PvtAttention"]
