"""What the NA and BRA kernels share: argument checks, backend choice, constants, graph-capture detection.

Argument errors are ``ValueError`` naming the argument and the allowed range. A backend is a ``Backend``
(run function + ``check``, NATTEN's ``choose_backend`` idea): ``check(*args)`` returns ``None`` when the
backend runs these arguments, otherwise the reason (naming the unsupported argument or feature).
``choose_backend`` raises that reason for an explicit backend and skips the backend under ``"auto"``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LOG2E", "Backend", "choose_backend", "interpreting", "exporting", "capturing", "to_tuple",
           "check_int", "check_scale", "check_choice", "register_autocast"]

LOG2E = math.log2(math.e)  # kernels work in the log2 domain (exp2 is the fast instruction)


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def exporting() -> bool:
    """True while exporting to ONNX or tracing with ``torch.jit.trace``: the kernels run as plain torch ops
    (their index tensors become graph constants) instead of the visionattn custom ops. ``torch.export`` and
    ``torch.compile`` keep the custom ops."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing())


def capturing() -> bool:
    """Any graph capture (dynamo, ``torch.export``, ONNX, ``torch.jit.trace``): no data-dependent checks, no
    Python-side caches."""
    return exporting() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def to_tuple(x, n: int, name: str, kind: type = int) -> tuple:
    """An int (bool for ``kind=bool``) or a length-n sequence of them -> an n-tuple; ValueError otherwise."""
    ok = (lambda v: isinstance(v, bool)) if kind is bool else _is_int
    if ok(x):
        return (x,) * n
    if isinstance(x, Sequence) and not isinstance(x, str) and len(x) == n and all(ok(v) for v in x):
        return tuple(x)
    what = "a bool" if kind is bool else "an int"
    raise ValueError(f"{name} must be {what} or a tuple of {n} (one per spatial axis), got {x!r}")


def check_int(name: str, x, lo: int, hi: int | None = None) -> int:
    """An int in [lo, hi] (hi None: unbounded); ValueError naming `name` and the range otherwise."""
    if not _is_int(x) or x < lo or (hi is not None and x > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {rng}, got {x!r}")
    return x


def check_scale(scale, default: float) -> float:
    """``None`` -> default; otherwise a finite real number."""
    if scale is None:
        return float(default)
    if isinstance(scale, Tensor) or isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def check_choice(name: str, x, choices) -> None:
    if x not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {x!r}")


class Backend(NamedTuple):
    """One implementation: ``run(*args)`` and ``check(*args) -> None | reason it cannot run them``."""

    run: Callable
    check: Callable[..., str | None]

    def can_run(self, *args) -> bool:
        return self.check(*args) is None


def choose_backend(requested: str, backends: dict[str, Backend], auto_order: Sequence[str], *args) -> str:
    """The backend to run: ``requested`` if it can (else ValueError with its reason); for ``"auto"`` the first
    of ``auto_order`` that can."""
    if requested == "auto":
        for name in auto_order:
            if backends[name].can_run(*args):
                return name
        raise ValueError(f"no backend runs these arguments (tried {tuple(auto_order)})")
    check_choice("backend", requested, ("auto", *backends))
    reason = backends[requested].check(*args)
    if reason is not None:
        raise ValueError(f"backend={requested!r}: {reason}")
    return requested


_LIB = torch.library.Library("visionattn", "FRAGMENT")  # noqa: TOR901  (autocast kernels of the custom ops)


def register_autocast(op, name: str) -> None:
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
