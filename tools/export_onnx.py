"""Export a zoo model to ONNX, check it against onnxruntime and time both on CPU.

    python tools/export_onnx.py biformer_t --img-size 224 --out out/biformer_t.onnx

The last line printed is one JSON object: model, onnx, max_abs_diff, ort_ms, torch_ms, opset.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch

import visionattn
from visionattn.export import export_onnx


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="zoo model name (see visionattn.list_models())")
    p.add_argument("--img-size", type=int, nargs="+", default=None, help="H [W]; default: the model's cfg")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--dynamic", action="store_true", help="dynamic batch axis")
    p.add_argument("--out", default=None, help="output .onnx path (default out/onnx/<model>.onnx)")
    p.add_argument("--checkpoint", default=None, help="weights file (safetensors or torch, loaded weights_only)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--no-fuse", action="store_true", help="keep re-parameterisable models unfused")
    p.add_argument("--slim", action="store_true", help="run onnxslim on the exported graph")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for onnxruntime and PyTorch")
    p.add_argument("--atol", type=float, default=1e-4, help="max allowed |onnxruntime - PyTorch| on logits")
    p.add_argument("--reps", type=int, default=20)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = {str(m) for m in visionattn.list_models()}
    if args.model not in names:
        print(f"error: unknown model {args.model!r}; see visionattn.list_models()", file=sys.stderr)
        return 2
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.checkpoint:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=args.checkpoint))
    img = None if not args.img_size else (args.img_size[0], args.img_size[-1])
    model = None
    if img is not None:
        # fixed-size models (e.g. GC ViT) are rebuilt for the requested size where their constructor allows
        try:
            model = timm.create_model(args.model, img_size=img, **kwargs)
        except TypeError:
            model = None
    if model is None:
        model = timm.create_model(args.model, **kwargs)
    out = Path(args.out or f"out/onnx/{args.model}.onnx")
    torch.manual_seed(0)
    try:
        res = export_onnx(model, out, img_size=img, batch=args.batch, opset=args.opset, dynamic=args.dynamic,
                          fuse=not args.no_fuse, atol=args.atol, threads=args.threads, slim=args.slim,
                          reps=args.reps)
    except AssertionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    res["model"] = args.model
    print(f"{args.model}: exported with the {res.pop('exporter')} exporter to {out}; "
          f"max |ort - torch| = {res['max_abs_diff']:.2e}; ort {res['ort_ms']:.2f} ms, torch {res['torch_ms']:.2f} ms")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
