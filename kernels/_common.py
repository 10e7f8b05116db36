"""What the kernel files share: log constants, the accumulation dtype, graph-capture predicates, the index cache."""
from __future__ import annotations

import contextlib
import math

import torch

from visionattn._environment import settings

__all__ = ["LOG2E", "LN2", "acc_dtype", "interpreting", "exporting", "capturing", "untraced", "concrete", "cached"]

LOG2E = math.log2(math.e)  # kernels work in the log2 domain (exp2 is the fast instruction)
LN2 = math.log(2.0)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / logsumexp dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return settings().triton_interpret


def exporting() -> bool:
    """True while exporting to ONNX or tracing with ``torch.jit.trace``: the kernels run as plain torch ops
    (their index tensors become graph constants) instead of the visionattn custom ops. ``torch.export`` and
    ``torch.compile`` keep the custom ops."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def capturing() -> bool:
    """Any graph capture (dynamo, ``torch.export``, ONNX, ``torch.jit.trace``): no data-dependent checks, no
    Python-side caches."""
    return exporting() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


@contextlib.contextmanager
def untraced():
    """Pause ``torch.jit.trace`` recording: argument checks read concrete shapes (ints, not traced size tensors),
    record nothing and warn nothing. Only for code whose tensors do not reach the graph."""
    state = torch._C._get_tracing_state()
    if state is None:
        yield
        return
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def concrete(x):
    """A size argument as a Python int where ``torch.jit.trace`` made it a 0-dim integer tensor (a model computing
    it from a traced shape), else unchanged. Call inside ``untraced()``: the value is fixed in the trace, like the
    shape it came from."""
    if isinstance(x, torch.Tensor) and x.dim() == 0 and not (x.is_floating_point() or x.is_complex()
                                                            or x.dtype == torch.bool):
        return int(x)
    if isinstance(x, (tuple, list)):
        return type(x)(concrete(v) for v in x)
    return x


_CACHE: dict = {}
_CACHE_MAX = 256


def cached(key, build):
    """``build()`` once per ``key`` (index tensors of one configuration); never cached while capturing a graph,
    where the index tensors must be graph constants."""
    if capturing():
        return build()
    val = _CACHE.get(key)
    if val is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        val = _CACHE[key] = build()
    return val
