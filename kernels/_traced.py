"""What ``torch.jit.trace`` records of one NA / BRA call, and fvcore's FLOP counts of it.

Under ``torch.jit.trace`` (not ONNX export) an NA call is one node ``prim::PythonOp.NeighborhoodAttention`` and a
routed-attention call one ``prim::PythonOp.RoutedAttention``: autograd Functions whose forward is the plain torch
formulation (``na_torch.plain`` / ``bra_torch.plain``). The traced module runs them (right at every input of the
traced shape), tools that read traces inline their recorded subgraph, and fvcore counts each node by the formula
below instead of the masked tile matmuls. The handles join fvcore's defaults when fvcore is imported, so an
unmodified ``FlopCountAnalysis`` (timm's ``benchmark.py``) counts them; ``fvcore_handles()`` gives them explicitly.

Counts are fvcore's unit (one multiply-add = 1), NATTEN's convention (its fvcore handles, 0.14 ... 0.17): per query
and head, ``K * (D + Dv)`` for QK and AV over the ``K = prod(kernel_size)`` window keys plus ``K`` for the
logit bias; ``N_extra * (D + Dv)`` for additional keys. Routed attention: ``topk * region tokens * (D + Dv)`` per
query and head (the official code's einsums as fvcore counts them). ``aten::scaled_dot_product_attention``, which
fvcore leaves uncounted, is counted as its two matmuls.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import math
import sys

import torch

from . import bra_torch, na_torch
from .checks import NAConfig

__all__ = ["NeighborhoodAttention", "RoutedAttention", "na_flops", "bra_flops", "fvcore_handles"]


def _recompute_grads(fn, inputs, grads):
    """Gradients of ``fn(*inputs)`` (a tuple of tensors) by recomputing it with autograd."""
    leaves = [x.detach().requires_grad_(x.is_floating_point()) if isinstance(x, torch.Tensor) else x
              for x in inputs]
    with torch.enable_grad():
        outs = fn(*leaves)
    wrt = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    got = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
               if pairs else [None] * len(wrt))
    return tuple(next(got) if isinstance(x, torch.Tensor) and x.requires_grad else None for x in leaves)


class NeighborhoodAttention(torch.autograd.Function):
    """One NA call as one traced node: ``(out, lse)`` (lse empty unless ``need_lse``)."""

    @staticmethod
    def forward(ctx, q, k, v, rpb, ak, av, cfg: NAConfig, need_lse: bool):
        ctx.save_for_backward(q, k, v, rpb, ak, av)
        ctx.meta = (cfg, need_lse)
        out, lse = na_torch.plain(q, k, v, rpb, cfg, ak, av, need_lse)
        return out, (lse if need_lse else q.new_empty(0))

    @staticmethod
    def backward(ctx, dout, dlse):
        cfg, need_lse = ctx.meta

        def fn(q, k, v, rpb, ak, av):
            out, lse = na_torch.plain(q, k, v, rpb, cfg, ak, av, need_lse)
            return (out, lse) if need_lse else (out,)

        grads = _recompute_grads(fn, ctx.saved_tensors, (dout, dlse) if need_lse else (dout,))
        return (*grads, None, None)


class RoutedAttention(torch.autograd.Function):
    """One routed-attention call as one traced node."""

    @staticmethod
    def forward(ctx, q, k, v, index, region_size: tuple, scale: float):
        ctx.save_for_backward(q, k, v, index)
        ctx.meta = (region_size, scale)
        return bra_torch.plain(q, k, v, index, region_size, scale)

    @staticmethod
    def backward(ctx, dout):
        region_size, scale = ctx.meta
        q, k, v, index = ctx.saved_tensors
        grads = _recompute_grads(lambda q, k, v: (bra_torch.plain(q, k, v, index, region_size, scale),),
                                 (q, k, v), (dout,))
        return (*grads, None, None, None)


# ---------------------------------------------------------------------------------------------------
# FLOP formulas and fvcore handles


def na_flops(q_shape, v_head_dim: int, kernel_size, has_rpb: bool, n_extra: int = 0) -> int:
    """Multiply-adds of one NA call (NATTEN's fvcore convention): ``q_shape`` is ``[B, *spatial, heads, D]``."""
    rows = math.prod(q_shape[:-1])  # queries x heads
    K = math.prod(kernel_size)
    return rows * ((K + n_extra) * (q_shape[-1] + v_head_dim) + K)


def bra_flops(q_shape, v_head_dim: int, region_size, topk: int) -> int:
    """Multiply-adds of one routed-attention call: ``q_shape`` is ``[B, H, W, heads, D]``."""
    return math.prod(q_shape[:-1]) * topk * math.prod(region_size) * (q_shape[-1] + v_head_dim)


def _shape(value) -> list[int]:
    return value.type().sizes()


def _scalar(node, kind):
    return next(a for a in node.scalar_args() if isinstance(a, kind))


def _na_handle(inputs, outputs):
    node = outputs[0].node()
    cfg = _scalar(node, NAConfig)
    # tensor inputs: q, k, v, [rpb], [ak, av]
    has_extra = len(inputs) >= 5
    has_rpb = len(inputs) in (4, 6)
    n_extra = _shape(inputs[-2])[1] if has_extra else 0
    return na_flops(_shape(inputs[0]), _shape(inputs[2])[-1], cfg.kernel_size, has_rpb, n_extra)


def _bra_handle(inputs, outputs):
    node = outputs[0].node()
    region_size = _scalar(node, tuple)
    return bra_flops(_shape(inputs[0]), _shape(inputs[2])[-1], region_size, _shape(inputs[3])[-1])


def _sdpa_handle(inputs, outputs):
    """``aten::scaled_dot_product_attention`` (fvcore has no handle; BiFormer's last stage, timm's fused
    attention): QK and AV multiply-adds, as fvcore counts the explicit matmuls."""
    q, k, v = (_shape(x) for x in inputs[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


def fvcore_handles() -> dict:
    """fvcore op handles of the traced NA / BRA nodes and of SDPA
    (``FlopCountAnalysis.set_op_handle(**fvcore_handles())``)."""
    return {"prim::PythonOp.NeighborhoodAttention": _na_handle, "prim::PythonOp.RoutedAttention": _bra_handle,
            "aten::scaled_dot_product_attention": _sdpa_handle}


def _register(flop_count_module) -> None:
    flop_count_module._DEFAULT_SUPPORTED_OPS.update(fvcore_handles())


class _AfterFvcore(importlib.abc.MetaPathFinder):
    """Adds the handles to fvcore's defaults right after ``fvcore.nn.flop_count`` is imported (importing fvcore
    eagerly would slow every ``import visionattn``)."""

    def find_spec(self, name, path, target=None):
        if name != "fvcore.nn.flop_count":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register(module)

        spec.loader.exec_module = exec_module
        return spec


def install_fvcore_handles() -> None:
    """fvcore counts NA / BRA by default: now if fvcore is imported, else when it is."""
    if "fvcore.nn.flop_count" in sys.modules:
        _register(sys.modules["fvcore.nn.flop_count"])
    elif not any(isinstance(f, _AfterFvcore) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterFvcore())
