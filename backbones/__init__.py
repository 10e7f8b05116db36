"""Zoo backbones; importing this package registers every model with timm."""
from . import agent, biformer, nat, slab

__all__ = ["agent", "biformer", "nat", "slab"]
