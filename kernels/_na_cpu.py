"""The compiled CPU kernel of neighborhood attention (``csrc/na_cpu.cpp``): build, load, dispatch check, preference.

The C++ source is built with ``torch.utils.cpp_extension`` on first use (or ahead of time with
``python -m visionattn.kernels._na_cpu``) into a cache folder, ``$VISIONATTN_CACHE`` or
``~/.cache/visionattn``, one build per torch version, CPU (it is compiled for the host's instruction set)
and source. It is optional: without a C++ compiler, ninja or OpenMP, NA runs on the ``torch`` backend and one
warning says why. ``VISIONATTN_NA_CPU=0`` turns it off.

The kernel is registered as ``torch.ops.visionattn_cpu.na_forward`` / ``na_backward`` (TORCH_LIBRARY, fake
implementations here); NA's ``cpu`` backend runs it inside the ``visionattn::na_forward`` / ``na_backward`` ops
(``ops.py``) through ``forward`` / ``backward``. float16 / bfloat16 inputs run in float32.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from visionattn._environment import settings

from ._common import exporting

__all__ = ["available", "backward", "build", "forward", "load_error", "preferred", "unsupported"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "na_cpu.cpp"
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-Wno-psabi"]
_LDFLAGS = ["-fopenmp"]
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_lock = threading.Lock()
_state: dict = {}  # "ok": bool once available() ran, "error": why the kernel is unavailable


def _cpu_id() -> str:
    """What -march=native depends on: the instruction-set flags of this CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _build_dir() -> Path:
    root = settings().cache_dir
    key = hashlib.sha256()
    for part in (torch.__version__, _cpu_id(), " ".join(_CFLAGS), _SOURCE.read_bytes()):
        key.update(part if isinstance(part, bytes) else part.encode())
    return root / "na_cpu" / key.hexdigest()[:16]


def _find_ninja() -> None:
    """torch.utils.cpp_extension runs `ninja` from PATH: where it is not there, the ninja of this environment
    (the `ninja` package, or the interpreter's bin folder of a venv that was not activated) is appended."""
    if shutil.which("ninja"):
        return
    try:
        import ninja

        folder = ninja.BIN_DIR
    except (ImportError, AttributeError):
        folder = os.path.dirname(sys.executable)
    os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + folder


def build(verbose: bool = False) -> Path:
    """Compile (or find the cached build of) the kernel and load it into torch; returns the build folder.

    Raises whatever the compiler toolchain raises; ``available()`` is the non-raising form.
    """
    from torch.utils import cpp_extension

    folder = _build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    _find_ninja()
    cpp_extension.load(name="visionattn_na_cpu", sources=[str(_SOURCE)], extra_cflags=_CFLAGS,
                       extra_ldflags=_LDFLAGS, build_directory=str(folder), is_python_module=False,
                       verbose=verbose)
    _register()
    return folder


@torch.compiler.assume_constant_result  # dynamo runs it once at trace time (it may build), never traces it
def available() -> bool:
    """True when the kernel is built and loaded (building it on first call); warns once when it cannot be."""
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        if not settings().na_cpu:
            _state.update(ok=False, error="disabled by VISIONATTN_NA_CPU=0")
            return False
        try:
            build()
            _state.update(ok=True, error=None)
        except Exception as e:  # no compiler, no ninja, no OpenMP, read-only cache: the torch path still works
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            _state.update(ok=False, error=reason)
            warnings.warn(f"visionattn: the compiled NA CPU kernel is unavailable ({reason}); neighborhood "
                          "attention on CPU uses the slower torch path", RuntimeWarning, stacklevel=2)
    return _state["ok"]


def load_error() -> str | None:
    """Why the kernel is unavailable (None when it is loaded or not tried yet)."""
    return _state.get("error")


def _register() -> None:
    if _state.get("registered"):
        return
    ns = "visionattn_cpu"

    @torch.library.register_fake(f"{ns}::na_forward")
    def _forward_fake(query, key, value, rpb, kernel_size, stride, dilation, is_causal, scale):
        return query.new_empty((*query.shape[:-1], value.shape[-1])), query.new_empty(query.shape[:-1])

    @torch.library.register_fake(f"{ns}::na_backward")
    def _backward_fake(grad_out, query, key, value, rpb, lse, delta, kernel_size, stride, dilation, is_causal,
                       scale):
        return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value),
                None if rpb is None else torch.empty_like(rpb))

    _state["registered"] = True


def unsupported(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg) -> str | None:
    """None when the compiled kernel runs these arguments, else why not (the dispatch's ``check``)."""
    if q.device.type != "cpu":
        return f"runs on CPU tensors only, got {q.device}"
    if q.dtype not in _DTYPES:
        return f"dtype must be one of {_DTYPES}, got {q.dtype}"
    if exporting():
        return "not while exporting (the exported graph holds the torch path)"
    if not available():
        return f"the compiled NA CPU kernel is unavailable ({load_error()})"
    return None


def preferred(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg, needs_grad: bool) -> bool:
    """Whether ``backend="auto"`` runs these arguments (which the kernel supports) on this kernel rather than on the
    torch path: always, for now (``dispatch.na_auto``)."""
    return True


def _args(cfg) -> tuple:
    return list(cfg.kernel_size), list(cfg.stride), list(cfg.dilation), list(cfg.is_causal), float(cfg.scale)


def _compute(t: Tensor | None) -> Tensor | None:
    """The kernel runs float32 / float64: float16 / bfloat16 inputs run in float32."""
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg) -> tuple[Tensor, Tensor]:
    """(out in q's dtype, natural logsumexp ``[B, *spatial, heads]`` in float32 / float64); no autograd (the
    ``visionattn::na_forward`` op calls it). ``cfg`` is ``na.NAConfig``."""
    out, lse = torch.ops.visionattn_cpu.na_forward(_compute(q), _compute(k), _compute(v), _compute(rpb), *_args(cfg))
    return out.to(q.dtype), lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, lse: Tensor, delta: Tensor, cfg,
             need_drpb: bool = True) -> tuple:
    """(d q, d k, d v, d rpb or None) from the forward's natural logsumexp and ``delta`` = sum(dout * out, -1)
    (minus the logsumexp's gradient, if any): the softmax may be a merged one (extra keys)."""
    dq, dk, dv, drpb = torch.ops.visionattn_cpu.na_backward(_compute(dout), _compute(q), _compute(k), _compute(v),
                                                            _compute(rpb), lse, delta, *_args(cfg))
    drpb = drpb.to(rpb.dtype) if need_drpb and drpb is not None else None
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), drpb


if __name__ == "__main__":  # `python -m visionattn.kernels._na_cpu`: build ahead of time (make)
    try:
        where = build(verbose="-v" in sys.argv[1:])
    except Exception as e:
        print(f"NA CPU kernel build failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"NA CPU kernel built: {where}")
