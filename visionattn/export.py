"""ONNX export with onnxruntime parity and CPU latency, for any zoo model."""
from __future__ import annotations

import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .utils import fuse_for_inference, is_reparameterizable, set_attn_backend

__all__ = ["export_onnx", "ort_session", "time_fn"]


def time_fn(fn, warmup: int = 3, reps: int = 10) -> float:
    """Median wall time of `fn()` in milliseconds after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def ort_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> str:
    """Export with the dynamo exporter; fall back to the TorchScript exporter if it fails."""
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(
                model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=dyn, verbose=False,
                input_names=["x"], output_names=["logits"],
            )
            prog.save(str(path))
        return "dynamo"
    except Exception as err:  # noqa: BLE001 - report and try the other exporter
        warnings.warn(f"dynamo export failed ({type(err).__name__}: {err}); using the TorchScript exporter",
                      stacklevel=2)
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=min(opset, 17), input_names=["x"],
        output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
    )
    return "torchscript"


@torch.no_grad()
def export_onnx(
    model: nn.Module | str,
    out_path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 1,
    opset: int = 18,
    dynamic: bool = False,
    fuse: bool = True,
    atol: float = 1e-4,
    threads: int | None = None,
    slim: bool = False,
    reps: int = 10,
    check: bool = True,
) -> dict:
    """Export `model` (a module or a zoo model name) to ONNX and validate it with onnxruntime.

    Attention kernels switch to their exportable `torch` path; re-parameterisable models are fused first
    (`fuse=False` keeps them as they are). Returns model / onnx / max_abs_diff / ort_ms / torch_ms / opset
    (and exporter); raises AssertionError when `check` and the logits differ by more than `atol`.
    """
    import timm

    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = timm.create_model(model, pretrained=False)
    model = model.eval()
    if fuse and is_reparameterizable(model):
        model = fuse_for_inference(model)
    set_attn_backend(model, "torch")
    if img_size is None:
        img_size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[1:])
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    x = torch.randn(batch, 3, h, w)

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter = _export(model, x, path, opset, dynamic)
    if slim:
        import onnxslim

        onnxslim.slim(str(path), str(path))

    if threads:
        torch.set_num_threads(threads)
    ref = model(x)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    sess = ort_session(path, threads)
    in_name = sess.get_inputs()[0].name
    feed = {in_name: x.numpy()}
    got = torch.from_numpy(sess.run(None, feed)[0])
    diff = (got.double() - ref.double()).abs().max().item()
    result = {
        "model": name,
        "onnx": str(path),
        "max_abs_diff": diff,
        "ort_ms": time_fn(lambda: sess.run(None, feed), reps=reps),
        "torch_ms": time_fn(lambda: model(x), reps=reps),
        "opset": opset,
        "exporter": exporter,
    }
    if check and not diff <= atol:
        raise AssertionError(f"{name}: onnxruntime differs from PyTorch by {diff:.3e} > atol {atol:.0e}")
    return result
