"""Attention modules shared by the backbones (official parameter names, so checkpoints load unchanged)."""
from .bra import BiLevelRoutingAttention, NchwBiLevelRoutingAttention  # noqa: F401,E402
from .cswin import LePEAttention  # noqa: F401,E402
from .na import NeighborhoodAttention1D, NeighborhoodAttention2D  # noqa: F401,E402
from .prepbn import LinearNorm, PRepBN, PRepBNScheduler, RepBN, set_prepbn_step  # noqa: F401,E402
from .pvt import PvtAttention  # noqa: F401,E402
