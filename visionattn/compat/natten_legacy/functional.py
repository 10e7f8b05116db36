"""``natten.functional`` of NATTEN 0.17.4 on the visionattn kernels (``natten`` once installed).

Unfused ("split") ops, heads-first layout as NATTEN <= 0.17:

- ``na{1,2,3}d_qk(query, key, kernel_size, dilation=1, additional_keys=None, is_causal=False, rpb=None)``:
  query/key ``[B, heads, *spatial, D]`` -> attention weights ``[B, heads, *spatial, prod(kernel_size)]``
  (plus one column per additional key), neighbours in row-major window order. ``query`` is NOT scaled
  here (the caller scales it, as NATTEN's modules do); ``rpb`` is added unscaled.
- ``na{1,2,3}d_av(attn, value, kernel_size, dilation=1, additional_values=None, is_causal=False)``:
  weights ``[B, heads, *spatial, K]`` and value ``[B, heads, *spatial, D]`` -> ``[B, heads, *spatial, D]``.
- The NATTEN 0.14/0.15 names with their positional signatures: ``natten1dqkrpb(query, key, rpb, kernel_size,
  dilation)``, ``natten2dqkrpb(...)``, ``natten3dqkrpb(query, key, rpb, kernel_size_d, kernel_size, dilation_d,
  dilation)``, ``natten{1,2}dav(attn, value, kernel_size, dilation)``, ``natten3dav(attn, value, kernel_size_d,
  kernel_size, dilation_d, dilation)``, and the bias-free ``natten{1,2,3}dqk``.

Fused ops, heads-last layout ``[B, *spatial, heads, D]`` (NATTEN 0.17's FNA signature):
``na{1,2,3}d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None, scale=None,
additional_keys=None, additional_values=None, xformers_kwargs=None)``.

Every op is differentiable in every tensor argument (RPB included, which NATTEN 0.17's fused kernels were
not), runs on any device (the visionattn torch path on CPU), and exports to ONNX. Windows, RPB indexing and
causal slot order are NATTEN's (checked against the NAT/DiNAT parity fixtures and NATTEN's naive kernels).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ... import kernels as _kernels

__all__ = [
    "na1d_qk", "na1d_av", "na2d_qk", "na2d_av", "na3d_qk", "na3d_av", "na1d", "na2d", "na3d",
    "natten1dqkrpb", "natten1dqk", "natten1dav", "natten2dqkrpb", "natten2dqk", "natten2dav",
    "natten3dqkrpb", "natten3dqk", "natten3dav",
]


# ---------------------------------------------------------------------------------------------------------------
# argument checks (NATTEN accepts an int or a per-axis tuple/list; kernels must be odd and > 1 before 0.17.5)

def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _per_axis(x, n: int, name: str, kind=int) -> tuple:
    ok = (lambda v: isinstance(v, bool)) if kind is bool else _is_int
    if x is None and name != "kernel_size":
        x = False if kind is bool else 1
    if ok(x):
        return (x,) * n
    if isinstance(x, (tuple, list)) and len(x) == n and all(ok(v) for v in x):
        return tuple(x)
    what = "a bool" if kind is bool else "an int"
    raise ValueError(f"{name} must be {what} or a tuple of {n} (one per spatial axis), got {x!r}")


def check_args(n: int, kernel_size, dilation, is_causal) -> tuple[tuple, tuple, tuple]:
    """Normalise (kernel_size, dilation, is_causal) to n-tuples; ValueError naming the argument otherwise."""
    ks = _per_axis(kernel_size, n, "kernel_size")
    ds = _per_axis(dilation, n, "dilation")
    cs = _per_axis(is_causal, n, "is_causal", bool)
    if any(k < 3 or k % 2 == 0 for k in ks):
        raise ValueError(f"kernel_size must be odd and >= 3 on every axis (NATTEN 0.17), got {kernel_size!r}")
    if any(d < 1 for d in ds):
        raise ValueError(f"dilation must be >= 1 on every axis, got {dilation!r}")
    return ks, ds, cs


def _check_tensor(name: str, t, n: int) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() != n + 3:
        raise ValueError(f"{name} must have rank {n + 3} ([B, heads, {n} spatial axes, D]), got shape "
                         f"{tuple(t.shape)}")


def _check_extra(name: str, extra, ref: Tensor, dim_name: str, dim: int) -> int:
    if extra is None:
        return 0
    if not isinstance(extra, Tensor) or extra.dim() != 4:
        got = tuple(extra.shape) if isinstance(extra, Tensor) else type(extra).__name__
        raise ValueError(f"{name} must be a rank-4 tensor [B, heads, tokens, D], got {got}")
    if extra.shape[0] != ref.shape[0] or extra.shape[1] != ref.shape[1] or extra.shape[-1] != dim:
        raise ValueError(f"{name} must match batch, heads and {dim_name} ({ref.shape[0]}, {ref.shape[1]}, {dim}), "
                         f"got shape {tuple(extra.shape)}")
    return extra.shape[2]


# ---------------------------------------------------------------------------------------------------------------
# causal slot order: NATTEN's naive kernels start a causal window at max(i - k + 1, 0) (valid slots first, masked
# slots last) where the visionattn kernels start it at i - k + 1 (masked slots first). Same keys, rolled slots.

_PERM_CACHE: dict = {}


def _causal_perm(spatial, ks, ds, cs, device, inverse: bool) -> Tensor:
    """[*spatial, K] index: natten_weights = ours.gather(-1, perm) (inverse: ours = natten.gather(-1, perm))."""
    key = (tuple(spatial), ks, ds, cs, str(device), inverse)
    perm = _PERM_CACHE.get(key)
    if perm is not None:
        return perm
    n = len(spatial)
    flat = None
    for a in range(n):
        L, k, d = spatial[a], ks[a], ds[a]
        slots = np.arange(k)
        shift = np.maximum(0, k - 1 - np.arange(L) // d) if cs[a] else np.zeros(L, dtype=np.int64)
        p = (slots[None] + (-shift if inverse else shift)[:, None]) % k  # [L, k]
        p = p * math.prod(ks[a + 1:])
        shape = [1] * (2 * n)
        shape[a], shape[n + a] = L, k
        p = p.reshape(shape)
        flat = p if flat is None else flat + p
    perm = torch.as_tensor(np.ascontiguousarray(flat.reshape(*spatial, -1)), device=device)
    if not torch.compiler.is_compiling():
        if len(_PERM_CACHE) > 64:
            _PERM_CACHE.clear()
        _PERM_CACHE[key] = perm
    return perm


def _reorder(weights: Tensor, spatial, ks, ds, cs, inverse: bool) -> Tensor:
    if not any(cs):
        return weights
    perm = _causal_perm(spatial, ks, ds, cs, weights.device, inverse)
    return weights.gather(-1, perm.expand(weights.shape))


# ---------------------------------------------------------------------------------------------------------------
# implementations (plain differentiable calls into visionattn.kernels)

def _heads_last(x: Tensor) -> Tensor:
    return x.movedim(1, -2)


def _qk(query, key, rpb, additional_keys, ks, ds, cs):
    n = len(ks)
    if rpb is not None:
        rpb = rpb.to(query.dtype)  # as NATTEN: the bias follows the operands (autocast)
    logits = getattr(_kernels, f"na{n}d_logits")(_heads_last(query), _heads_last(key), ks, dilation=ds,
                                                  is_causal=cs, scale=1.0, rpb=rpb)
    logits = _reorder(logits, query.shape[2:-1], ks, ds, cs, inverse=False)
    if additional_keys is None:
        return logits
    B, h = query.shape[:2]
    extra = query.reshape(B, h, -1, query.shape[-1]) @ additional_keys.to(query.dtype).transpose(-1, -2)
    return torch.cat([logits, extra.reshape(*logits.shape[:-1], -1)], dim=-1)


def _av(attn, value, additional_values, ks, ds, cs):
    n = len(ks)
    K = math.prod(ks)
    extra_w = None
    if additional_values is not None:
        attn, extra_w = attn.split([K, attn.shape[-1] - K], dim=-1)
    spatial = value.shape[2:-1]
    attn = _reorder(attn, spatial, ks, ds, cs, inverse=True)
    out = getattr(_kernels, f"na{n}d_av")(attn, _heads_last(value), ks, dilation=ds, is_causal=cs)
    out = out.movedim(-2, 1)
    if extra_w is not None:
        B, h = attn.shape[:2]
        extra = extra_w.reshape(B, h, -1, extra_w.shape[-1]) @ additional_values.to(extra_w.dtype)
        out = out + extra.reshape(out.shape)
    return out


def _fused(query, key, value, rpb, additional_keys, additional_values, ks, ds, cs, scale, backend="auto"):
    n = len(ks)
    if rpb is not None:
        rpb = rpb.to(query.dtype)
    kw = dict(dilation=ds, is_causal=cs, rpb=rpb, scale=scale, backend=backend)
    if additional_keys is not None:
        kw.update(additional_keys=additional_keys, additional_values=additional_values)
    return getattr(_kernels, f"na{n}d")(query, key, value, ks, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Under torch.jit tracing (fvcore's FLOP counter traces the model) each op is one autograd Function, so the
# trace shows one `prim::PythonOp.<name>` node per op, with NATTEN 0.17's names, that natten.flops counts. Any
# other time the ops are the plain differentiable kernel calls (fused backward, torch.compile, export).

class _TracedOp(torch.autograd.Function):
    impl = None
    n_tensors = 0

    @classmethod
    def forward(cls, ctx, *args):
        ctx.save_for_backward(*(a if isinstance(a, Tensor) else None for a in args[:cls.n_tensors]))
        ctx.rest = args[cls.n_tensors:]
        # The trace records this Function as one node. Inside it the kernels must see plain int shapes (with
        # the tracer active they are traced tensors), so the tracer is paused; the result is copied once it is
        # back, because the tracer cannot adopt a tensor made while it was paused.
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            out = cls.impl(*args)
        finally:
            torch._C._set_tracing_state(state)
        return out.clone()

    @classmethod
    def backward(cls, ctx, grad):
        # recompute: only reached when someone backpropagates through a jit-traced graph
        tensors = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = cls.impl(*tensors, *ctx.rest)
        need = [t for t in tensors if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(out, need, grad, allow_unused=True)) if need else iter(())
        grads = [next(got) if t is not None and t.requires_grad else None for t in tensors]
        return (*grads, *([None] * len(ctx.rest)))


def _traced_op(name: str, impl, n_tensors: int) -> type:
    return type(name, (_TracedOp,), {"impl": staticmethod(impl), "n_tensors": n_tensors, "__module__": __name__})


_QK_OPS = {n: _traced_op(f"NeighborhoodAttention{n}DQKAutogradFunction", _qk, 4) for n in (1, 2, 3)}
_AV_OPS = {n: _traced_op(f"NeighborhoodAttention{n}DAVAutogradFunction", _av, 3) for n in (1, 2, 3)}
_FUSED_OPS = {n: _traced_op(f"FusedNeighborhoodAttention{n}D", _fused, 6) for n in (1, 2, 3)}


def jit_tracing() -> bool:
    """True inside torch.jit tracing that is not an ONNX export (the exporter needs the plain ops)."""
    return torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()


# ---------------------------------------------------------------------------------------------------------------
# public ops

def _na_qk(n, query, key, kernel_size, dilation, additional_keys, is_causal, rpb):
    _check_tensor("query", query, n)
    _check_tensor("key", key, n)
    if key.shape != query.shape:
        raise ValueError(f"query and key shapes must match, got {tuple(query.shape)} and {tuple(key.shape)}")
    ks, ds, cs = check_args(n, kernel_size, dilation, is_causal)
    if rpb is not None:
        want = (query.shape[1], *(2 * k - 1 for k in ks))
        if not isinstance(rpb, Tensor) or tuple(rpb.shape) != want:
            got = tuple(rpb.shape) if isinstance(rpb, Tensor) else type(rpb).__name__
            raise ValueError(f"rpb must have shape [heads, 2k-1, ...] = {list(want)}, got {got}")
    _check_extra("additional_keys", additional_keys, query, "dim", query.shape[-1])
    if jit_tracing():
        return _QK_OPS[n].apply(query, key, rpb, additional_keys, ks, ds, cs)
    return _qk(query, key, rpb, additional_keys, ks, ds, cs)


def _na_av(n, attn, value, kernel_size, dilation, additional_values, is_causal):
    _check_tensor("attn", attn, n)
    _check_tensor("value", value, n)
    ks, ds, cs = check_args(n, kernel_size, dilation, is_causal)
    extra = _check_extra("additional_values", additional_values, attn, "value dim", value.shape[-1])
    want = (*value.shape[:-1], math.prod(ks) + extra)
    if tuple(attn.shape) != want:
        raise ValueError(f"attn must have shape [B, heads, *spatial, prod(kernel_size) + additional tokens] = "
                         f"{list(want)}, got {tuple(attn.shape)}")
    if jit_tracing():
        return _AV_OPS[n].apply(attn, value, additional_values, ks, ds, cs)
    return _av(attn, value, additional_values, ks, ds, cs)


def _na_fused(n, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
              additional_values, xformers_kwargs, backend="auto"):
    ks, ds, cs = check_args(n, kernel_size, dilation, is_causal)
    if (additional_keys is None) != (additional_values is None):
        raise ValueError("additional_keys and additional_values must be given together")
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if jit_tracing():
        return _FUSED_OPS[n].apply(query, key, value, rpb, additional_keys, additional_values, ks, ds, cs, scale,
                                   backend)
    return _fused(query, key, value, rpb, additional_keys, additional_values, ks, ds, cs, scale, backend)


def na1d_qk(query: Tensor, key: Tensor, kernel_size, dilation=1, additional_keys: Tensor | None = None,
            is_causal=False, rpb: Tensor | None = None) -> Tensor:
    """1-D QK: ``[B, heads, L, D]`` -> ``[B, heads, L, k]``; rpb ``[heads, 2k-1]``."""
    return _na_qk(1, query, key, kernel_size, dilation, additional_keys, is_causal, rpb)


def na2d_qk(query: Tensor, key: Tensor, kernel_size, dilation=1, additional_keys: Tensor | None = None,
            is_causal=False, rpb: Tensor | None = None) -> Tensor:
    """2-D QK: ``[B, heads, H, W, D]`` -> ``[B, heads, H, W, kh*kw]``; rpb ``[heads, 2kh-1, 2kw-1]``."""
    return _na_qk(2, query, key, kernel_size, dilation, additional_keys, is_causal, rpb)


def na3d_qk(query: Tensor, key: Tensor, kernel_size, dilation=1, additional_keys: Tensor | None = None,
            is_causal=False, rpb: Tensor | None = None) -> Tensor:
    """3-D QK: ``[B, heads, X, Y, Z, D]`` -> ``[B, heads, X, Y, Z, kx*ky*kz]``; rpb ``[heads, 2kx-1, 2ky-1, 2kz-1]``."""
    return _na_qk(3, query, key, kernel_size, dilation, additional_keys, is_causal, rpb)


def na1d_av(attn: Tensor, value: Tensor, kernel_size, dilation=1, additional_values: Tensor | None = None,
            is_causal=False) -> Tensor:
    """1-D AV: weights ``[B, heads, L, k]``, value ``[B, heads, L, D]`` -> ``[B, heads, L, D]``."""
    return _na_av(1, attn, value, kernel_size, dilation, additional_values, is_causal)


def na2d_av(attn: Tensor, value: Tensor, kernel_size, dilation=1, additional_values: Tensor | None = None,
            is_causal=False) -> Tensor:
    """2-D AV: weights ``[B, heads, H, W, kh*kw]``, value ``[B, heads, H, W, D]`` -> ``[B, heads, H, W, D]``."""
    return _na_av(2, attn, value, kernel_size, dilation, additional_values, is_causal)


def na3d_av(attn: Tensor, value: Tensor, kernel_size, dilation=1, additional_values: Tensor | None = None,
            is_causal=False) -> Tensor:
    """3-D AV: weights ``[B, heads, X, Y, Z, K]``, value ``[B, heads, X, Y, Z, D]`` -> ``[B, heads, X, Y, Z, D]``."""
    return _na_av(3, attn, value, kernel_size, dilation, additional_values, is_causal)


def na1d(query: Tensor, key: Tensor, value: Tensor, kernel_size, dilation=1, is_causal=False,
         rpb: Tensor | None = None, scale: float | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, xformers_kwargs: dict | None = None) -> Tensor:
    """Fused 1-D NA, heads-last ``[B, L, heads, D]`` (NATTEN 0.17 FNA); RPB trains too."""
    return _na_fused(1, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                     additional_values, xformers_kwargs)


def na2d(query: Tensor, key: Tensor, value: Tensor, kernel_size, dilation=1, is_causal=False,
         rpb: Tensor | None = None, scale: float | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, xformers_kwargs: dict | None = None) -> Tensor:
    """Fused 2-D NA, heads-last ``[B, H, W, heads, D]`` (NATTEN 0.17 FNA); RPB trains too."""
    return _na_fused(2, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                     additional_values, xformers_kwargs)


def na3d(query: Tensor, key: Tensor, value: Tensor, kernel_size, dilation=1, is_causal=False,
         rpb: Tensor | None = None, scale: float | None = None, additional_keys: Tensor | None = None,
         additional_values: Tensor | None = None, xformers_kwargs: dict | None = None) -> Tensor:
    """Fused 3-D NA, heads-last ``[B, X, Y, Z, heads, D]`` (NATTEN 0.17 FNA); RPB trains too."""
    return _na_fused(3, query, key, value, kernel_size, dilation, is_causal, rpb, scale, additional_keys,
                     additional_values, xformers_kwargs)


# NATTEN 0.14 / 0.15 names (deprecated in 0.17.0, removed in 0.17.5), same positional signatures

def natten1dqkrpb(query: Tensor, key: Tensor, rpb: Tensor | None, kernel_size, dilation) -> Tensor:
    return na1d_qk(query, key, kernel_size, dilation, rpb=rpb)


def natten2dqkrpb(query: Tensor, key: Tensor, rpb: Tensor | None, kernel_size, dilation) -> Tensor:
    return na2d_qk(query, key, kernel_size, dilation, rpb=rpb)


def natten3dqkrpb(query: Tensor, key: Tensor, rpb: Tensor | None, kernel_size_d, kernel_size, dilation_d,
                  dilation) -> Tensor:
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation), rpb=rpb)


def natten1dqk(query: Tensor, key: Tensor, kernel_size, dilation) -> Tensor:
    return na1d_qk(query, key, kernel_size, dilation)


def natten2dqk(query: Tensor, key: Tensor, kernel_size, dilation) -> Tensor:
    return na2d_qk(query, key, kernel_size, dilation)


def natten3dqk(query: Tensor, key: Tensor, kernel_size_d, kernel_size, dilation_d, dilation) -> Tensor:
    return na3d_qk(query, key, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))


def natten1dav(attn: Tensor, value: Tensor, kernel_size, dilation) -> Tensor:
    return na1d_av(attn, value, kernel_size, dilation)


def natten2dav(attn: Tensor, value: Tensor, kernel_size, dilation) -> Tensor:
    return na2d_av(attn, value, kernel_size, dilation)


def natten3dav(attn: Tensor, value: Tensor, kernel_size_d, kernel_size, dilation_d, dilation) -> Tensor:
    return na3d_av(attn, value, (kernel_size_d, kernel_size, kernel_size), (dilation_d, dilation, dilation))
