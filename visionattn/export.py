"""ONNX export with parity against PyTorch in onnxruntime and OpenVINO, for any zoo model.

Two exporters (`dynamo`: torch.onnx's torch.export-based exporter, the default; `torchscript`: the trace-based
one), a dynamic batch and / or height and width (`dynamic="batch" | "hw" | "all"`), the graph in fp32 or fp16,
the model's preprocessing (timm's data config) in the file's metadata, and onnxruntime's CPU / CUDA / TensorRT
providers. A dynamic size is checked, not assumed: the file is run at a second batch / size against eager, and
where that fails nothing is written (`ExportUnsupported`). Latency is measured by the benchmarks' one timer and
protocol (tools/bench; tools/export_onnx.py reports it).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .utils import attn_modules, fuse_for_inference, is_reparameterizable, set_attn_backend

__all__ = ["ONNX_OPSETS", "DEFAULT_OPSET", "EXPORTERS", "DYNAMIC", "DTYPES", "PROVIDERS", "RUNTIMES", "FP16_RTOL",
           "OnnxParityError", "ExportUnsupported", "check_provider", "export_onnx", "save_onnx", "onnx_opset",
           "is_own_export", "ort_session", "onnx_runner", "read_metadata", "preprocessing", "dynamic_axes"]

# Opsets the dynamo exporter writes: it builds the graph at opset 18 (torch.onnx's torchlib opset) and
# converts upward with onnxscript's version converter, which supports targets up to 25. Lower targets go
# through onnx's C converter, which fails for many ops and then leaves the graph at 18 without an error.
ONNX_OPSETS = tuple(range(18, 26))
# the default: opset 20 has Gelu as one op, which onnxruntime runs as one kernel (nat_mini bs8 on AVX2, 1 thread:
# 3 % less time than the erf formula of opset 18)
DEFAULT_OPSET = 20
# the TorchScript (trace-based) exporter writes opsets 7..20; 14 is the first with the ops the zoo needs
TORCHSCRIPT_OPSETS = tuple(range(14, 21))
EXPORTERS = ("dynamo", "torchscript")
DYNAMIC = ("none", "batch", "hw", "all")
DTYPES = ("fp32", "fp16")
# onnxruntime execution providers by the name the tools take; each falls back to the next for unsupported nodes
PROVIDERS = {"cpu": ("CPUExecutionProvider",),
             "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
             "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")}
RUNTIMES = ("onnxruntime", "openvino")
# fp16 graphs are checked against the fp32 eager model: max |fp16 - fp32| <= FP16_RTOL * max(1, max |fp32 logits|)
# (measured: about 1e-3 of the largest logit for nat_mini / biformer_t at 128 px, in onnxruntime and OpenVINO)
FP16_RTOL = 1e-2


class OnnxParityError(AssertionError):
    """A runtime's output differs from PyTorch's by more than the tolerance."""


class ExportUnsupported(ValueError):
    """What was asked cannot be honoured here: a dynamic size the model or its graph fixes, an exporter that cannot
    trace the model, an execution provider or runtime that is not installed. Tools answer it with exit 2."""


# metadata key marking a file this module wrote (tools overwrite only their own files)
_MARK = "visionattn.export"
# metadata keys of the preprocessing (timm's data config), values JSON
PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_PRE = "preprocess."


# ------------------------------------------------------------------------------------------------ runtimes


def check_provider(provider: str) -> tuple[str, ...]:
    """The onnxruntime providers (in order) of `provider` (cpu, cuda, tensorrt); ExportUnsupported when the
    installed onnxruntime does not have it."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    wanted = PROVIDERS[provider]
    have = ort.get_available_providers()
    if wanted[0] not in have:
        raise ExportUnsupported(f"onnxruntime provider {provider!r} ({wanted[0]}) is not available: onnxruntime "
                                f"{ort.__version__} here has {', '.join(have)}"
                                + ("; install onnxruntime-gpu" if provider != "cpu" else ""))
    return tuple(p for p in wanted if p in have)


def ort_session(path: str | os.PathLike, threads: int | None = None, provider: str = "cpu"):
    """An onnxruntime session on `provider` (cpu, cuda, tensorrt) at ORT_ENABLE_ALL; ExportUnsupported when the
    provider is not available in the installed onnxruntime or fails to load."""
    import onnxruntime as ort

    wanted = check_provider(provider)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=list(wanted))
    if sess.get_providers()[0] != wanted[0]:  # onnxruntime falls back to CPU silently when a GPU library is missing
        raise ExportUnsupported(f"onnxruntime provider {provider!r} ({wanted[0]}) failed to load (session runs on "
                                f"{sess.get_providers()[0]}); check the CUDA / TensorRT libraries")
    return sess


def _openvino_model(path, threads: int | None):
    try:
        import openvino as ov
    except ImportError:
        raise ExportUnsupported("OpenVINO is not installed (pip install openvino, or the project's "
                                "'openvino' extra)") from None
    # f32 execution on every CPU: OpenVINO would otherwise run fp32 graphs in bf16 where the CPU has it
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return ov.Core().compile_model(str(path), "CPU", config)


def onnx_runner(path: str | os.PathLike, runtime: str = "onnxruntime", *, threads: int | None = None,
                provider: str = "cpu"):
    """`run(x: np.ndarray) -> np.ndarray` (the first output) of the ONNX file at `path` in `runtime`
    (onnxruntime on `provider`, or OpenVINO on CPU). Raises ExportUnsupported where the runtime / provider is
    not available."""
    if runtime == "onnxruntime":
        sess = ort_session(path, threads, provider)
        name = sess.get_inputs()[0].name

        def run(x):
            return sess.run(None, {name: x})[0]

        run.session = sess
        return run
    if runtime == "openvino":
        if provider != "cpu":
            raise ExportUnsupported(f"--provider {provider} is an onnxruntime provider; OpenVINO runs on CPU here")
        compiled = _openvino_model(path, threads)
        req = compiled.create_infer_request()

        def run(x):
            req.infer({0: x})
            return req.get_output_tensor(0).data.copy()

        return run
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


# ------------------------------------------------------------------------------------------------ files


def check_opset(opset: int, exporter: str = "dynamo") -> int:
    allowed = ONNX_OPSETS if exporter == "dynamo" else TORCHSCRIPT_OPSETS
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in allowed:
        raise ValueError(f"opset must be one of {allowed[0]}..{allowed[-1]} (the opsets torch.onnx's {exporter} "
                         f"exporter writes), got {opset!r}")
    return opset


def onnx_opset(path: str | os.PathLike) -> int:
    """The default-domain (ai.onnx) opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))


def read_metadata(path: str | os.PathLike) -> dict:
    """The file's metadata_props as {key: value} (strings)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def preprocessing(path: str | os.PathLike) -> dict:
    """The preprocessing stored by `export_onnx` (timm's data config: input_size, interpolation, mean, std,
    crop_pct, crop_mode); {} when the file has none."""
    meta = read_metadata(path)
    return {k: json.loads(meta[_PRE + k]) for k in PREPROCESS_KEYS if _PRE + k in meta}


def dynamic_axes(path: str | os.PathLike) -> dict:
    """{axis: name} of the first input's symbolic dimensions (0 batch, 2 height, 3 width) in the ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return {i: d.dim_param for i, d in enumerate(dims) if d.dim_param or not d.HasField("dim_value")}


def is_own_export(path: str | os.PathLike) -> bool:
    """True when `path` is an ONNX file written by `save_onnx` / `export_onnx` (tools overwrite only these)."""
    try:
        return _MARK in read_metadata(path)
    except Exception:  # noqa: BLE001 - anything that is not a readable ONNX model is not ours
        return False


def _set_metadata(path: Path, entries: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*keep, *entries.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
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


def _dynamic(dynamic) -> str:
    if dynamic is True:
        return "batch"
    if dynamic is False or dynamic is None:
        return "none"
    if dynamic not in DYNAMIC:
        raise ValueError(f"dynamic must be one of {', '.join(DYNAMIC)} (or a bool: batch / none), got {dynamic!r}")
    return dynamic


def _first_line(err: BaseException) -> str:
    # torch.onnx wraps the real error: report the innermost one
    while err.__cause__ is not None:
        err = err.__cause__
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}"


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs its failures and shape guesses on stderr as it goes; the exporter's error is reported
    instead (tools: one line)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch._dynamo", "torch.onnx",
                                             "torch.fx.experimental.symbolic_shapes", "torch._subclasses")]
    saved = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


def _export_dynamo(model, x, path: Path, opset: int, dynamic: str) -> None:
    dims = {}
    if dynamic in ("batch", "all"):
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if dynamic in ("hw", "all"):
        # AUTO: a model that fixes its size specializes instead of failing; the file is checked afterwards
        dims[2] = dims[3] = torch.export.Dim.AUTO
    with warnings.catch_warnings(), _quiet_torch_logs():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                 dynamic_shapes=(dims,) if dims else None, verbose=False,
                                 input_names=["x"], output_names=["logits"])
    prog.save(str(path))
    got = onnx_opset(path)
    if got != opset:
        raise ValueError(f"opset {opset} requested but the exporter wrote opset {got} (a conversion it does not "
                         f"support for this graph); use one of {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]} that works here")


def _export_torchscript(model, x, path: Path, opset: int, dynamic: str) -> None:
    axes = {}
    if dynamic in ("batch", "all"):
        axes = {"x": {0: "batch"}, "logits": {0: "batch"}}
    if dynamic in ("hw", "all"):
        axes.setdefault("x", {}).update({2: "height", 3: "width"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, dynamic_axes=axes or None,
                          input_names=["x"], output_names=["logits"], do_constant_folding=True)


@torch.no_grad()
def save_onnx(model: nn.Module, x: torch.Tensor, path: str | os.PathLike, *, opset: int = DEFAULT_OPSET, dynamic="none",
              exporter: str = "dynamo", slim: bool = False, metadata: dict | None = None, _check=None) -> int:
    """Export `model` called on `x` to `path` with `exporter` (dynamo / torchscript) at exactly `opset`.

    Input `x`, output `logits`; `dynamic` (none / batch / hw / all, or a bool for batch) names the symbolic
    axes (a batch-1 example is exported at batch 2, so the batch stays symbolic); `slim` runs onnxslim on the
    graph; `metadata` goes into metadata_props. The file appears complete or not at all. Returns the opset
    written; raises ValueError when the exporter could not produce `opset`, ExportUnsupported when it could not
    export the model.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    check_opset(opset, exporter)
    dynamic = _dynamic(dynamic)
    if dynamic in ("batch", "all") and x.shape[0] == 1:
        x = x.expand(2, *x.shape[1:]).contiguous()  # torch.export specializes a size-1 axis
    path = Path(path)
    with _replace_on_success(path) as tmp:
        try:
            (_export_dynamo if exporter == "dynamo" else _export_torchscript)(model, x, tmp, opset, dynamic)
        except (ValueError, AssertionError) as err:
            if "opset" in str(err) and "requested" in str(err):
                raise
            raise ExportUnsupported(f"the {exporter} exporter cannot export {type(model).__name__}"
                                    f"{' with a dynamic ' + dynamic if dynamic != 'none' else ''}: "
                                    f"{_first_line(err)}") from err
        except Exception as err:  # noqa: BLE001 - exporter internals raise anything; one line for the user
            raise ExportUnsupported(f"the {exporter} exporter cannot export {type(model).__name__}"
                                    f"{' with a dynamic ' + dynamic if dynamic != 'none' else ''}: "
                                    f"{_first_line(err)}") from err
        if slim:
            import onnxslim

            onnxslim.slim(str(tmp), str(tmp))
            if onnx_opset(tmp) != opset:
                raise ValueError(f"onnxslim changed the opset from {opset} to {onnx_opset(tmp)}")
        _set_metadata(tmp, {_MARK: type(model).__name__, **(metadata or {})})
        if _check is not None:
            _check(tmp)  # raises: nothing is written
    return opset


# ------------------------------------------------------------------------------------------------ export + parity


def _data_config(model, size) -> dict:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    cfg["input_size"] = (3, *size)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in PREPROCESS_KEYS}


def _check_sizes(model, h: int, w: int) -> list[tuple[int, int]]:
    """Sizes other than (h, w) that a model of the same stride accepts: one more step of its largest reduction in
    H, two in W (H != W catches a swapped axis), and about half the size (H half, W one step more), so size
    branches that the example does not take (NA's padding of maps smaller than its window) are checked too."""
    info = getattr(model, "feature_info", None) or []
    step = max([int(f.get("reduction", 0)) for f in info if isinstance(f, dict)] or [32]) or 32
    small = (max(step, h // 2 // step * step), max(step, w // 2 // step * step) + step)
    return [(h + step, w + 2 * step)] + ([small] if small != (h, w) else [])


@torch.no_grad()
def export_onnx(
    model: nn.Module | str,
    out_path: str | os.PathLike,
    img_size: int | tuple[int, int] | None = None,
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
    dynamic="none",
    fuse: bool = True,
    atol: float | None = None,
    threads: int | None = None,
    slim: bool = False,
    check: bool = True,
    return_session: bool = False,
    exporter: str = "dynamo",
    dtype: str = "fp32",
    runtimes=("onnxruntime",),
    provider: str = "cpu",
    check_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> dict:
    """Export `model` (a module or a zoo model name) to ONNX and check it in `runtimes` against fp32 eager.

    Attention kernels switch to their exportable `torch` path; re-parameterisable models are fused first
    (`fuse=False` keeps them as they are). `dtype="fp16"` writes the graph in fp16 (input and output fp16),
    checked against the fp32 model with `atol` relative to the largest logit (default FP16_RTOL); fp32 uses
    `atol` absolute (default 1e-4). `dynamic` (none / batch / hw / all): the file is also run at a second batch
    and / or at `check_size` (default: one stride more in H, two in W, and about half the size where the eager
    model runs it) against eager, and is written only when those agree (else ExportUnsupported, nothing written).
    The file carries timm's data config of the model (`preprocessing(path)`); `name` is the model's name in
    messages and metadata.

    Returns model / onnx / max_abs_diff (the largest over runtimes and checks) / `<runtime>_max_abs_diff` / opset
    / exporter / dtype / dynamic / provider / preprocess, with `return_session` also `session` (the onnxruntime
    session, or None when onnxruntime is not among `runtimes`), `runners` ({runtime: run(np) -> np}), `module`
    (the eval-mode fp32 module) and `input` (the example input, in the graph's dtype). Raises OnnxParityError
    (an AssertionError) when `check` and a runtime differs by more than the tolerance at the example input (the
    file is then not written), ValueError for bad arguments, ExportUnsupported (a ValueError) for what cannot be
    honoured here.
    """
    import timm

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    check_opset(opset, exporter)
    dynamic = _dynamic(dynamic)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if "onnxruntime" in runtimes:
        check_provider(provider)  # before the (slow) export
    elif provider != "cpu":
        raise ValueError(f"provider {provider!r} is an onnxruntime provider; OpenVINO runs on CPU")
    runtimes = tuple(dict.fromkeys(runtimes))
    if not runtimes or any(r not in RUNTIMES for r in runtimes):
        raise ValueError(f"runtimes must be a non-empty selection of {', '.join(RUNTIMES)}, got {runtimes!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1, got {threads!r}")
    if atol is not None and not atol >= 0:
        raise ValueError(f"atol must be a number >= 0, got {atol!r}")
    for what, val in (("img_size", img_size), ("check_size", check_size)):
        if val is not None:
            size = (val, val) if isinstance(val, int) else tuple(val)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
                raise ValueError(f"{what} must be None, an integer >= 1 or (H, W) of integers >= 1, got {val!r}")
    name = name or (model if isinstance(model, str) else type(model).__name__)
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
    if check_size is not None:
        check_size = (check_size, check_size) if isinstance(check_size, int) else tuple(check_size)
    tol = (1e-4 if dtype == "fp32" else FP16_RTOL) if atol is None else float(atol)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    graph_model = copy.deepcopy(model).to(torch_dtype) if dtype == "fp16" else model
    if threads:
        torch.set_num_threads(threads)

    x = torch.randn(batch, 3, h, w)
    checks = [("example", x)]
    if dynamic in ("batch", "all"):
        checks.append(("batch", torch.randn(batch + 2, 3, h, w)))
    if dynamic in ("hw", "all"):
        for i, (h2, w2) in enumerate([check_size] if check_size else _check_sizes(model, h, w)):
            # the default smaller size is skipped where the eager model refuses it (label "size?")
            label = "size" if check_size or i == 0 else "size?"
            checks.append((label, torch.randn(batch if dynamic == "hw" else batch + 1, 3, h2, w2)))
    preprocess = _data_config(model, (h, w))
    metadata = {_PRE + k: json.dumps(v) for k, v in preprocess.items()}
    metadata.update({"visionattn.model": name, "visionattn.dtype": dtype, "visionattn.dynamic": dynamic,
                     "visionattn.exporter": exporter})
    try:
        import visionattn

        metadata["visionattn.version"] = visionattn.__version__
    except AttributeError:
        pass

    result = {"model": name, "onnx": str(out_path), "exporter": exporter, "dtype": dtype, "dynamic": dynamic,
              "provider": provider, "preprocess": preprocess}
    runners: dict = {}

    def verify(tmp: Path) -> None:
        """Run every check in every runtime; ExportUnsupported / OnnxParityError leave nothing written."""
        sym = dynamic_axes(tmp)
        wanted = {"none": (), "batch": (0,), "hw": (2, 3), "all": (0, 2, 3)}[dynamic]
        missing = [("batch", "", "height", "width")[ax] for ax in wanted if ax not in sym]
        if missing:
            raise ExportUnsupported(f"{name}: the {exporter} exporter fixed the {' and '.join(missing)} of the "
                                    f"input (the model specializes to {batch}x3x{h}x{w}); export without "
                                    f"--dynamic {dynamic}, one graph per size")
        for rt in runtimes:
            runners[rt] = onnx_runner(tmp, rt, threads=threads, provider=provider)
        worst, done = {}, []
        for label, inp in checks:
            try:
                ref = model(inp)
            except Exception as err:  # noqa: BLE001 - the model itself refuses the size: not a graph problem
                if label == "size?":
                    continue
                raise ExportUnsupported(f"{name}: the eager model does not run at {tuple(inp.shape)} "
                                        f"({_first_line(err)}): the model is built for one size: export "
                                        f"without --dynamic {dynamic} (one graph per size), or give a --check-size "
                                        "it accepts") from err
            ref = (ref[0] if isinstance(ref, (tuple, list)) else ref).double()
            bound = tol * max(1.0, ref.abs().max().item()) if dtype == "fp16" else tol
            for rt, run in runners.items():
                try:
                    got = torch.from_numpy(run(inp.to(torch_dtype).numpy())).double()
                    diff = (got - ref).abs().max().item() if got.shape == ref.shape else float("inf")
                except Exception as err:  # noqa: BLE001 - a graph with a size baked in fails in the runtime
                    if label == "example":
                        raise
                    diff, why = float("inf"), _first_line(err)
                else:
                    why = f"max |{rt} - torch| = {diff:.2e}" if got.shape == ref.shape else \
                        f"output {tuple(got.shape)} != {tuple(ref.shape)}"
                worst[rt] = max(worst.get(rt, 0.0), diff)
                if diff <= bound:
                    continue
                if label == "example":
                    if check:
                        raise OnnxParityError(f"{name}: {rt} differs from PyTorch fp32 by {diff:.3e} > "
                                              f"{'atol' if dtype == 'fp32' else 'fp16 tolerance'} {bound:.1e}; "
                                              "nothing written")
                    continue
                what = "batch" if label == "batch" else "size"
                raise ExportUnsupported(f"{name}: the graph exported with --dynamic {dynamic} does not hold at "
                                        f"{what} {tuple(inp.shape)} in {rt} ({why}); nothing written: export "
                                        f"{'without --dynamic' if what == 'size' else 'with another exporter'}"
                                        f"{', one graph per size' if what == 'size' else ''}")
            done.append(tuple(inp.shape))
        result.update({f"{rt}_max_abs_diff": d for rt, d in worst.items()})
        result["max_abs_diff"] = max(worst.values())
        result["checked"] = done
        result["tolerance"] = tol if dtype == "fp32" else f"{tol:g} x max(1, max|fp32 logits|)"

    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(graph_model, x.to(torch_dtype), path, opset=opset, dynamic=dynamic, exporter=exporter, slim=slim,
              metadata=metadata, _check=verify)
    result["opset"] = onnx_opset(path)
    if return_session:
        # both runtimes hold the graph in memory: the runners made on the temporary file serve the written one
        sess = getattr(runners.get("onnxruntime"), "session", None)
        result.update(session=sess, runners=runners, module=model, input=x.to(torch_dtype))
    return result
