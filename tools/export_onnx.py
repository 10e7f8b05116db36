"""Export a zoo model to ONNX (torch.onnx's dynamo exporter), check it against onnxruntime and time both on CPU.

    python tools/export_onnx.py biformer_t --img-size 224 --out out/biformer_t.onnx

The last line printed is one JSON object: model, onnx, max_abs_diff, opset (the opset the file declares; --opset
must be one the dynamo exporter writes, 18..25), the latency of onnxruntime and of PyTorch eager on the exported
module at --batch (`onnx_p50_ms`, p90, p99, mean; `eager_*`: the benchmarks' timer, --warmup calls then --reps
timed ones) and what they were measured on (threads, CPU model and ISA, versions; tools/bench/env.py). The tool
overwrites only ONNX files it wrote itself (marked in their metadata); any other existing file needs
--overwrite. User errors: one line on stderr, exit 2; a parity failure (|ort - torch| > --atol): exit 1.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from bench.cli import Parser, fail, int_in, nonneg_float, nonneg_int, positive_int
from bench.env import environment
from bench.timing import latency

import visionattn
from visionattn.export import ONNX_OPSETS, OnnxParityError, export_onnx, is_own_export


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("model", help="zoo model name (see visionattn.list_models())")
    p.add_argument("--img-size", type=positive_int, nargs="+", default=None, metavar="H [W]",
                   help="input size H, or H W; default: the model's cfg")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--opset", type=int_in(ONNX_OPSETS, "opset", "the opsets torch.onnx's dynamo exporter writes"),
                   default=18,
                   help=f"ONNX opset, {ONNX_OPSETS[0]}..{ONNX_OPSETS[-1]} (what the dynamo exporter writes)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch axis")
    p.add_argument("--out", default=None, help="output .onnx path (default out/onnx/<model>.onnx)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even when it is not an ONNX file this tool wrote")
    p.add_argument("--checkpoint", default=None, help="weights file (safetensors or torch, loaded weights_only)")
    p.add_argument("--num-classes", type=nonneg_int, default=None)
    p.add_argument("--no-fuse", action="store_true", help="keep re-parameterisable models unfused")
    p.add_argument("--slim", action="store_true", help="run onnxslim on the exported graph")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for onnxruntime and PyTorch")
    p.add_argument("--atol", type=nonneg_float, default=1e-4, help="max allowed |onnxruntime - PyTorch| on logits")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="untimed calls before timing")
    p.add_argument("--reps", type=positive_int, default=20, help="timed calls: p50 / p90 / p99 / mean ms")
    args = p.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        p.error(f"argument --img-size: expected H or H W, got {len(args.img_size)} values")
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
                          fuse=not args.no_fuse, atol=args.atol, threads=args.threads, slim=args.slim,
                          return_session=True)
    except OnnxParityError as err:
        return fail(str(err), code=1)
    except (ValueError, AssertionError) as err:
        # a size the model rejects, a checkpoint that does not fit, an opset the exporter cannot write here
        return fail(f"{args.model}: {type(err).__name__}: {err}")
    sess, module, x = res.pop("session"), res.pop("module"), res.pop("input")
    feed = {sess.get_inputs()[0].name: x.numpy()}
    timing = dict(warmup=args.warmup, reps=args.reps)
    with torch.no_grad():
        res.update({f"onnx_{k}": v for k, v in latency(lambda: sess.run(None, feed), **timing).items()})
        res.update({f"eager_{k}": v for k, v in latency(lambda: module(x), **timing).items()})
    res.update(model=args.model, batch=args.batch, warmup=args.warmup, reps=args.reps,
               onnx_threads=args.threads or "onnxruntime default",
               **environment("cpu", ("onnx", "onnxruntime")))
    print(f"{args.model}: exported with the {res.pop('exporter')} exporter to {out}; "
          f"max |ort - torch| = {res['max_abs_diff']:.2e}; batch {args.batch}, p50 / p90 / p99 ms: onnxruntime "
          f"{res['onnx_p50_ms']:.2f} / {res['onnx_p90_ms']:.2f} / {res['onnx_p99_ms']:.2f}, eager "
          f"{res['eager_p50_ms']:.2f} / {res['eager_p90_ms']:.2f} / {res['eager_p99_ms']:.2f}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
