"""NA and BRA kernels: every implementation in one table, timed in one run.

    python -m tools.bench kernels --op na --device cpu --threads 1
    python -m tools.bench kernels --op all --device cuda --dtype float16
    python -m tools.bench kernels --op all --verify-only             # every implementation vs the reference
    python -m tools.bench kernels --op na --cases nat_56x56_k7 --gemm-rate --threads 1   # NA vs the GEMM rate

NA (tools/bench/na.py): on CPU, NAT-like shapes at --batch (default 8): 56x56 k7, 28x28 k7 dilation 2, 14x14 k7,
1-D 4096 k31; on CUDA, NAT-Tiny stage shapes at B=32 (56x56 k7, 28x28 k7 d2, 14x14 k7) and 128x128 k7 at B=4.
Implementations: ours `torch` / `triton` / `cpu` (the compiled CPU kernel) with RPB and `*_norpb` without,
`gather` (naive index gather), `natten` (when installed; CPU: unfused FlexAttention, forward only), `flex` /
`flex_rpb` (torch.compile'd FlexAttention with an NA block mask, RPB as score_mod; compile time in `compile_s`),
`sdpa_dense` (full attention, the dense-cost yardstick). BRA (tools/bench/bra.py): BiFormer-S routed stages at
--sizes (CPU: 224 512 at B=1; CUDA: 224 512 1024 at B=8), `reference` (the official gather formulation), `torch`,
`triton`, `flex` (compiled FlexAttention with a routing block mask).

Per row: p50 / p90 / p99 / mean ms of --reps calls after --warmup (`--timer cpu`: process CPU time, with
--threads 1 only), and peak memory one call allocates above its inputs (CUDA allocator peak; CPU: torch's
allocations). Ratios (of p50 times): `speedup_vs_X` = X's time / this row's time in the same run (ours without
RPB against natten / flex / sdpa_dense, with RPB against gather / flex_rpb), `rpb_cost` = ours with RPB /
without, `mem_ratio_vs_gather` (BRA). --verify checks every implementation's output against the reference
backend first (exit 1 on a mismatch): the rows compare like with like. --gemm-rate times a 2048^3 fp32 matmul
(and Swin's 7x7-window attention bmm) before and after the NA rows, in the same process (tools/bench/gemm.py),
and gives each NA row `gflops` (the FLOPs NA needs: each query's window; backward counted twice the forward) and
`pct_gemm`, percent of the mean matmul rate.

Writes kernels.jsonl (each row as measured), kernels.csv and kernels.md to --out-dir; every row carries the
threads, timer, CPU model and ISA, the ISA the NA kernel was built for and the versions.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import warnings

import torch

from .. import bra as bra_bench
from .. import gemm as gemm_bench
from .. import na as na_bench
from ..cli import Parser, add_timing_args, check_out_dir, device_arg, positive_int, prog

NA_QUICK = ("nat_56x56_k7",)
CPU_COMPARE_CASES = ("nat_56x56_k7",)  # natten / compiled flex on CPU by default only here (minutes per case)
TABLE_COLS = ["op", "case", "size", "stage", "shape", "region", "dim", "heads", "kernel", "dilation", "topk",
              "batch", "dtype", "backend", "mode", "p50_ms", "p90_ms", "p99_ms", "gflops", "pct_gemm", "peak_mb",
              "compile_s", "speedup_vs_torch", "speedup_vs_natten", "speedup_vs_flex", "speedup_vs_flex_rpb",
              "speedup_vs_sdpa_dense", "speedup_vs_gather", "speedup_vs_flex_norpb", "rpb_cost", "mem_ratio_vs_gather",
              "max_abs_diff", "note", "error"]
DTYPES = ("float32", "float16", "bfloat16")


def tolerance(dtype: str, device) -> float:
    """Max |impl - reference| accepted by --verify (outputs are O(1) averages of unit-normal values)."""
    if dtype == "float32":
        return 1e-4 if torch.device(device).type == "cpu" else 5e-3  # CUDA fp32 dots may run in TF32
    return {"float16": 2e-2, "bfloat16": 6e-2}[dtype]


def parse_args(argv=None):
    p = Parser(prog=prog("kernels"), description=__doc__)
    p.add_argument("--op", choices=["na", "bra", "all"], default="na")
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--out-dir", default="out/bench/kernels", help="kernels.jsonl / .csv / .md go here")
    p.add_argument("--quick", action="store_true", help="only the 56x56 k7 NA case (BRA: 224 only)")
    p.add_argument("--cases", nargs="+", choices=sorted(na_bench.ALL_CASES), default=None, metavar="CASE",
                   help=f"NA cases, of {sorted(na_bench.ALL_CASES)}")
    p.add_argument("--na-backends", nargs="+", choices=na_bench.IMPLS, default=None, metavar="IMPL",
                   help=f"NA implementations, of {na_bench.IMPLS}")
    p.add_argument("--bra-backends", nargs="+", choices=bra_bench.IMPLS, default=None, metavar="IMPL",
                   help=f"BRA implementations, of {bra_bench.IMPLS}")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="NA batch (default: the case's own, else 8)")
    p.add_argument("--sizes", type=positive_int, nargs="+", default=None, help="BRA input sizes (px)")
    p.add_argument("--stages", type=int, nargs="+", choices=[0, 1, 2], default=[0, 1, 2], help="BRA stages")
    p.add_argument("--bra-batch", type=positive_int, default=None, help="BRA batch (CPU 1, CUDA 8)")
    p.add_argument("--modes", nargs="+", choices=["fwd", "fwdbwd"], default=["fwd", "fwdbwd"])
    add_timing_args(p, warmup=2, reps=5)
    p.add_argument("--max-s", type=float, default=None, help="bound on the timed calls of one row (seconds)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run; rows left when it runs out are reported as skipped")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compare-all", action="store_true",
                   help="on CPU, run natten and compiled flex on every case (default: 56x56 k7 only; slow)")
    p.add_argument("--verify", action="store_true", help="check every implementation against the reference first")
    p.add_argument("--gemm-rate", action="store_true",
                   help="time the machine's fp32 matmul rate around the NA rows; NA rows get gflops and pct_gemm")
    p.add_argument("--verify-only", action="store_true", help="only the check (tiny shapes, seconds on CPU)")
    args = p.parse_args(argv)
    check_out_dir(p, args.out_dir)
    return args


def _cpu_skip(args):
    def skip(case, impl, mode):
        if args.device.type != "cpu":
            return None
        if mode == "fwdbwd" and impl == "natten":
            return "natten has no CPU backward"
        if mode == "fwdbwd" and impl.startswith("flex"):
            return "FlexAttention has no CPU backward"
        if args.compare_all:
            return None
        if impl in ("natten", "flex", "flex_rpb") and case.name not in CPU_COMPARE_CASES and \
                not case.name.startswith("quick"):
            return "minutes per case on CPU (--compare-all runs it)"
        if mode == "fwdbwd" and impl == "gather" and math.prod(case.spatial) * (case.batch or args.batch or 8) > 2048:
            return "tens of seconds on CPU (--compare-all runs it)"
        return None

    return skip


def na_cases(args):
    cuda = args.device.type == "cuda"
    if args.cases:
        cases = [na_bench.ALL_CASES[c] for c in args.cases]
    else:
        cases = na_bench.NAT_TINY_CASES if cuda else na_bench.CPU_CASES
        if args.quick:
            cases = [c for c in cases if c.name in NA_QUICK or c.name.startswith("nat_tiny_s1")]
    return [dataclasses.replace(c, batch=args.batch) if args.batch else c for c in cases]


def run_verify(args) -> list[dict]:
    dtype = getattr(torch, args.dtype)
    rows = []
    if args.op in ("na", "all"):
        impls = args.na_backends or (na_bench.CUDA_IMPLS if args.device.type == "cuda" else na_bench.CPU_VERIFY_IMPLS)
        impls = [i for i in impls if not (i == "natten" and not _has("natten"))]
        rows += na_bench.verify(impls, na_bench.VERIFY_CASES, args.device, dtype)
    if args.op in ("bra", "all"):
        impls = args.bra_backends or (bra_bench.CUDA_IMPLS if args.device.type == "cuda" else bra_bench.CPU_IMPLS)
        rows += bra_bench.verify(impls, (56,), args.device, dtype)
    tol = tolerance(args.dtype, args.device)
    for r in rows:
        if "max_abs_diff" in r:
            r["note"] = "ok" if r["max_abs_diff"] <= tol else f"MISMATCH (> {tol:g})"
    return rows


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001
        return False


def main(argv=None) -> int:
    from ..env import environment
    from ..report import Recorder, columns, text_table

    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "cpu" and torch.get_num_threads() > 1:
        print("--timer cpu sums the CPU time of all threads; use it with --threads 1", file=sys.stderr)
    meta = {**environment(args.device), "timer": args.timer, "warmup": args.warmup, "reps": args.reps}
    rec = Recorder(args.out_dir, "kernels", meta)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} timer={args.timer} "
          f"cpu={meta['cpu_model']} isa={meta['cpu_isa']} na_cpu_isa={meta['na_cpu_isa']} torch={torch.__version__}",
          flush=True)
    na_bench.allow_recompiles()
    checked, rows, bad = [], [], []
    if args.verify or args.verify_only:
        checked = [{**r, "mode": "verify"} for r in run_verify(args)]
        bad = [r for r in checked if r.get("note", "").startswith("MISMATCH")]
        print(text_table(checked, columns(checked, ["op", "case", "backend", "dtype", "max_abs_diff", "note",
                                                    "error"])), flush=True)
        for r in checked:
            rec(r)
    if not args.verify_only:
        rows = measure(args, rec)
        print(text_table(rows, [c for c in columns(rows, TABLE_COLS) if c in TABLE_COLS]))
    rec.finish(TABLE_COLS, rows=checked + rows, md_cols=TABLE_COLS)
    print(f"wrote {', '.join(str(p) for p in rec.files())}")
    return 1 if bad else 0


def measure(args, emit) -> list[dict]:
    """The timed rows: the GEMM rate around NA (with --gemm-rate), NA, BRA."""
    from ..timing import Deadline

    rows = []
    deadline = Deadline(args.budget)
    dtype = getattr(torch, args.dtype)
    cuda = args.device.type == "cuda"
    timing = dict(warmup=args.warmup, iters=args.reps, timer=args.timer, max_s=args.max_s, deadline=deadline,
                  emit=emit)
    if args.op in ("na", "all"):
        impls = args.na_backends or (na_bench.CUDA_IMPLS if cuda else na_bench.CPU_IMPLS)
        gemm = gemm_bench.rate_rows(args.device, when="before", timer=args.timer) if args.gemm_rate else []
        na_rows = na_bench.rows(na_cases(args), impls, device=args.device, dtype=dtype, batch=8, modes=args.modes,
                                skip=_cpu_skip(args), **timing)
        if args.gemm_rate:
            gemm += gemm_bench.rate_rows(args.device, when="after", timer=args.timer)
            square = [r["gflops"] for r in gemm if r["case"].startswith("matmul")]
            gemm_bench.add_gemm_fraction(na_rows, sum(square) / len(square))
            for r in gemm:
                emit(r)
        rows += gemm + na_rows
    if args.op in ("bra", "all"):
        impls = list(args.bra_backends or (bra_bench.CUDA_IMPLS if cuda else bra_bench.CPU_IMPLS))
        if "reference" not in impls:
            impls.insert(0, "reference")  # the ratios' baseline
        sizes = args.sizes or ([224] if args.quick else [224, 512, 1024] if cuda else [224, 512])
        batch = args.bra_batch or (8 if cuda else 1)
        rows += bra_bench.rows(sizes, impls, device=args.device, dtype=dtype, batch=batch, stages=args.stages,
                               modes=args.modes, **timing)
    return rows
