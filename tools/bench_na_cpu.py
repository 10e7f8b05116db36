"""Neighborhood attention on CPU against the machine's own yardsticks (issue 19), each measured in one run:

1. kernel: the compiled `cpu` backend and the `torch` path (with and without RPB, forward and forward+backward)
   as a percentage of the fp32 GEMM rate timed before and after them (`pct_gemm`; tools/bench/gemm.py);
2. models: GMAC/s of NAT / DiNAT (attention on `torch` and on `cpu`) beside timm's Swin-T, models alternating
   (`vs_yardstick`; tools/bench/gmacs.py), inference and training step.

    python tools/bench_na_cpu.py                                  # both parts at 1 and 2 threads
    python tools/bench_na_cpu.py --part kernel --threads 1 --csv out/na_cpu.csv

On a CPU shared with other work, `--threads 1 --timer cpu` (process CPU time) is the steadiest protocol.
"""
from __future__ import annotations

import sys
import warnings

import torch
from bench import gemm as gemm_bench
from bench import na as na_bench
from bench.cli import Parser, positive_int
from bench.gmacs import gmac_rate_rows
from bench.report import columns, text_table, write_csv

KERNEL_COLS = ["threads", "op", "case", "backend", "mode", "time_ms", "gflops", "pct_gemm", "speedup_vs_torch",
               "rpb_cost"]
MODEL_COLS = ["threads", "mode", "model", "backend", "gmacs", "ms", "img_s", "gmac_s", "vs_yardstick"]


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--part", choices=["kernel", "models", "all"], default="all")
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2])
    p.add_argument("--cases", nargs="+", choices=sorted(na_bench.ALL_CASES), default=["nat_56x56_k7"],
                   metavar="CASE", help=f"NA cases (batch 8), of {sorted(na_bench.ALL_CASES)}")
    p.add_argument("--iters", type=positive_int, default=7, help="timed calls per kernel row (median)")
    p.add_argument("--models", nargs="+", default=["nat_mini", "dinat_mini"])
    p.add_argument("--yardstick", default="swin_tiny_patch4_window7_224")
    p.add_argument("--model-modes", nargs="+", choices=["infer", "train"], default=["infer", "train"])
    p.add_argument("--batch", type=positive_int, default=8, help="model batch")
    p.add_argument("--reps", type=positive_int, default=7, help="timed rounds per model (median)")
    p.add_argument("--timer", choices=["wall", "cpu"], default="wall")
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    args = p.parse_args(argv)
    import timm

    import visionattn  # noqa: F401  registers the zoo

    for name in [args.yardstick, *args.models]:
        if not timm.is_model(name):
            p.error(f"argument --models/--yardstick: unknown timm model {name!r}")
    if args.timer == "cpu" and max(args.threads) > 1:
        p.error("argument --timer: cpu time sums all threads; use it with --threads 1")
    return args


def kernel_rows(args, threads: int) -> list[dict]:
    cases = [na_bench.ALL_CASES[c] for c in args.cases]
    rows = gemm_bench.rate_rows("cpu", when="before", timer=args.timer)
    na_rows = na_bench.rows(cases, ("cpu", "cpu_norpb", "torch", "torch_norpb"), device="cpu", batch=8,
                            iters=args.iters, timer=args.timer)
    rows += gemm_bench.rate_rows("cpu", when="after", timer=args.timer)
    square = [r["gflops"] for r in rows if r["case"].startswith("matmul")]
    gemm_bench.add_gemm_fraction(na_rows, sum(square) / len(square))
    return [dict(r, threads=threads) for r in rows + na_rows]


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        if args.part in ("kernel", "all"):
            part = kernel_rows(args, threads)
            print(text_table(part, [c for c in KERNEL_COLS if any(c in r for r in part)]), flush=True)
            rows += part
        if args.part in ("models", "all"):
            for mode in args.model_modes:
                part = [dict(r, threads=threads) for r in gmac_rate_rows(
                    [args.yardstick, *args.models], batch=args.batch, reps=args.reps, mode=mode, timer=args.timer)]
                print(text_table(part, MODEL_COLS), flush=True)
                rows += part
    if args.csv:
        write_csv(rows, args.csv, columns(rows, KERNEL_COLS + MODEL_COLS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
