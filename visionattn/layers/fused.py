"""Linear and Mlp modules that run oneDNN's fused matmul in fp32 CPU inference.

`FusedLinear` / `FusedMlp` are `nn.Linear` / timm's `Mlp` with the same parameters and state-dict keys. For fp32
CPU inference (no autograd, autocast, hooks or graph capture) on CPUs where it is the faster matmul (AVX-512; the
`onednn_linear` setting) they call `torch.ops.mkldnn._linear_pointwise`, the op inductor emits for the same
pattern: bias (and GELU) fused into the matmul, about half the time of `F.linear` there, equal to it to fp32
rounding. Everything else runs the plain forward. `set_fused_linear(model)` swaps them in (in place, by class:
nothing is copied); the families' builders call it. The private op is called through two `torch.fx.wrap` leaves,
so an FX graph picks the same kernel as eager at run time, and torch.utils.flop_counter counts the op as it counts
`F.linear`.
"""
from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from visionattn._environment import settings
from visionattn.utils import is_graph_capture

__all__ = ["FusedLinear", "FusedMlp", "set_fused_linear"]

_LINEAR_POINTWISE = (torch.ops.mkldnn._linear_pointwise
                     if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                     else None)

if _LINEAR_POINTWISE is not None:
    @register_flop_formula(_LINEAR_POINTWISE)
    def _linear_pointwise_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
        # flop_counter knows F.linear but not its oneDNN twin: without this the fast path counts 0
        return 2 * math.prod(x[:-1]) * weight[0] * weight[1]


# Where oneDNN's matmul is the faster one. Measured on AMD EPYC (AVX2, no AVX-512), 1 thread, CPU time, agent_swin_t
# bs8: 1562 ms with it, 1345 ms with F.linear (MKL sgemm), 1529 ms official; on AVX-512 it took about half of
# F.linear's time.
_AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def use_onednn() -> bool:
    """Whether fp32 CPU inference takes oneDNN's fused matmul: the ``onednn_linear`` setting
    (``VISIONATTN_ONEDNN_LINEAR``), by default on AVX-512 CPUs only."""
    choice = settings().onednn_linear
    return _AVX512 if choice is None else choice


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # graph capture first: dynamo refuses to trace torch.backends and leaves the fusion to inductor anyway
    return (
        not is_graph_capture() and use_onednn() and _LINEAR_POINTWISE is not None and torch.backends.mkldnn.enabled
        and x.device.type == "cpu" and x.dtype == torch.float32
        and weight.dtype == torch.float32 and weight.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if _onednn_ok(x, weight):
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _linear_gelu_linear(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                        b2: torch.Tensor | None, approximate: str) -> torch.Tensor:
    if _onednn_ok(x, w1):
        h = _LINEAR_POINTWISE(x, w1, b1, "gelu", [], approximate)
        return _LINEAR_POINTWISE(h, w2, b2, "none", [], "")
    h = F.linear(x, w1, b1)
    if is_graph_capture() or (torch.is_grad_enabled() and (x.requires_grad or w1.requires_grad)):
        h = F.gelu(h, approximate=approximate)
    else:  # in place: no second hidden-size buffer (same kernel, bit-equal; AVX2 agent_swin_t bs8 MLP -25 %)
        h = torch.ops.aten.gelu_(h, approximate=approximate)
    return F.linear(h, w2, b2)


# FX leaves: the run-time choice stays in the graph (timm's FX tests demand outputs bit-equal to eager)
torch.fx.wrap("_linear")
torch.fx.wrap("_linear_gelu_linear")


def _hooked(*modules: nn.Module) -> bool:
    # a module with hooks keeps its plain forward (observers see the computation they expect)
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _plain_linear(m: nn.Module) -> bool:
    # a Linear subclass with its own forward (LoRA, quantized...) runs as itself
    return type(m).forward in (nn.Linear.forward, FusedLinear.forward) and not _hooked(m)


class FusedLinear(nn.Linear):
    """`nn.Linear` whose fp32 CPU inference runs oneDNN's matmul with the bias fused (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _hooked(self):
            return F.linear(x, self.weight, self.bias)
        return _linear(x, self.weight, self.bias)


class FusedMlp(Mlp):
    """timm's `Mlp` (fc1 -> GELU -> fc2) with GELU fused into fc1 for fp32 CPU inference.

    Other activations, a hidden norm, dropout > 0 (in any mode: an FX graph traced in eval must still drop in
    train) or hooks keep timm's forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (isinstance(self.act, nn.GELU) and isinstance(self.norm, nn.Identity)
                and not (self.drop1.p or self.drop2.p) and not _hooked(self, self.act)
                and _plain_linear(self.fc1) and _plain_linear(self.fc2)):
            return _linear_gelu_linear(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                       self.act.approximate)
        return super().forward(x)


_SWAPS = {nn.Linear: FusedLinear, Mlp: FusedMlp}


def set_fused_linear(model: nn.Module, enable: bool = True) -> nn.Module:
    """Make every `nn.Linear` / timm `Mlp` of `model` a `FusedLinear` / `FusedMlp` (or back); returns `model`.

    Only those exact classes change (subclasses keep their own forward); parameters, buffers, hooks and
    state-dict keys stay as they are.
    """
    swaps = _SWAPS if enable else {v: k for k, v in _SWAPS.items()}
    for m in model.modules():
        new = swaps.get(type(m))
        if new is not None:
            m.__class__ = new
    return model
