"""Export a zoo model to ONNX, check it against PyTorch in onnxruntime (and OpenVINO) and time them on CPU.

    python tools/export_onnx.py biformer_t --img-size 224 --out out/biformer_t.onnx
    python tools/export_onnx.py agent_pvt_t --dynamic batch --runtimes onnxruntime,openvino
    python tools/export_onnx.py shvit_s1 --dynamic all --dtype fp16 --exporter torchscript

Exporters: `dynamo` (torch.onnx's torch.export-based exporter, opsets 18..25; default) and `torchscript`
(torch.onnx's trace-based exporter, opsets 14..20). `--dynamic batch|hw|all` makes the batch, the height and width,
or all three symbolic, at any --batch; the file is then run at a second batch (--batch + 2) and / or a second size
(--check-size; default one stride more in H, two in W, and about half the size where the eager model runs it) against
eager, and nothing is written where it does not hold: exit 2 with one line saying why (a model built for one input
size, a graph that fixes the size). Where H / W cannot be dynamic, export one graph per resolution (--img-size): models
built for one size (SLAB-DeiT / -Swin, GC ViT, Agent-PVT), and the NA / BRA models with the torchscript exporter; with
the dynamo exporter NAT, DiNAT and BiFormer take --dynamic hw / all. `--dtype fp16` writes the graph in
fp16, checked against the fp32 model with the tolerance --atol x max(1, max |fp32 logits|) (default --atol 1e-2);
fp32 checks max |runtime - PyTorch| <= --atol (default 1e-4). `--runtimes` checks and times each runtime
(onnxruntime; openvino on CPU); `--provider` picks onnxruntime's execution provider (cpu, cuda, tensorrt). The file
carries the model's preprocessing (timm's data config: input_size, mean, std, interpolation, crop_pct, crop_mode) as
metadata `preprocess.*`; tools/validate_onnx.py reads it.

The last line printed is one JSON object: model, onnx, max_abs_diff (and per runtime), opset, exporter, dtype,
dynamic, provider, preprocess, and the latency of each runtime and of PyTorch eager (fp32) at --batch
(`onnx_p50_ms` for onnxruntime, `openvino_p50_ms`, `eager_p50_ms`; p90, p99, mean: the benchmarks' timer and
protocol, tools/bench/timing.py and protocol.py),
with what it was measured on (protocol, threads, CPU model and ISA, versions - the onnx package's as
`onnx_version`; tools/bench/env.py). The tool
overwrites only ONNX files it wrote itself (marked in their metadata); any other existing file needs --overwrite.

Exit codes: 0 written and checked; 1 a parity failure at the example input (|runtime - PyTorch| above the
tolerance; nothing written); 2 a user error or what cannot be honoured here (bad argument, a dynamic size the model
or graph fixes, an exporter that cannot trace the model, a provider or runtime not installed), one line on stderr.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from bench.cli import Parser, comma_list, fail, int_in, nonneg_float, nonneg_int, positive_int
from bench.env import environment
from bench.protocol import PRESETS, resolve
from bench.timing import latency

import visionattn
from visionattn.export import (
    DEFAULT_OPSET,
    DTYPES,
    DYNAMIC,
    EXPORTERS,
    FP16_RTOL,
    ONNX_OPSETS,
    PROVIDERS,
    RUNTIMES,
    TORCHSCRIPT_OPSETS,
    ExportUnsupported,
    OnnxParityError,
    check_provider,
    export_onnx,
    is_own_export,
)

# timing keys: the runtime modes' names in tools/bench (onnx = onnxruntime)
_KEY = {"onnxruntime": "onnx", "openvino": "openvino"}
_PACKAGES = {"onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


def _dynamic_arg(text: str) -> str:
    # a bare --dynamic (the old batch-only switch) means batch
    if text not in DYNAMIC:
        import argparse

        raise argparse.ArgumentTypeError(f"expected one of {', '.join(DYNAMIC)}, got {text!r}")
    return text


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("model", help="zoo model name (see visionattn.list_models())")
    p.add_argument("--img-size", type=positive_int, nargs="+", default=None, metavar="H [W]",
                   help="input size H, or H W; default: the model's cfg")
    p.add_argument("--batch", type=positive_int, default=1, help="export / check / timing batch (default 1)")
    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                   help="dynamo (torch.export-based, default) or torchscript (trace-based)")
    p.add_argument("--opset", type=int_in(sorted({*ONNX_OPSETS, *TORCHSCRIPT_OPSETS}), "opset",
                                          "dynamo 18..25, torchscript 14..20"), default=None,
                   help=f"ONNX opset: dynamo {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]} (default 20), torchscript "
                        f"{TORCHSCRIPT_OPSETS[0]}..{TORCHSCRIPT_OPSETS[-1]} (default 17)")
    p.add_argument("--dynamic", type=_dynamic_arg, nargs="?", const="batch", default="none", metavar="AXES",
                   help="symbolic axes: batch (also a bare --dynamic), hw (height and width), all; none (default). "
                        "NAT / DiNAT / BiFormer: hw / all with the dynamo exporter only")
    p.add_argument("--check-size", type=positive_int, nargs=2, default=None, metavar=("H", "W"),
                   help="the size the --dynamic hw / all graph is checked at besides the example (default: one stride "
                        "more in H, two in W, and about half the size where the eager model runs it)")
    p.add_argument("--dtype", choices=DTYPES, default="fp32", help="graph precision (fp16: checked against fp32)")
    p.add_argument("--runtimes", type=comma_list(RUNTIMES), default=["onnxruntime"],
                   help=f"comma list of {','.join(RUNTIMES)}: each is checked and timed (default onnxruntime)")
    p.add_argument("--provider", choices=list(PROVIDERS), default="cpu",
                   help="onnxruntime execution provider (cpu, cuda, tensorrt); exit 2 when not available")
    p.add_argument("--out", default=None, help="output .onnx path (default out/onnx/<model>.onnx)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even when it is not an ONNX file this tool wrote")
    p.add_argument("--checkpoint", default=None, help="weights file (safetensors or torch, loaded weights_only)")
    p.add_argument("--num-classes", type=nonneg_int, default=None)
    p.add_argument("--no-fuse", action="store_true", help="keep re-parameterisable models unfused")
    p.add_argument("--slim", action="store_true", help="run onnxslim on the exported graph")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads of every runtime and PyTorch (default: the protocol's, else all)")
    p.add_argument("--atol", type=nonneg_float, default=None,
                   help=f"fp32: max allowed |runtime - PyTorch| on logits (default 1e-4); fp16: relative to "
                        f"max(1, max |fp32 logits|) (default {FP16_RTOL:g})")
    p.add_argument("--protocol", choices=sorted(PRESETS), default="default",
                   help="latency protocol of tools/bench (warm-up, timed calls, threads); default: 3 warm-up, 10 "
                        "timed; --warmup / --reps / --threads override it")
    p.add_argument("--warmup", type=nonneg_int, default=None, help="untimed calls before timing (default 3)")
    p.add_argument("--reps", type=positive_int, default=None, help="timed calls: p50 / p90 / p99 / mean ms")
    p.add_argument("--no-timing", action="store_true", help="export and check only")
    args = p.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        p.error(f"argument --img-size: expected H or H W, got {len(args.img_size)} values")
    allowed = ONNX_OPSETS if args.exporter == "dynamo" else TORCHSCRIPT_OPSETS
    if args.opset is None:
        args.opset = DEFAULT_OPSET if args.exporter == "dynamo" else 17
    elif args.opset not in allowed:
        p.error(f"argument --opset: the {args.exporter} exporter writes opsets {allowed[0]}..{allowed[-1]}, "
                f"got {args.opset}")
    if args.check_size and args.dynamic not in ("hw", "all"):
        p.error("argument --check-size: only with --dynamic hw or all")
    if args.provider != "cpu" and "openvino" in args.runtimes:
        p.error(f"argument --provider: {args.provider} is an onnxruntime provider; OpenVINO runs on CPU "
                "(--runtimes onnxruntime)")
    return args


def _check_out(out: Path, overwrite: bool) -> str | None:
    """Why `out` must not be written, or None."""
    if out.is_dir():
        return f"--out {out} is a directory; give a file path"
    if out.exists() and not overwrite and not is_own_export(out):
        return f"--out {out} exists and was not written by this tool; pass --overwrite to replace it"
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"--out {out}: {parent} is not a directory"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    names = {str(m) for m in visionattn.list_models()}
    if args.model not in names:
        return fail(f"unknown model {args.model!r}; see visionattn.list_models()")
    out = Path(args.out or f"out/onnx/{args.model}.onnx")
    why = _check_out(out, args.overwrite)
    if why:
        return fail(why)
    if args.checkpoint and not Path(args.checkpoint).is_file():
        return fail(f"--checkpoint {args.checkpoint} is not a file")
    try:
        check_provider(args.provider)
    except ExportUnsupported as err:
        return fail(str(err))
    proto = resolve(args.protocol, "cpu", warmup=args.warmup, reps=args.reps, threads=args.threads)
    if proto.threads:
        torch.set_num_threads(proto.threads)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.checkpoint:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=args.checkpoint))
    img = None if not args.img_size else (args.img_size[0], args.img_size[-1])
    try:
        model = None
        if img is not None:
            # fixed-size models (e.g. GC ViT) are rebuilt for the requested size where their constructor allows
            try:
                model = timm.create_model(args.model, img_size=img, **kwargs)
            except TypeError:
                model = None
        if model is None:
            model = timm.create_model(args.model, **kwargs)
        torch.manual_seed(0)
        res = export_onnx(model, out, img_size=img, batch=args.batch, opset=args.opset, dynamic=args.dynamic,
                          fuse=not args.no_fuse, atol=args.atol, threads=proto.threads, slim=args.slim,
                          exporter=args.exporter, dtype=args.dtype, runtimes=args.runtimes, provider=args.provider,
                          check_size=tuple(args.check_size) if args.check_size else None, return_session=True,
                          name=args.model)
    except OnnxParityError as err:
        return fail(str(err), code=1)
    except (ValueError, AssertionError) as err:
        # ExportUnsupported (a ValueError) says it all; other errors: a size the model rejects, a checkpoint that
        # does not fit, an opset the exporter cannot write here
        text = str(err) if isinstance(err, ExportUnsupported) else f"{args.model}: {type(err).__name__}: {err}"
        return fail(text)
    runners, module, x = res.pop("runners"), res.pop("module"), res.pop("input")
    res.pop("session")
    res["checked"] = [list(s) for s in res["checked"]]
    packages = tuple(p for rt in args.runtimes for p in _PACKAGES[rt])
    env = environment("cpu", packages)
    env["onnx_version"] = env.pop("onnx", None)  # `onnx` is the file's path here
    res.update({**env, **proto.fields("cpu")})
    res.update(model=args.model, batch=args.batch, latency_batch=args.batch)
    res["runtime_threads"] = proto.threads or "each runtime's default"
    timed = []
    if not args.no_timing:
        feed = x.numpy()
        with torch.no_grad():
            # eager first: a runtime's worker threads still spinning after its last call would slow eager (measured
            # 2.3x on nat_mini at 2 threads when onnxruntime ran before it)
            xf = x.float()
            res.update({f"eager_{k}": v for k, v in latency(lambda: module(xf), **proto.timing()).items()})
            for rt, run in runners.items():
                key = _KEY[rt]
                res.update({f"{key}_{k}": v for k, v in latency(lambda run=run: run(feed), **proto.timing()).items()})
                timed.append(key)
            timed.append("eager")
    times = "; ".join(f"{rt} {res[f'{rt}_p50_ms']:.2f} / {res[f'{rt}_p90_ms']:.2f} / {res[f'{rt}_p99_ms']:.2f}"
                      for rt in timed)
    print(f"{args.model}: exported with the {res['exporter']} exporter ({args.dtype}, dynamic {args.dynamic}) to "
          f"{out}; max |runtime - torch fp32| = {res['max_abs_diff']:.2e} ({', '.join(args.runtimes)})"
          + (f"; batch {args.batch}, p50 / p90 / p99 ms: {times}" if timed else ""))
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
