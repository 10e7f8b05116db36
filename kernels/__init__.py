"""The kernel layer: neighborhood attention and bi-level routing attention (reference, torch, triton).

The public functions validate their arguments with Python control flow, so FX cannot trace into them: they are
registered with timm's ``register_notrace_function`` (leaves for timm's FX feature extraction); modules traced
with plain ``torch.fx.symbolic_trace`` mark their call sites with ``torch.fx.wrap`` (as ``visionattn.layers``
does). ``torch.compile`` and ``torch.export`` trace through them into the ``visionattn::`` custom ops.
"""
from timm.layers import register_notrace_function

from .bra import bi_level_routing_attention, region_mean, region_topk, routed_attention
from .na import (
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

__all__ = ["na1d", "na2d", "na3d", "na_logits", "na1d_logits", "na2d_logits", "na3d_logits", "na1d_av", "na2d_av",
           "na3d_av", "merge_attentions", "routed_attention", "bi_level_routing_attention", "region_topk",
           "region_mean"]

for _fn in (na1d, na2d, na3d, na_logits, na1d_logits, na2d_logits, na3d_logits, na1d_av, na2d_av, na3d_av,
            merge_attentions, routed_attention, bi_level_routing_attention, region_topk, region_mean):
    register_notrace_function(_fn)
del _fn
