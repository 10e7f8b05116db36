"""Neighborhood attention on CPU against the machine's own yardsticks (issue 19), each measured in one run:

1. kernel: the compiled `cpu` backend and the `torch` path (with and without RPB, forward and forward+backward)
   as a percentage of the fp32 GEMM rate timed before and after them (`pct_gemm`; tools/bench/gemm.py);
2. models: GMAC/s of NAT / DiNAT (attention on `torch` and on `cpu`) beside timm's Swin-T, models alternating
   (`vs_yardstick`; tools/bench/gmacs.py), inference and training step.

    python -m tools.bench na-cpu                                  # both parts at 1 and 2 threads
    python -m tools.bench na-cpu --part kernel --threads 1 --timer cpu --out-dir out/bench/na_cpu

Rates come from p50 times (p90 / p99 beside them). On a CPU shared with other work, `--threads 1 --timer cpu`
(process CPU time) is the steadiest protocol. Writes na_cpu.jsonl, na_cpu.csv and na_cpu.md to --out-dir; every
row carries its threads, the timer, CPU model and ISA, the ISA the NA kernel was built for and the versions.
"""
from __future__ import annotations

import warnings

from ..cli import Parser, add_timing_args, check_out_dir, positive_int, prog

KERNEL_COLS = ["threads", "op", "case", "backend", "mode", "p50_ms", "p90_ms", "p99_ms", "gflops", "pct_gemm",
               "speedup_vs_torch", "rpb_cost"]
MODEL_COLS = ["threads", "mode", "model", "backend", "gmacs", "p50_ms", "p90_ms", "p99_ms", "img_s", "gmac_s",
              "vs_yardstick"]


def parse_args(argv=None):
    from .. import na as na_bench

    p = Parser(prog=prog("na-cpu"), description=__doc__)
    p.add_argument("--part", choices=["kernel", "models", "all"], default="all")
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--cases", nargs="+", choices=sorted(na_bench.ALL_CASES), default=["nat_56x56_k7"],
                   metavar="CASE", help=f"NA cases (batch 8), of {sorted(na_bench.ALL_CASES)}")
    add_timing_args(p, warmup=2, reps=7)
    p.add_argument("--models", nargs="+", default=["nat_mini", "dinat_mini"])
    p.add_argument("--yardstick", default="swin_tiny_patch4_window7_224")
    p.add_argument("--model-modes", nargs="+", choices=["infer", "train"], default=["infer", "train"])
    p.add_argument("--batch", type=positive_int, default=8, help="model batch")
    p.add_argument("--model-reps", type=positive_int, default=7, help="timed rounds per model (models alternating)")
    p.add_argument("--out-dir", default="out/bench/na_cpu", help="na_cpu.jsonl / .csv / .md go here")
    args = p.parse_args(argv)
    check_out_dir(p, args.out_dir)
    import timm

    import visionattn  # noqa: F401  registers the zoo

    for name in [args.yardstick, *args.models]:
        if not timm.is_model(name):
            p.error(f"argument --models/--yardstick: unknown timm model {name!r}")
    if args.timer == "cpu" and max(args.threads) > 1:
        p.error("argument --timer: cpu time sums all threads; use it with --threads 1")
    return args


def kernel_rows(args) -> list[dict]:
    from .. import gemm as gemm_bench
    from .. import na as na_bench

    cases = [na_bench.ALL_CASES[c] for c in args.cases]
    rows = gemm_bench.rate_rows("cpu", when="before", timer=args.timer)
    na_rows = na_bench.rows(cases, ("cpu", "cpu_norpb", "torch", "torch_norpb"), device="cpu", batch=8,
                            warmup=args.warmup, iters=args.reps, timer=args.timer)
    rows += gemm_bench.rate_rows("cpu", when="after", timer=args.timer)
    square = [r["gflops"] for r in rows if r["case"].startswith("matmul")]
    gemm_bench.add_gemm_fraction(na_rows, sum(square) / len(square))
    return rows + na_rows


def main(argv=None) -> int:
    import torch

    from ..env import environment
    from ..gmacs import gmac_rate_rows
    from ..report import Recorder, describe, markdown_table, text_table

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    meta = {**environment("cpu"), "timer": args.timer, "warmup": args.warmup, "reps": args.reps}
    meta.pop("threads")  # each row has its own
    rec = Recorder(args.out_dir, "na_cpu", meta)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        if args.part in ("kernel", "all"):
            part = [rec(dict(r, threads=threads)) for r in kernel_rows(args)]
            print(text_table(part, [c for c in KERNEL_COLS if any(c in r for r in part)]), flush=True)
            rows += part
        if args.part in ("models", "all"):
            for mode in args.model_modes:
                part = [rec(dict(r, threads=threads, reps=args.model_reps)) for r in gmac_rate_rows(
                    [args.yardstick, *args.models], batch=args.batch, warmup=args.warmup, reps=args.model_reps,
                    mode=mode, timer=args.timer)]
                print(text_table(part, MODEL_COLS), flush=True)
                rows += part
    parts = [[r for r in rows if "model" not in r], [r for r in rows if "model" in r]]
    tables = [markdown_table(part, [c for c in cols if any(c in r for r in part)])
              for part, cols in zip(parts, (KERNEL_COLS, MODEL_COLS)) if part]
    rec.finish(KERNEL_COLS + MODEL_COLS, markdown="\n\n".join([describe(rec.meta), *tables]))
    print(f"wrote {', '.join(str(p) for p in rec.files())}")
    return 0
