"""The kernels as PyTorch custom ops, with the glue of the fused Triton and compiled CPU kernels.

``visionattn::na_forward`` / ``na_backward`` (implementations ``torch``, ``triton``, ``cpu``) and
``visionattn::routed_attention_forward`` / ``_backward`` (``torch``, ``triton``): fake implementations, registered
autograd and autocast, FLOP formulas, so ``torch.compile`` (fullgraph) and ``torch.export`` keep one op per call.
The ops take the implementation the public functions chose (``dispatch.py``), never ``"auto"``. While exporting to
ONNX the ``torch`` implementation runs as plain torch ops instead of the op; under ``torch.jit.trace`` as one
traced node holding those ops (``_traced.py``: fvcore counts it).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import _traced, bra_torch, na_torch
from ._common import LN2, LOG2E, acc_dtype, exporting
from ._na_index import tile_shape
from .checks import NAConfig

__all__ = ["na", "routed_attention", "NA_IMPLS", "BRA_IMPLS"]

NA_IMPLS = ("torch", "triton", "cpu")
BRA_IMPLS = ("torch", "triton")

_LIB = torch.library.Library("visionattn", "FRAGMENT")  # noqa: TOR901  (autocast kernels of the custom ops)


def _register_autocast(op, name: str) -> None:
    """Autocast for the visionattn op ``name``: floating tensor arguments (not float64) are cast to the autocast
    dtype (attention runs in low precision, like ``scaled_dot_product_attention``), then ``op`` runs with
    autocast off."""
    for device_type, key in (("cpu", "AutocastCPU"), ("cuda", "AutocastCUDA")):
        def kernel(keyset, *args, _device_type=device_type):
            dtype = torch.get_autocast_dtype(_device_type)
            args = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64
                    else a for a in args]
            with torch.autocast(_device_type, enabled=False):
                return op(*args)

        _LIB.impl(name, kernel, key, with_keyset=True)


def _impl(backend: str, impls: tuple, op: str) -> str:
    if backend not in impls:
        raise ValueError(f"backend must be one of {impls} for visionattn::{op} (the implementation; the public "
                         f"functions resolve 'auto'), got {backend!r}")
    return backend


# ---------------------------------------------------------------------------------------------------
# NA glue of the fused kernels: extra keys merged by logsumexp; backward from the merged logsumexp (one softmax)


def _extra_attention(q: Tensor, ak: Tensor, av: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Dense attention of every query over the additional tokens: output ``[B, *S, h, Dv]`` and natural
    logsumexp ``[B, *S, h]`` (for merging with the window part)."""
    B, h, D = q.shape[0], q.shape[-2], q.shape[-1]
    hk, Dv = ak.shape[2], av.shape[-1]
    N = math.prod(q.shape[1:-2])
    g = h // hk
    qg = q.reshape(B, N, hk, g, D).permute(0, 2, 3, 1, 4).reshape(B, hk, g * N, D)
    logits = (qg * scale) @ ak.permute(0, 2, 3, 1)  # [B, hk, gN, Na]
    out = logits.softmax(-1) @ av.transpose(1, 2)  # [B, hk, gN, Dv]
    out = out.reshape(B, hk, g, N, Dv).permute(0, 3, 1, 2, 4).reshape(*q.shape[:-1], Dv)
    lse = logits.to(acc_dtype(logits.dtype)).logsumexp(-1).reshape(B, hk, g, N).permute(0, 3, 1, 2)
    return out, lse.reshape(q.shape[:-1])


def _group_all(x: Tensor, hk: int) -> Tensor:
    """[B, *S, h, C] -> [B, hk, g*N, C] (all queries of a key/value head as rows)."""
    B, h, C = x.shape[0], x.shape[-2], x.shape[-1]
    N = math.prod(x.shape[1:-2])
    return x.reshape(B, N, hk, h // hk, C).permute(0, 2, 3, 1, 4).reshape(B, hk, h // hk * N, C)


def _ungroup_all(x: Tensor, like: Tensor) -> Tensor:
    B, hk, gN, C = x.shape
    h = like.shape[-2]
    return x.reshape(B, hk, h // hk, gN * hk // h, C).permute(0, 3, 1, 2, 4).reshape(*like.shape[:-1], C)


def _extra_backward(dout, q, ak, av, lse, delta, scale):
    """dq, d additional_keys, d additional_values of the extra-token part of a merged softmax (natural lse)."""
    acc = acc_dtype(q.dtype)
    hk = ak.shape[2]
    qg = _group_all(q, hk).to(acc) * scale
    dog = _group_all(dout, hk).to(acc)
    akh, avh = ak.transpose(1, 2).to(acc), av.transpose(1, 2).to(acc)
    p = (qg @ akh.transpose(-1, -2) - _group_all(lse.unsqueeze(-1), hk)).exp()
    ds = p * (dog @ avh.transpose(-1, -2) - _group_all(delta.unsqueeze(-1), hk))
    dq = _ungroup_all(ds @ akh * scale, q)
    dak = (ds.transpose(-1, -2) @ qg).transpose(1, 2)
    dav = (p.transpose(-1, -2) @ dog).transpose(1, 2)
    return dq.to(q.dtype), dak.to(ak.dtype), dav.to(av.dtype)


def _delta(dout, dlse, out, q):
    """rowsum(dout * out) - dlse: the softmax backward's row term (natural-log units)."""
    acc = acc_dtype(q.dtype)
    delta = torch.linalg.vecdot(dout.to(acc), out.to(acc))  # one pass, no dout * out temporary
    return delta if dlse is None else delta - dlse.to(acc)


def _triton_forward(q, k, v, rpb, cfg: NAConfig, ak=None, av=None):
    """(out, base-2 logsumexp of the whole softmax)."""
    from . import na_triton

    out, lse2 = na_triton.forward(q, k, v, rpb, cfg)
    if ak is None:
        return out, lse2
    ox, lsex = _extra_attention(q, ak, av, cfg.scale)
    out, lse = na_torch.merge([out, ox], [lse2 * LN2, lsex])
    return out, lse * LOG2E


def _triton_backward(dout, dlse, q, k, v, rpb, ak, av, out, lse2, cfg: NAConfig, need_drpb: bool):
    from . import na_triton

    delta = _delta(dout, dlse, out, q)
    dq, dk, dv, drpb = na_triton.backward(dout, q, k, v, rpb, lse2, delta, cfg, need_drpb)
    dak = dav = None
    if ak is not None:
        dqx, dak, dav = _extra_backward(dout, q, ak, av, lse2 * LN2, delta, cfg.scale)
        dq = dq + dqx
    return dq, dk, dv, drpb, dak, dav


def _cpu_forward(q, k, v, rpb, cfg: NAConfig, ak=None, av=None):
    """(out, natural logsumexp of the whole softmax)."""
    from . import _na_cpu  # on use: `python -m visionattn.kernels._na_cpu` runs that module as __main__

    out, lse = _na_cpu.forward(q, k, v, rpb, cfg)
    if ak is None:
        return out, lse
    ox, lsex = _extra_attention(q, ak, av, cfg.scale)
    return na_torch.merge([out, ox], [lse, lsex])


def _cpu_backward(dout, dlse, q, k, v, rpb, ak, av, out, lse, cfg: NAConfig, need_drpb: bool):
    from . import _na_cpu

    if ak is None:  # the kernel computes delta from out: no torch ops (parallel regions of their own) before it
        dq, dk, dv, drpb = _na_cpu.backward(dout, q, k, v, rpb, lse, None, cfg, need_drpb, out=out, dlse=dlse)
        return dq, dk, dv, drpb, None, None
    delta = _delta(dout, dlse, out, q)
    dq, dk, dv, drpb = _na_cpu.backward(dout, q, k, v, rpb, lse, delta, cfg, need_drpb)
    dqx, dak, dav = _extra_backward(dout, q, ak, av, lse, delta, cfg.scale)
    dq = dq + dqx
    return dq, dk, dv, drpb, dak, dav


# ---------------------------------------------------------------------------------------------------
# visionattn::na_forward / visionattn::na_backward
#
# `aux` is what the backward needs: the softmax probabilities of the torch path ([B, kv_heads, tiles, g * T,
# R + N_extra], only when need_aux), the base-2 logsumexp of the fused kernel or the natural one of the CPU kernel
# ([B, *S, heads]).


def _op_cfg(kernel_size, stride, dilation, is_causal, scale) -> NAConfig:
    return NAConfig(tuple(int(x) for x in kernel_size), tuple(int(x) for x in stride),
                    tuple(int(x) for x in dilation), tuple(bool(x) for x in is_causal), float(scale))


@torch.library.custom_op("visionattn::na_forward", mutates_args=())
def na_forward(query: Tensor, key: Tensor, value: Tensor, rpb: Tensor | None, additional_keys: Tensor | None,
               additional_values: Tensor | None, kernel_size: list[int], stride: list[int], dilation: list[int],
               is_causal: list[bool], scale: float, backend: str, need_lse: bool,
               need_aux: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Neighborhood attention (arguments validated as by ``na1d/2d/3d``): ``(out, lse, aux)``; ``lse`` (natural)
    is empty unless ``need_lse``, ``aux`` is saved for the backward (see above)."""
    impl = _impl(backend, NA_IMPLS, "na_forward")
    cfg = _op_cfg(kernel_size, stride, dilation, is_causal, scale)
    ak, av = additional_keys, additional_values
    empty = query.new_empty(0, dtype=acc_dtype(query.dtype))
    if impl == "cpu":
        out, lse = _cpu_forward(query, key, value, rpb, cfg, ak, av)
        return out.contiguous(), (lse.clone() if need_lse else empty), lse.contiguous()
    if impl == "triton":
        out, lse2 = _triton_forward(query, key, value, rpb, cfg, ak, av)
        return out.contiguous(), (lse2 * LN2 if need_lse else empty), lse2.contiguous()
    out, lse, p = na_torch.forward(query, key, value, rpb, cfg, ak, av, need_lse, need_aux)
    # fresh contiguous outputs, as the fake implementation promises
    return out.contiguous(), (lse.contiguous() if need_lse else empty), (p if need_aux else query.new_empty(0))


@na_forward.register_fake
def _na_forward_fake(query, key, value, rpb, additional_keys, additional_values, kernel_size, stride, dilation,
                     is_causal, scale, backend, need_lse, need_aux):
    impl = _impl(backend, NA_IMPLS, "na_forward")
    acc = acc_dtype(query.dtype)
    out = query.new_empty(*query.shape[:-1], value.shape[-1])
    lse = query.new_empty(query.shape[:-1] if need_lse else (0,), dtype=acc)
    if impl != "torch":
        aux = query.new_empty(query.shape[:-1], dtype=acc)
    elif need_aux:
        cfg = _op_cfg(kernel_size, stride, dilation, is_causal, scale)
        n = query.dim() - 3
        spatial = tuple(int(x) for x in query.shape[1:1 + n])
        NT, T, R = tile_shape(spatial, *cfg[:4], na_torch.TILE[n])
        h, hk = query.shape[-2], key.shape[-2]
        extra = 0 if additional_keys is None else additional_keys.shape[1]
        aux = query.new_empty(query.shape[0], hk, NT, h // hk * T, R + extra)
    else:
        aux = query.new_empty(0)
    return out, lse, aux


@torch.library.custom_op("visionattn::na_backward", mutates_args=())
def na_backward(grad_out: Tensor, grad_lse: Tensor | None, query: Tensor, key: Tensor, value: Tensor,
                rpb: Tensor | None, additional_keys: Tensor | None, additional_values: Tensor | None,
                out: Tensor, aux: Tensor, kernel_size: list[int], stride: list[int], dilation: list[int],
                is_causal: list[bool], scale: float, backend: str,
                need_rpb_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``na_forward`` (the implementation the forward ran): (d query, d key, d value, d rpb,
    d additional_keys, d additional_values); absent ones are empty."""
    impl = _impl(backend, NA_IMPLS, "na_backward")
    cfg = _op_cfg(kernel_size, stride, dilation, is_causal, scale)
    args = (grad_out, grad_lse, query, key, value, rpb, additional_keys, additional_values, out, aux, cfg,
            need_rpb_grad and rpb is not None)
    grads = (_cpu_backward if impl == "cpu" else _triton_backward if impl == "triton" else na_torch.backward)(*args)
    return tuple(query.new_empty(0) if g is None else g.contiguous() for g in grads)


@na_backward.register_fake
def _na_backward_fake(grad_out, grad_lse, query, key, value, rpb, additional_keys, additional_values, out, aux,
                      kernel_size, stride, dilation, is_causal, scale, backend, need_rpb_grad):
    _impl(backend, NA_IMPLS, "na_backward")
    like = lambda t: query.new_empty(0) if t is None else torch.empty_like(t)  # noqa: E731
    return (like(query), like(key), like(value), like(rpb if need_rpb_grad else None), like(additional_keys),
            like(additional_values))


def _na_setup_context(ctx, inputs, output):
    q, k, v, rpb, ak, av, ks, ss, ds, cs, scale, backend, need_lse, need_aux = inputs
    ctx.save_for_backward(q, k, v, rpb, ak, av, output[0], output[2])
    ctx.meta = (list(ks), list(ss), list(ds), list(cs), float(scale), backend, need_lse)


def _na_backward_rule(ctx, grad_out, grad_lse, grad_aux):
    q, k, v, rpb, ak, av, out, aux = ctx.saved_tensors
    ks, ss, ds, cs, scale, impl, need_lse = ctx.meta
    need_drpb = rpb is not None and ctx.needs_input_grad[3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, drpb, dak, dav = torch.ops.visionattn.na_backward(
        grad_out, grad_lse if need_lse else None, q, k, v, rpb, ak, av, out, aux, ks, ss, ds, cs, scale, impl,
        need_drpb)
    return (dq, dk, dv, drpb if need_drpb else None, None if ak is None else dak, None if av is None else dav,
            None, None, None, None, None, None, None, None)


na_forward.register_autograd(_na_backward_rule, setup_context=_na_setup_context)
_register_autocast(na_forward, "na_forward")


@register_flop_formula(torch.ops.visionattn.na_forward)
def _na_forward_flops(q, k, v, rpb, ak, av, kernel_size, *args, out_shape=None, **kwargs) -> int:
    """FLOPs NA needs (torch.utils.flop_counter; the op is opaque to it): q.k and p.v multiply-adds over each
    query's full window and the extra keys."""
    keys = math.prod(kernel_size) + (0 if ak is None else ak[1])
    return 2 * math.prod(q[:-1]) * keys * (q[-1] + v[-1])


@register_flop_formula(torch.ops.visionattn.na_backward)
def _na_backward_flops(dout, dlse, q, k, v, rpb, ak, av, out, aux, kernel_size, *args, out_shape=None,
                       **kwargs) -> int:
    """Twice the forward's (dP, dQ, dK, dV)."""
    return 2 * _na_forward_flops(q, k, v, rpb, ak, av, kernel_size)


def na(impl: str, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg: NAConfig, ak: Tensor | None,
       av: Tensor | None, need_lse: bool) -> tuple[Tensor, Tensor | None]:
    """NA of validated arguments on ``impl`` (one of ``NA_IMPLS``): (out, natural logsumexp or None)."""
    if impl == "torch" and exporting():  # ONNX / jit.trace: plain torch ops, indices computed from the shape
        if torch.onnx.is_in_onnx_export():
            return na_torch.plain(q, k, v, rpb, cfg, ak, av, need_lse)
        out, lse = _traced.NeighborhoodAttention.apply(q, k, v, rpb, ak, av, cfg, need_lse)  # one traced node
        return out, (lse if need_lse else None)
    need_aux = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, rpb, ak, av))
    out, lse, _ = torch.ops.visionattn.na_forward(q, k, v, rpb, ak, av, list(cfg.kernel_size), list(cfg.stride),
                                                  list(cfg.dilation), list(cfg.is_causal), cfg.scale, impl,
                                                  need_lse, need_aux)
    return out, (lse if need_lse else None)


# ---------------------------------------------------------------------------------------------------
# visionattn::routed_attention_forward / visionattn::routed_attention_backward
#
# `aux` is what the backward needs: the torch path's CPU flash logsumexp ([B * R, heads, hw], only when need_aux
# and the flash kernel applies) or the fused kernel's base-2 logsumexp ([B, H, W, heads]).


@torch.library.custom_op("visionattn::routed_attention_forward", mutates_args=())
def routed_attention_forward(query: Tensor, key: Tensor, value: Tensor, index: Tensor, region_size: list[int],
                             scale: float, backend: str, need_aux: bool) -> tuple[Tensor, Tensor]:
    """Routed attention (arguments validated as by ``routed_attention``): ``(out, aux)``, aux saved for the
    backward."""
    impl = _impl(backend, BRA_IMPLS, "routed_attention_forward")
    rs = (int(region_size[0]), int(region_size[1]))
    if impl == "triton":
        from . import bra_triton

        return bra_triton.forward(query, key, value, index, rs, float(scale))
    out, aux = bra_torch.forward(query, key, value, index, rs, float(scale), need_aux)
    return out.contiguous(), aux.contiguous()


@routed_attention_forward.register_fake
def _routed_attention_forward_fake(query, key, value, index, region_size, scale, backend, need_aux):
    impl = _impl(backend, BRA_IMPLS, "routed_attention_forward")
    B, H, W, nh, dq = query.shape
    out = query.new_empty(B, H, W, nh, value.shape[-1])
    acc = acc_dtype(query.dtype)
    if impl == "triton":
        return out, query.new_empty(B, H, W, nh, dtype=acc)
    rh, rw = int(region_size[0]), int(region_size[1])
    if need_aux and bra_torch.uses_flash(query, value):
        return out, query.new_empty(B * (H // rh) * (W // rw), nh, rh * rw, dtype=acc)
    return out, query.new_empty(0)


@torch.library.custom_op("visionattn::routed_attention_backward", mutates_args=())
def routed_attention_backward(grad_out: Tensor, query: Tensor, key: Tensor, value: Tensor, index: Tensor,
                              out: Tensor, aux: Tensor, region_size: list[int], scale: float, backend: str,
                              need_query_grad: bool, need_kv_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``routed_attention_forward`` w.r.t. query, key, value (empty where not needed)."""
    impl = _impl(backend, BRA_IMPLS, "routed_attention_backward")
    rs = (int(region_size[0]), int(region_size[1]))
    if impl == "triton":
        from . import bra_triton

        grads = bra_triton.backward(query, key, value, out, aux, index, grad_out, rs, float(scale),
                                    need_query_grad, need_kv_grad)
    else:
        grads = bra_torch.backward(grad_out, query, key, value, index, out, aux, rs, float(scale), need_query_grad,
                                   need_kv_grad)
    return tuple(query.new_empty(0) if g is None else g.contiguous() for g in grads)


@routed_attention_backward.register_fake
def _routed_attention_backward_fake(grad_out, query, key, value, index, out, aux, region_size, scale, backend,
                                    need_query_grad, need_kv_grad):
    _impl(backend, BRA_IMPLS, "routed_attention_backward")
    return (torch.empty_like(query) if need_query_grad else query.new_empty(0),
            torch.empty_like(key) if need_kv_grad else query.new_empty(0),
            torch.empty_like(value) if need_kv_grad else query.new_empty(0))


def _ra_setup_context(ctx, inputs, output):
    q, k, v, index, region_size, scale, backend, need_aux = inputs
    ctx.save_for_backward(q, k, v, index, output[0], output[1])
    ctx.meta = (list(region_size), float(scale), backend)


def _ra_backward_rule(ctx, grad_out, grad_aux):
    q, k, v, index, out, aux = ctx.saved_tensors
    region_size, scale, impl = ctx.meta
    need_q, need_k, need_v = ctx.needs_input_grad[:3]
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.visionattn.routed_attention_backward(grad_out, q, k, v, index, out, aux, region_size,
                                                               scale, impl, need_q, need_k or need_v)
    return (dq if need_q else None, dk if need_k else None, dv if need_v else None, None, None, None, None, None)


routed_attention_forward.register_autograd(_ra_backward_rule, setup_context=_ra_setup_context)
_register_autocast(routed_attention_forward, "routed_attention_forward")


def routed_attention(impl: str, q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size: tuple[int, int],
                     scale: float) -> Tensor:
    """Routed attention of validated arguments on ``impl`` (one of ``BRA_IMPLS``)."""
    if impl == "torch" and exporting():  # ONNX / jit.trace: one plain graph of 4-D ops
        if torch.onnx.is_in_onnx_export():
            return bra_torch.plain(q, k, v, index, region_size, scale)
        return _traced.RoutedAttention.apply(q, k, v, index, tuple(region_size), float(scale))  # one traced node
    need_aux = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    out, _ = torch.ops.visionattn.routed_attention_forward(q, k, v, index, list(region_size), float(scale), impl,
                                                           need_aux)
    return out
