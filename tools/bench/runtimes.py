"""The runtime modes a model is timed in, registered by name: `eager`, `compile` (torch.compile), `amp` (autocast,
CUDA) and `onnx` (exported, run by onnxruntime on CPU).

A mode is a `Runtime`: the devices it runs on, the packages whose versions go into the report, and `prepare`,
which turns an eval-mode model into `bind(x) -> call`, a zero-argument callable the timer runs (inputs converted
once, outside the timed call). A new runtime (OpenVINO, TensorRT, ...) is one `register(Runtime(...))`: the
models suite, its `--modes` choices, the report's columns (`<mode>_p50_ms`, `<mode>_ips`, ...) and the
version capture follow.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .protocol import Protocol


@dataclass
class Context:
    """What `prepare` may use: the device, input side, protocol, CPU threads, options, a place for cleanups and
    for extra fields of the row (`extras`, e.g. the threads a runtime was given)."""
    device: torch.device
    size: int
    protocol: Protocol
    threads: int | None = None
    fullgraph: bool = False
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime:
    name: str
    help: str
    prepare: Callable[[nn.Module, Context], Callable[[torch.Tensor], Callable[[], object]]]
    devices: tuple[str, ...] = ("cpu", "cuda")
    packages: tuple[str, ...] = ()


RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    if runtime.name in RUNTIMES:
        raise ValueError(f"runtime {runtime.name!r} is registered already")
    RUNTIMES[runtime.name] = runtime
    return runtime


def default_modes(device: str) -> list[str]:
    return ["eager", "compile", "amp"] if device == "cuda" else ["eager", "compile", "onnx"]


def packages(modes) -> tuple[str, ...]:
    """Distributions whose versions the report records for `modes`."""
    return tuple(p for m in modes for p in RUNTIMES[m].packages)


def _eager(model, ctx):
    return lambda x: (lambda: model(x))


def _compile(model, ctx):
    compiled = torch.compile(model, fullgraph=ctx.fullgraph)
    return lambda x: (lambda: compiled(x))


def _amp(model, ctx):
    dtype = getattr(torch, ctx.protocol.amp_dtype)
    ctx.extras["amp_dtype"] = ctx.protocol.amp_dtype

    def bind(x):
        def call():
            with torch.autocast(ctx.device.type, dtype=dtype):
                return model(x)
        return call

    return bind


def _onnx(model, ctx):
    """Exported once with a dynamic batch (the dynamo exporter, opset 18, attention on its exportable `torch`
    path), run by onnxruntime's CPU provider at ORT_ENABLE_ALL with the same threads as torch."""
    from visionattn.export import ort_session, save_onnx
    from visionattn.utils import attn_modules

    path = Path(ctx.stack.enter_context(tempfile.TemporaryDirectory())) / "model.onnx"
    saved = {m: m.backend for m in attn_modules(model)}
    try:
        for m in saved:
            m.backend = "torch"
        save_onnx(model, torch.randn(2, 3, ctx.size, ctx.size), path, opset=18, dynamic=True)
    finally:
        for m, backend in saved.items():
            m.backend = backend
    sess = ort_session(path, ctx.threads)
    ctx.extras["onnx_threads"] = ctx.threads or "onnxruntime default"
    name = sess.get_inputs()[0].name

    def bind(x):
        feed = {name: x.detach().cpu().numpy()}
        return lambda: sess.run(None, feed)

    return bind


register(Runtime("eager", "PyTorch eager", _eager))
register(Runtime("compile", "torch.compile (inductor); --fullgraph makes a graph break an error", _compile))
register(Runtime("amp", "eager under autocast (the protocol's dtype; bfloat16 by default)", _amp, devices=("cuda",)))
register(Runtime("onnx", "ONNX (dynamo exporter, opset 18) on onnxruntime's CPU provider", _onnx, devices=("cpu",),
                 packages=("onnx", "onnxruntime")))
