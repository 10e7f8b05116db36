"""The zoo benchmark: params, GFLOPs and latency / throughput for PyTorch eager, torch.compile and
onnxruntime (CPU), or eager / compile / AMP on a GPU.

    python tools/benchmark.py --filter 'biformer_t,nat_mini' --out-dir out/bench

Protocol: each model in eval mode (re-parameterisable models fused unless --no-fuse), attention on the
backend `auto` picks (see visionattn.kernels); `--warmup` calls, then the median of `--reps` timed calls
(device synchronised, tools/bench/timing.py);
latency at batch 1, throughput (img/s) at batch `--batch`; threads fixed by `--threads`. FLOPs come from
torch.utils.flop_counter (attention matmuls included) at batch 1; GMACs = FLOPs / 2, the convention of
the papers' "FLOPs" columns. Writes bench.csv, bench.md and bench.png (throughput vs params) to --out-dir.
"""
from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

import torch
from bench.cli import Parser, comma_list, default_device, device_arg, fail, nonneg_int, positive_int
from bench.models import inference_row
from bench.report import markdown_table, write_csv
from tqdm import tqdm

import visionattn

COLUMNS = ["model", "family", "img_size", "params_m", "gmacs", "device", "threads",
           "eager_ms", "compile_ms", "compile_s", "ort_ms", "amp_ms",
           "eager_ips", "compile_ips", "ort_ips", "amp_ips", "compile_vs_eager", "ort_vs_eager", "reference_ips",
           "vs_reference"]


MODES = ("eager", "compile", "onnx", "amp")


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--filter", default="*", help="comma-separated fnmatch patterns over zoo model names")
    p.add_argument("--family", choices=visionattn.FAMILIES, default=None, help="restrict to one family")
    p.add_argument("--img-size", type=positive_int, default=None, help="input side (default: each model's cfg)")
    p.add_argument("--batch", type=positive_int, default=8, help="batch for the throughput measurement")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--warmup", type=nonneg_int, default=3)
    p.add_argument("--reps", type=positive_int, default=10)
    p.add_argument("--modes", type=comma_list(MODES), default=None,
                   help="comma list of eager,compile,onnx,amp (default: eager,compile,onnx on CPU; "
                        "eager,compile,amp on CUDA)")
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--no-fuse", action="store_true")
    p.add_argument("--compare-reference", action="store_true",
                   help="also time eager with the attention forced onto the 'reference' backend (the stand-in for "
                        "the official gather / unfused code) and report our speed-up over it")
    p.add_argument("--fullgraph", action="store_true",
                   help="compile mode with torch.compile(fullgraph=True): a graph break is an error (zoo models)")
    p.add_argument("--out-dir", default="out/bench")
    args = p.parse_args(argv)
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        p.error(f"argument --out-dir: {args.out_dir} exists and is not a directory")
    return args


def write_outputs(rows: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "bench.csv", COLUMNS)
    used = [c for c in COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    (out_dir / "bench.md").write_text(markdown_table(rows, used) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((k for k in ("ort_ips", "compile_ips", "eager_ips", "amp_ips") if any(r.get(k) for r in rows)),
               "eager_ips")
    fig, ax = plt.subplots(figsize=(7, 5))
    for fam in sorted({r["family"] for r in rows}):
        pts = [r for r in rows if r["family"] == fam and r.get(key)]
        ax.scatter([r["params_m"] for r in pts], [r[key] for r in pts], label=fam)
        for r in pts:
            ax.annotate(r["model"], (r["params_m"], r[key]), fontsize=7)
    ax.set_xlabel("params (M)")
    ax.set_ylabel(f"throughput, {key.replace('_ips', '')} (img/s)")
    ax.set_xscale("log")
    ax.set_title(f"visionattn zoo, {rows[0]['device'] if rows else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "bench.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.modes or (["eager", "compile", "amp"] if device.type == "cuda" else ["eager", "compile", "onnx"])
    pats = [p.strip() for p in args.filter.split(",") if p.strip()]
    names = [str(m) for m in visionattn.list_models(args.family) if any(fnmatch.fnmatch(m, p) for p in pats)]
    if not names:
        return fail(f"no zoo model matches --filter {args.filter!r}")
    rows = []
    for name in (bar := tqdm(names, desc="benchmark", unit="model", file=sys.stderr)):
        bar.set_postfix_str(name)
        try:
            rows.append(inference_row(name, device=device, modes=modes, img_size=args.img_size, batch=args.batch,
                                      warmup=args.warmup, reps=args.reps, fuse=not args.no_fuse,
                                      threads=args.threads, compare_reference=args.compare_reference,
                                      fullgraph=args.fullgraph))
        except Exception as err:  # noqa: BLE001 - one failing model must not hide the others
            print(f"warning: {name}: {type(err).__name__}: {err}", file=sys.stderr)
            rows.append({"model": name, "family": visionattn.get_family(name), "device": device.type})
    out_dir = Path(args.out_dir)
    write_outputs(rows, out_dir)
    print((out_dir / "bench.md").read_text())
    print(f"wrote {out_dir / 'bench.csv'}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}")
    failed = [r["model"] for r in rows if "eager_ms" not in r and "amp_ms" not in r]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
