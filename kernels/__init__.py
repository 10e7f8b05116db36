"""The kernel layer: neighborhood attention and bi-level routing attention (reference, torch, triton)."""
from .bra import bi_level_routing_attention, region_mean, region_topk, routed_attention  # noqa: F401,E402
from .na import (  # noqa: E402,F401
    merge_attentions,
    na1d,
    na1d_av,
    na1d_logits,
    na2d,
    na2d_av,
    na2d_logits,
    na3d,
    na3d_av,
    na3d_logits,
    na_logits,
)
