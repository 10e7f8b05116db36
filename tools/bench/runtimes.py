"""The runtime modes a model is timed in, registered by name: `eager`, `compile` (torch.compile), `amp` (autocast,
CUDA), `onnx` (exported, run by onnxruntime on CPU) and `openvino` (the same ONNX file, run by OpenVINO on CPU).

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
    # shared by the modes of one model's row (e.g. the ONNX file the onnx and openvino modes both run), with the
    # stack its resources live on (the row's, closed after its last mode)
    shared: dict = field(default_factory=dict)
    shared_stack: contextlib.ExitStack | None = None


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


def _export(model, ctx) -> Path:
    """The model exported into a temporary folder with a dynamic batch (the dynamo exporter, opset 20, attention on
    its exportable `torch` path), once per row: the ONNX modes share the file."""
    from visionattn.export import DEFAULT_OPSET, save_onnx
    from visionattn.utils import attn_modules

    if ctx.shared.get("onnx_file"):
        return ctx.shared["onnx_file"]
    stack = ctx.shared_stack or ctx.stack
    path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model.onnx"
    saved = {m: m.backend for m in attn_modules(model)}
    try:
        for m in saved:
            m.backend = "torch"
        save_onnx(model, torch.randn(2, 3, ctx.size, ctx.size), path, opset=DEFAULT_OPSET, dynamic=True)
    finally:
        for m, backend in saved.items():
            m.backend = backend
    ctx.shared["onnx_file"] = path
    return path


def _onnx_runtime(runtime: str):
    """`prepare` of an ONNX runtime (visionattn.export.onnx_runner): the exported file run with the same threads as
    torch; inputs converted to numpy once, outside the timed call."""

    def prepare(model, ctx):
        from visionattn.export import onnx_runner

        run = onnx_runner(_export(model, ctx), runtime, threads=ctx.threads)
        ctx.extras[f"{'onnx' if runtime == 'onnxruntime' else runtime}_threads"] = ctx.threads or f"{runtime} default"

        def bind(x):
            feed = x.detach().cpu().numpy()
            return lambda: run(feed)

        return bind

    return prepare


register(Runtime("eager", "PyTorch eager", _eager))
register(Runtime("compile", "torch.compile (inductor); --fullgraph makes a graph break an error", _compile))
register(Runtime("amp", "eager under autocast (the protocol's dtype; bfloat16 by default)", _amp, devices=("cuda",)))
register(Runtime("onnx", "ONNX (dynamo exporter, opset 20) on onnxruntime's CPU provider", _onnx_runtime("onnxruntime"),
                 devices=("cpu",), packages=("onnx", "onnxruntime")))
register(Runtime("openvino", "the same ONNX file on OpenVINO's CPU plugin (f32 inference precision)",
                 _onnx_runtime("openvino"), devices=("cpu",), packages=("onnx", "openvino")))
