"""ONNX export (torch.onnx's dynamo exporter) with onnxruntime parity, for any zoo model. Latency is measured by
the benchmarks' one timer and protocol (tools/bench; tools/export_onnx.py reports it)."""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .utils import attn_modules, fuse_for_inference, is_reparameterizable, set_attn_backend

__all__ = ["ONNX_OPSETS", "OnnxParityError", "export_onnx", "save_onnx", "onnx_opset", "is_own_export", "ort_session"]

# Opsets the dynamo exporter writes: it builds the graph at opset 18 (torch.onnx's torchlib opset) and
# converts upward with onnxscript's version converter, which supports targets up to 25. Lower targets go
# through onnx's C converter, which fails for many ops and then leaves the graph at 18 without an error.
ONNX_OPSETS = tuple(range(18, 26))


class OnnxParityError(AssertionError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


# metadata key marking a file this module wrote (tools overwrite only their own files)
_MARK = "visionattn.export"


def ort_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in ONNX_OPSETS:
        raise ValueError(f"opset must be one of {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]} (the opsets torch.onnx's dynamo "
                         f"exporter writes), got {opset!r}")
    return opset


def onnx_opset(path: str | os.PathLike) -> int:
    """The default-domain (ai.onnx) opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def is_own_export(path: str | os.PathLike) -> bool:
    """True when `path` is an ONNX file written by `save_onnx` / `export_onnx` (tools overwrite only these)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything that is not a readable ONNX model is not ours
        return False
    return any(p.key == _MARK for p in model.metadata_props)


def _mark(path: Path, name: str) -> None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not any(p.key == _MARK for p in model.metadata_props):
        entry = model.metadata_props.add()
        entry.key, entry.value = _MARK, name
        onnx.save(model, str(path))


@contextlib.contextmanager
def _replace_on_success(path: Path):
    """Yield a temporary path beside `path`; it replaces `path` only when the block succeeds (a kill or an error
    never leaves a half-written file under `path`)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    dyn = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            model, (x,), dynamo=True, opset_version=opset, dynamic_shapes=dyn, verbose=False,
            input_names=["x"], output_names=["logits"],
        )
    prog.save(str(path))
    got = onnx_opset(path)
    if got != opset:
        raise ValueError(f"opset {opset} requested but the exporter wrote opset {got} (a conversion it does not "
                         f"support for this graph); use one of {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]} that works here")


@torch.no_grad()
def save_onnx(model: nn.Module, x: torch.Tensor, path: str | os.PathLike, *, opset: int = 18,
              dynamic: bool = False, slim: bool = False) -> int:
    """Export `model` called on `x` to `path` with the dynamo exporter, at exactly `opset` (one of ONNX_OPSETS).

    Input `x`, output `logits`; `dynamic` makes the batch axis dynamic; `slim` runs onnxslim on the graph.
    The file appears complete or not at all. Returns the opset written; raises ValueError when the exporter
    could not produce `opset`.
    """
    check_opset(opset)
    path = Path(path)
    with _replace_on_success(path) as tmp:
        _export_dynamo(model, x, tmp, opset, dynamic)
        if slim:
            import onnxslim

            onnxslim.slim(str(tmp), str(tmp))
            if onnx_opset(tmp) != opset:
                raise ValueError(f"onnxslim changed the opset from {opset} to {onnx_opset(tmp)}")
        _mark(tmp, type(model).__name__)
    return opset


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
    check: bool = True,
    return_session: bool = False,
) -> dict:
    """Export `model` (a module or a zoo model name) to ONNX at `opset` and validate it with onnxruntime.

    Attention kernels switch to their exportable `torch` path; re-parameterisable models are fused first
    (`fuse=False` keeps them as they are). Returns model / onnx / max_abs_diff / opset (the opset in the file)
    and exporter, with `return_session` also `session` (the onnxruntime session), `module` (the exported,
    eval-mode module) and `input` (the example input), what a latency measurement needs; raises OnnxParityError
    (an AssertionError) when `check` and the logits differ by more than `atol`, ValueError for bad arguments or
    when the exporter cannot write `opset`.
    """
    import timm

    check_opset(opset)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1, got {threads!r}")
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
            raise ValueError(f"img_size must be None, an integer >= 1 or (H, W) of integers >= 1, got {img_size!r}")
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = timm.create_model(model, pretrained=False)
    model = model.eval()
    if fuse and is_reparameterizable(model):
        model = fuse_for_inference(model)
    if attn_modules(model):
        set_attn_backend(model, "torch")
    if img_size is None:
        img_size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[1:])
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    x = torch.randn(batch, 3, h, w)

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(model, x, path, opset=opset, dynamic=dynamic, slim=slim)
    written = onnx_opset(path)

    if threads:
        torch.set_num_threads(threads)
    ref = model(x)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref
    sess = ort_session(path, threads)
    in_name = sess.get_inputs()[0].name
    feed = {in_name: x.numpy()}
    got = torch.from_numpy(sess.run(None, feed)[0])
    diff = (got.double() - ref.double()).abs().max().item()
    result = {"model": name, "onnx": str(path), "max_abs_diff": diff, "opset": written, "exporter": "dynamo"}
    if check and not diff <= atol:
        raise OnnxParityError(f"{name}: onnxruntime differs from PyTorch by {diff:.3e} > atol {atol:.0e}")
    if return_session:
        result.update(session=sess, module=model, input=x)
    return result
