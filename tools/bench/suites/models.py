"""Zoo models: params, GMACs and, per runtime mode, latency p50 / p90 / p99 and throughput under a protocol.

    python -m tools.bench models --filter 'biformer_t,nat_mini' --out-dir out/bench/models
    python -m tools.bench models --filter shvit_s1 --modes eager,onnx --protocol shvit    # as SHViT's speed script
    python -m tools.bench models --filter 'nat_mini,biformer_t' --modes eager,onnx,openvino   # two ONNX runtimes
    python -m tools.bench models --filter 'nat_*' --protocol timm --device cuda           # as timm's benchmark.py
    python -m tools.bench models --filter nat_mini --modes eager,onnx --threads 1 --timer cpu --interleave --reps 9

Each model in eval mode (re-parameterisable models fused unless --no-fuse), attention on the backend `auto`
picks. Modes (tools/bench/runtimes.py): eager, compile (torch.compile; --fullgraph), onnx (onnxruntime, CPU),
openvino (the same ONNX file in OpenVINO, CPU), amp (autocast, CUDA); default eager,compile,onnx on CPU,
eager,compile,amp on CUDA. Protocol
(tools/bench/protocol.py): warm-up, a fixed number of timed calls (device synchronised around each), latency at
the latency batch as p50 / p90 / p99 / mean ms, throughput at the throughput batch as batch / mean time; presets
default, timm and shvit, any field overridden by its argument. FLOPs from torch.utils.flop_counter at batch 1
(attention matmuls included); GMACs = FLOPs / 2, the papers' "FLOPs" convention.

Writes models.jsonl (a row per model as measured), models.csv, models.md and models.png (throughput vs params)
to --out-dir. Every row carries the protocol, threads, CPU model and ISA, the ISA the NA kernel was built for,
and the versions of torch / timm / the runtimes. Exit 1 when a model or a mode failed (the error is in its row).
"""
from __future__ import annotations

import fnmatch
import sys

from ..cli import (
    Parser,
    add_protocol_args,
    check_out_dir,
    comma_list,
    default_device,
    device_arg,
    fail,
    positive_int,
    prog,
    resolve_protocol,
)
from ..runtimes import RUNTIMES

PREFERRED = ["model", "family", "img_size", "params_m", "gmacs", "device", "latency_batch", "batch"]


def markdown_columns(modes, interleave: bool = False) -> list[str]:
    """The Markdown table's columns (the CSV and JSON have every field)."""
    cols = list(PREFERRED)
    for m in modes:
        cols += [f"{m}_p50_ms", f"{m}_p90_ms", f"{m}_p99_ms", f"{m}_ips"]
        cols += [f"{m}_tput_best_ms"] if interleave else []
    cols += [f"{m}_vs_eager" for m in modes if m != "eager"] + [f"{m}_setup_s" for m in modes if m != "eager"]
    return cols + ["reference_ips", "vs_reference", "error"] + [f"{m}_error" for m in modes]


def parse_args(argv=None):
    import visionattn

    p = Parser(prog=prog("models"), description=__doc__)
    p.add_argument("--filter", default="*", help="comma-separated fnmatch patterns over zoo model names")
    p.add_argument("--family", choices=visionattn.FAMILIES, default=None, help="restrict to one family")
    p.add_argument("--img-size", type=positive_int, default=None,
                   help="input side (default: each model's cfg; timm protocol: its test size)")
    p.add_argument("--modes", type=comma_list(RUNTIMES), default=None,
                   help=f"comma list of {','.join(RUNTIMES)} (default: eager,compile,onnx on CPU; "
                        "eager,compile,amp on CUDA)")
    p.add_argument("--device", type=device_arg, default=default_device())
    add_protocol_args(p)
    p.add_argument("--no-fuse", action="store_true")
    p.add_argument("--compare-reference", action="store_true",
                   help="also time eager with the attention forced onto the 'reference' backend (the stand-in for "
                        "the official gather / unfused code) and report our speed-up over it")
    p.add_argument("--fullgraph", action="store_true",
                   help="compile mode with torch.compile(fullgraph=True): a graph break is an error (zoo models)")
    p.add_argument("--interleave", action="store_true",
                   help="time the modes side by side: one call of each mode in turn, the order reversed every round "
                        "(ratios between modes on a shared machine; --warmup-s / --min-time-s do not apply); adds "
                        "each mode's best time")
    p.add_argument("--out-dir", default="out/bench/models")
    args = p.parse_args(argv)
    check_out_dir(p, args.out_dir)
    from ..runtimes import default_modes

    args.modes = args.modes or default_modes(args.device.type)
    wrong = [m for m in args.modes if args.device.type not in RUNTIMES[m].devices]
    if wrong:
        p.error(f"argument --modes: {', '.join(wrong)} does not run on {args.device.type} "
                f"({'; '.join(f'{m}: {RUNTIMES[m].devices}' for m in wrong)})")
    args.protocol_ = resolve_protocol(args, args.device.type)
    return args


def main(argv=None) -> int:
    import torch
    from tqdm import tqdm

    import visionattn

    from ..env import environment
    from ..models import family, inference_row
    from ..report import Recorder, throughput_plot
    from ..runtimes import packages

    args = parse_args(argv)
    proto = args.protocol_
    if proto.threads and args.device.type == "cpu":
        torch.set_num_threads(proto.threads)
    pats = [p.strip() for p in args.filter.split(",") if p.strip()]
    names = [str(m) for m in visionattn.list_models(args.family) if any(fnmatch.fnmatch(m, p) for p in pats)]
    if not names:
        return fail(f"no zoo model matches --filter {args.filter!r}")
    meta = {**environment(args.device, packages(args.modes)), **proto.fields(args.device.type)}
    rec = Recorder(args.out_dir, "models", meta)
    for name in (bar := tqdm(names, desc="models", unit="model", file=sys.stderr)):
        bar.set_postfix_str(name)
        try:
            row = inference_row(name, device=args.device, modes=args.modes, protocol=proto, img_size=args.img_size,
                                fuse=not args.no_fuse, compare_reference=args.compare_reference,
                                fullgraph=args.fullgraph, interleave=args.interleave)
        except Exception as err:  # noqa: BLE001 - one failing model must not hide the others
            row = {"model": name, "family": family(name), "device": args.device.type,
                   "error": f"{type(err).__name__}: {err}"}
        for key in [k for k in row if k.endswith("error")]:
            print(f"warning: {name}: {key}: {row[key]}", file=sys.stderr)
        rec(row)
    text = rec.finish(PREFERRED, md_cols=markdown_columns(args.modes, args.interleave))
    throughput_plot(rec.rows, rec.dir / "models.png", title=f"visionattn zoo, {args.device.type}, "
                                                             f"protocol {proto.name}")
    print(text)
    print(f"wrote {', '.join(str(p) for p in rec.files())}")
    return 1 if any(k.endswith("error") for r in rec.rows for k in r) else 0
