"""The kernel layer: neighborhood attention (``na.py``) and bi-level routing attention (``bra.py``).

Each op has a public API file, a reference beside its fast paths (``*_reference.py``, ``*_torch.py``,
``*_triton.py``, ``_na_cpu.py``), the custom-op layer (``ops.py``), one backend policy (``dispatch.py``) and one
module of argument checks (``checks.py``). The public functions validate with Python control flow, so FX cannot
trace into them: they are registered with timm's ``register_notrace_function`` (leaves for timm's FX feature
extraction); ``torch.compile`` and ``torch.export`` trace through them into the ``visionattn::`` custom ops.
"""
from timm.layers import register_notrace_function

from ._traced import install_fvcore_handles
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

install_fvcore_handles()
