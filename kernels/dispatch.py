"""Which implementation runs an NA or BRA call: the backend names, the one ``auto`` policy, the checks.

The public functions (``na.py``, ``bra.py``) call ``na_backend`` / ``bra_backend`` once per call; the custom ops
receive the result, never ``"auto"``. An explicit backend that cannot run the arguments is a ``ValueError``
giving the reason (the backend's ``unsupported()``); ``"auto"`` follows ``na_auto`` / ``bra_auto``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from visionattn._environment import settings

from . import na_natten
from ._common import exporting
from .checks import NAConfig, check_choice

__all__ = ["NA_BACKENDS", "BRA_BACKENDS", "NA_CHECKS", "BRA_CHECKS", "na_auto", "bra_auto", "na_backend",
           "bra_backend"]

NA_BACKENDS = ("auto", "reference", "torch", "gather", "triton", "cpu", "natten")
BRA_BACKENDS = ("auto", "reference", "torch", "triton")


def _na_triton(q, k, v, rpb, cfg: NAConfig) -> str | None:
    if exporting():
        return "the fused kernel cannot be exported to ONNX or traced by torch.jit; use backend='torch'"
    try:
        from .na_triton import unsupported
    except ImportError as e:
        return f"needs triton ({e}); use backend='torch'"
    return unsupported(q, k, v, rpb, cfg)


def _na_cpu_check(q, k, v, rpb, cfg: NAConfig) -> str | None:
    # imported on use: `python -m visionattn.kernels._na_cpu` (the ahead-of-time build) runs that module as __main__
    from . import _na_cpu

    return _na_cpu.unsupported(q, k, v, rpb, cfg)


def _bra_triton(q, k, v, index, region_size, scale) -> str | None:
    if exporting():
        return "the fused kernel cannot be exported to ONNX or traced by torch.jit; use backend='torch'"
    try:
        from .bra_triton import unsupported
    except ImportError as e:
        return f"needs triton ({e}); use backend='torch'"
    return unsupported(q, k, v)


# why a backend cannot run a call (None: it can); backends not listed run every valid call. Extra keys never stop
# a backend (the fused kernels' glue attends to them), so the NA checks do not take them.
NA_CHECKS = {"triton": _na_triton, "cpu": _na_cpu_check, "natten": na_natten.unsupported}
BRA_CHECKS = {"triton": _bra_triton}


def _device(q: Tensor) -> str:
    """The device type the policy decides for (a seam for tests of the CUDA branch on CPU-only machines)."""
    return q.device.type


def na_auto(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg: NAConfig, ak=None, av=None) -> str:
    """The ``auto`` policy of neighborhood attention, per device:

    - ONNX export and ``torch.jit.trace``: ``torch`` (the exported graph holds plain torch ops; the kernels' checks
      refuse while exporting);
    - CPU: ``cpu`` (the compiled kernel) where it runs the arguments and ``_na_cpu.preferred`` chooses it,
      else ``torch``;
    - CUDA: ``triton`` with ``VISIONATTN_NA_AUTO_TRITON=1`` where the fused kernel runs the arguments, else
      ``torch`` (the fused NA kernel is interpreter-tested and compiles for sm_90 but has not run on a GPU yet);
    - any other device: ``torch``.
    """
    device = _device(q)
    if device == "cpu" and NA_CHECKS["cpu"](q, k, v, rpb, cfg) is None:
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                     for t in (q, k, v, rpb, ak, av))
        from . import _na_cpu

        if _na_cpu.preferred(q, k, v, rpb, cfg, needs_grad):
            return "cpu"
    if device == "cuda" and settings().na_auto_triton and NA_CHECKS["triton"](q, k, v, rpb, cfg) is None:
        return "triton"
    return "torch"


def bra_auto(q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size, scale: float) -> str:
    """The ``auto`` policy of routed attention, per device:

    - ONNX export and ``torch.jit.trace``: ``torch`` (one plain graph of 4-D ops; the kernel's check refuses while
      exporting);
    - CUDA: ``triton`` where the fused kernel runs the arguments (also under ``torch.compile`` / ``torch.export``),
      else ``torch``;
    - CPU and any other device: ``torch`` (PyTorch's flash-attention kernels, region by region).
    """
    if _device(q) == "cuda" and BRA_CHECKS["triton"](q, k, v, index, region_size, scale) is None:
        return "triton"
    return "torch"


def _chosen(requested: str, names: tuple, checks: dict, args: tuple) -> str:
    check_choice("backend", requested, names)
    reason = checks[requested](*args) if requested in checks else None
    if reason is not None:
        raise ValueError(f"backend={requested!r}: {reason}")
    return requested


def na_backend(requested: str, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg: NAConfig, ak=None,
               av=None) -> str:
    """The implementation that runs a validated NA call: ``requested`` if it can (else ValueError with the
    reason), the ``na_auto`` policy for ``"auto"``."""
    if requested == "auto":
        return na_auto(q, k, v, rpb, cfg, ak, av)
    return _chosen(requested, NA_BACKENDS, NA_CHECKS, (q, k, v, rpb, cfg))


def bra_backend(requested: str, q: Tensor, k: Tensor, v: Tensor, index: Tensor, region_size, scale: float) -> str:
    """The implementation that runs a validated routed-attention call (see ``na_backend``)."""
    if requested == "auto":
        return bra_auto(q, k, v, index, region_size, scale)
    return _chosen(requested, BRA_BACKENDS, BRA_CHECKS, (q, k, v, index, region_size, scale))
