"""``natten.flops`` of NATTEN 0.17.4: fvcore handles for the neighborhood-attention ops, and plain counters.

fvcore traces the model with ``torch.jit``; under that trace every op of ``natten.functional`` and every
NeighborhoodAttention module call appears as one ``prim::PythonOp`` node named as in NATTEN 0.17
(``NeighborhoodAttention2DQKAutogradFunction``, ``...AVAutogradFunction``, ``FusedNeighborhoodAttention2D``),
and ``add_natten_handle`` counts them::

    flop_ctr = add_natten_handle(FlopCountAnalysis(model, x))
    flop_ctr.total()

Counts are MACs, as all of fvcore's: QK = B * heads * tokens * K * D and AV = B * heads * tokens * K * D_v
with K = prod(kernel_size) (plus the additional tokens when there are any); the bias add and the softmax are
not counted, as NATTEN 0.17 (0.14 also added B * heads * tokens * K for the bias).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["add_natten_handle", "get_flops", "fna_flop_count", "na_qk_flop_count", "na_av_flop_count"]


def _shape(value) -> list[int]:
    return list(value.type().sizes())


def _tokens_heads(shape: Sequence[int], na_dim: int, is_heads_last: bool) -> tuple[int, int, int, int]:
    if len(shape) != na_dim + 3:
        raise ValueError(f"expected a rank-{na_dim + 3} tensor for {na_dim}-D NA, got shape {list(shape)}")
    if is_heads_last:
        return shape[0], shape[-2], math.prod(shape[1:-2]), shape[-1]
    return shape[0], shape[1], math.prod(shape[2:-1]), shape[-1]


def na_qk_flop_count(q_shape, k_shape, kernel_size, dilation, is_causal, is_heads_last: bool,
                     return_macs: bool = False) -> int:
    """QK cost of one op; FLOPs (2 per MAC) unless ``return_macs``."""
    if list(q_shape) != list(k_shape):
        raise ValueError(f"q_shape and k_shape must match, got {list(q_shape)} and {list(k_shape)}")
    b, h, n, d = _tokens_heads(q_shape, len(kernel_size), is_heads_last)
    macs = b * h * n * d * math.prod(kernel_size)
    return macs if return_macs else 2 * macs


def na_av_flop_count(a_shape, v_shape, kernel_size, dilation, is_causal, is_heads_last: bool,
                     return_macs: bool = False) -> int:
    """AV cost of one op; FLOPs unless ``return_macs``."""
    b, h, n, d = _tokens_heads(v_shape, len(kernel_size), is_heads_last)
    macs = b * h * n * d * math.prod(kernel_size)
    return macs if return_macs else 2 * macs


def fna_flop_count(q_shape, k_shape, v_shape, kernel_size, dilation, is_causal, is_heads_last: bool,
                   return_macs: bool = False) -> int:
    """QK + AV cost of one fused op; FLOPs unless ``return_macs``."""
    return (na_qk_flop_count(q_shape, k_shape, kernel_size, dilation, is_causal, is_heads_last, return_macs)
            + na_av_flop_count(q_shape, v_shape, kernel_size, dilation, is_causal, is_heads_last, return_macs))


# fvcore handles: (inputs, outputs) are the traced node's tensor values

def _qk_macs(inputs: list[Any], outputs: list[Any]) -> int:
    q, attn = _shape(inputs[0]), _shape(outputs[0])
    return math.prod(attn) * q[-1]  # every weight (window + additional keys) is one D-long dot product


def _av_macs(inputs: list[Any], outputs: list[Any]) -> int:
    attn, out = _shape(inputs[0]), _shape(outputs[0])
    return math.prod(attn) * out[-1]


def _fused_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # The op's arguments are (query, key, value, rpb, additional_keys, additional_values, kernel_size, ...);
    # the trace keeps the tensors as inputs and the rest (absent tensors as None) as scalar arguments.
    scalars = outputs[0].node().scalar_args()
    n_missing = next(i for i, s in enumerate(scalars) if isinstance(s, tuple))
    kernel_size = scalars[n_missing]
    has_rpb, has_extra = n_missing in (0, 2), n_missing in (0, 1)  # extra keys and values come together
    q, v = _shape(inputs[0]), _shape(inputs[2])
    n = len(kernel_size)
    b, h, tokens = q[0], q[-2], math.prod(q[1:1 + n])
    weights = math.prod(kernel_size)
    if has_extra:  # additional keys [B, tokens, heads, D]: one more weight per token
        weights += math.prod(_shape(inputs[3 + has_rpb])[1:-2])
    return b * h * tokens * weights * (q[-1] + v[-1])


_HANDLES = {}
for _n in (1, 2, 3):
    _HANDLES[f"prim::PythonOp.NeighborhoodAttention{_n}DQKAutogradFunction"] = _qk_macs
    _HANDLES[f"prim::PythonOp.NeighborhoodAttention{_n}DAVAutogradFunction"] = _av_macs
    _HANDLES[f"prim::PythonOp.FusedNeighborhoodAttention{_n}D"] = _fused_macs


def add_natten_handle(flop_ctr):
    """Register the neighborhood-attention op handles on an fvcore ``FlopCountAnalysis``; returns it."""
    return flop_ctr.set_op_handle(**_HANDLES)


def get_flops(model, input, disable_warnings: bool = False):
    """fvcore's total (MACs) for ``model(input)`` with the neighborhood-attention ops counted."""
    from fvcore.nn import FlopCountAnalysis

    flop_ctr = add_natten_handle(FlopCountAnalysis(model, input))
    if disable_warnings:
        flop_ctr = flop_ctr.unsupported_ops_warnings(False)
    return flop_ctr.total()
