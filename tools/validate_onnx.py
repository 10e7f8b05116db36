"""Top-1 / top-5 of an ONNX classifier on an ImageNet-layout folder, with the preprocessing stored in the file.

    python tools/validate_onnx.py out/onnx/nat_mini.onnx /data/imagenet/val
    python tools/validate_onnx.py m.onnx /data/imagenet/val --runtime openvino --batch-size 64
    python tools/validate_onnx.py m.onnx DIR --crop-pct 1.0      # an override: warned about on stderr

tools/export_onnx.py stores the model's preprocessing (timm's data config: input_size, interpolation, mean, std,
crop_pct, crop_mode) in the file's metadata (`preprocess.*`); this tool builds timm's eval transform from it. An
argument that differs from the stored value overrides it, with a warning on stderr. (timm's own onnx_validate.py
takes its preprocessing from command-line defaults, not from the file: a known source of wrong accuracy
reports.) A file without that metadata needs --img-size, --mean and --std; interpolation / crop_pct / crop_mode
then take timm's defaults, said in a warning. Labels: the folder's class sub-folders in sorted order (ImageNet's
convention). A graph with a fixed batch is fed in batches of that size (the last one padded); a graph with a fixed
input size must be given that size.

The last line printed is one JSON object: onnx, data_dir, runtime, provider, images, top1, top5 (percent),
preprocess (what was used), overridden (the keys given on the command line that differ from the file's) and
seconds. Exit 2 with one line on stderr on a user error (file, folder, argument, runtime or provider not
available).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench.cli import Parser, fail, nonneg_int, positive_int

from visionattn.export import PROVIDERS, RUNTIMES, ExportUnsupported, preprocessing

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "random")
CROP_MODES = ("center", "squash", "border")


def _unit_float(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _float3(text: str) -> float:
    import argparse

    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("onnx", help="ONNX file (tools/export_onnx.py writes the preprocessing into it)")
    p.add_argument("data_dir", help="ImageNet-layout folder: one sub-folder of images per class")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    p.add_argument("--provider", choices=list(PROVIDERS), default="cpu", help="onnxruntime execution provider")
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=32, help="(a graph with a fixed batch uses its own)")
    p.add_argument("--workers", type=nonneg_int, default=2, help="data loader processes")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images only")
    g = p.add_argument_group("preprocessing overrides (default: the file's metadata)")
    g.add_argument("--img-size", type=positive_int, nargs="+", default=None, metavar="H [W]")
    g.add_argument("--mean", type=_float3, nargs=3, default=None, metavar=("R", "G", "B"))
    g.add_argument("--std", type=_float3, nargs=3, default=None, metavar=("R", "G", "B"))
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None)
    g.add_argument("--crop-pct", type=_unit_float, default=None)
    g.add_argument("--crop-mode", choices=CROP_MODES, default=None)
    args = p.parse_args(argv)
    if args.img_size is not None and len(args.img_size) > 2:
        p.error(f"argument --img-size: expected H or H W, got {len(args.img_size)} values")
    if args.std is not None and any(s <= 0 for s in args.std):
        p.error(f"argument --std: expected numbers > 0, got {args.std}")
    if args.provider != "cpu" and args.runtime != "onnxruntime":
        p.error(f"argument --provider: {args.provider} is an onnxruntime provider (--runtime onnxruntime)")
    return args


def resolve_preprocessing(stored: dict, args) -> tuple[dict, list[str], list[str]]:
    """(the preprocessing to use, the keys overridden, warnings) from the file's `stored` config and `args`.
    Raises ValueError when a file without metadata lacks the required arguments."""
    from timm.data import DEFAULT_CROP_PCT

    given = {}
    if args.img_size:
        given["input_size"] = [3, args.img_size[0], args.img_size[-1]]
    for key in ("mean", "std"):
        if getattr(args, key) is not None:
            given[key] = [float(v) for v in getattr(args, key)]
    for key in ("interpolation", "crop_pct", "crop_mode"):
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    warnings = []
    if not stored:
        need = [f"--{k.replace('_', '-').replace('input-size', 'img-size')}" for k in ("input_size", "mean", "std")
                if k not in given]
        if need:
            raise ValueError(f"{args.onnx} carries no preprocessing metadata (not written by tools/export_onnx.py); "
                             f"give {', '.join(need)}")
        defaults = {"interpolation": "bicubic", "crop_pct": DEFAULT_CROP_PCT, "crop_mode": "center"}
        used = {k: v for k, v in defaults.items() if k not in given}
        if used:
            warnings.append(f"{args.onnx} carries no preprocessing metadata; using timm's defaults for "
                            + ", ".join(f"{k}={v}" for k, v in used.items()))
        return {**defaults, **given}, [], warnings
    cfg = dict(stored)
    overridden = []
    for key, value in given.items():
        if cfg.get(key) != value:
            warnings.append(f"--{key.replace('_', '-').replace('input-size', 'img-size')} overrides the file's "
                            f"preprocessing: {key} {value} instead of {cfg.get(key)}")
            overridden.append(key)
        cfg[key] = value
    return cfg, overridden, warnings


def _graph_input(path):
    """(batch or None, H or None, W or None, numpy dtype) of the graph's first input."""
    import numpy as np
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inp = model.graph.input[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.shape.dim]
    dtype = np.float16 if inp.elem_type == onnx.TensorProto.FLOAT16 else np.float32
    return (*(dims + [None] * 4)[0:1], *(dims + [None] * 4)[2:4], dtype)


def main(argv=None) -> int:
    args = parse_args(argv)
    path, data = Path(args.onnx), Path(args.data_dir)
    if not path.is_file():
        return fail(f"{path} is not a file")
    if not data.is_dir():
        return fail(f"data_dir {data} is not a directory")
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    if not classes:
        return fail(f"data_dir {data} has no class sub-folders (ImageNet layout: DIR/<class>/<image>)")
    try:
        stored = preprocessing(path)
        batch, gh, gw, dtype = _graph_input(path)
    except Exception as err:  # noqa: BLE001 - not an ONNX file
        return fail(f"{path} is not a readable ONNX file ({type(err).__name__}: {str(err)[:200]})")
    try:
        cfg, overridden, warnings = resolve_preprocessing(stored, args)
    except ValueError as err:
        return fail(str(err))
    h, w = cfg["input_size"][1:]
    if (gh is not None and gh != h) or (gw is not None and gw != w):
        return fail(f"{path} takes a fixed {gh}x{gw} input, the preprocessing gives {h}x{w}; "
                    f"give --img-size {gh} {gw} or export with --dynamic hw")
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)

    import numpy as np
    import torch
    from timm.data import ImageDataset, create_transform

    from visionattn.export import onnx_runner

    try:
        run = onnx_runner(path, args.runtime, threads=args.threads, provider=args.provider)
    except ExportUnsupported as err:
        return fail(str(err))
    transform = create_transform(input_size=tuple(cfg["input_size"]), interpolation=cfg["interpolation"],
                                 mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), crop_pct=cfg["crop_pct"],
                                 crop_mode=cfg["crop_mode"], is_training=False)
    dataset = ImageDataset(str(data), transform=transform, class_map={c: i for i, c in enumerate(classes)})
    if args.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    if len(dataset) == 0:
        return fail(f"data_dir {data} has no images")
    bs = batch or args.batch_size
    loader = torch.utils.data.DataLoader(dataset, batch_size=bs, num_workers=args.workers, shuffle=False)
    t0 = time.perf_counter()
    n = top1 = top5 = 0
    for x, y in loader:
        k = x.shape[0]
        feed = x.numpy().astype(dtype)
        if batch and k < batch:  # a fixed-batch graph: pad the last batch, drop the padding's outputs
            feed = np.concatenate([feed, np.repeat(feed[-1:], batch - k, axis=0)])
        logits = torch.from_numpy(np.asarray(run(feed))[:k]).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        top1 += (top[:, 0] == y).sum().item()
        top5 += (top == y[:, None]).any(-1).sum().item()
        n += k
    res = {"onnx": str(path), "data_dir": str(data), "runtime": args.runtime, "provider": args.provider,
           "images": n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "preprocess": cfg,
           "preprocess_from": "file" if stored else "arguments", "overridden": overridden,
           "seconds": round(time.perf_counter() - t0, 2)}
    over = f", overridden: {', '.join(overridden)}" if overridden else ""
    print(f"{path.name}: {n} images, top-1 {res['top1']:.2f}, top-5 {res['top5']:.2f} ({args.runtime}; "
          f"preprocessing from the {res['preprocess_from']}{over})")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
