"""Kernel benchmark: neighborhood attention (NA) and bi-level routing attention (BRA) backends in one table.

    python tools/bench_kernels.py --op na --device cpu --threads 1 --csv out/bench_kernels.csv
    python tools/bench_kernels.py --op all --device cuda --dtype float16

NA rows, on NAT-like shapes (B=8, head_dim 32): 56x56 k7, 28x28 k7 dilation 2, 14x14 k7, 1-D 4096 k31.
Backends: ours (`torch`, with and without RPB; `gather` = the naive index-gather formulation; `triton` on
CUDA), `natten` (its na*d, when installed; CPU: unfused FlexAttention, forward only), `flex` =
torch.compile'd FlexAttention with an NA block mask (steady state; its compile time is in `compile_s`),
on CUDA also `flex_rpb` (RPB via score_mod) and `sdpa_dense` (full attention, a dense-cost yardstick).
Per row: median time of `--iters` calls after `--warmup` calls (`--timer cpu` uses process CPU time,
steadier on a shared machine, only meaningful with --threads 1), and peak memory above the inputs (CUDA:
allocator peak; CPU: sampled RSS peak, freed heap returned to the OS before each call). Ratios:
`speedup_vs_natten`, `speedup_vs_flex`, `speedup_vs_gather` = their time / this row's time (same case and
mode; ours without RPB is the like-for-like row against natten and flex, which have no RPB).
BRA rows come from tools/_bench_bra.py (`run(args)`), when present.
"""
from __future__ import annotations

import argparse
import csv
import ctypes
import math
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

try:
    from visionattn.kernels._na_flex import make_na_flex
    from visionattn.kernels.na import na1d, na2d
except Exception:  # a checkout without the editable install (or a timm too old for the backbones)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kernels._na_flex import make_na_flex
    from kernels.na import na1d, na2d

# name, spatial, heads, kernel, dilation
NA_CASES = [
    ("nat_56x56_k7", (56, 56), 2, 7, 1),
    ("dinat_28x28_k7_d2", (28, 28), 4, 7, 2),
    ("nat_14x14_k7", (14, 14), 4, 7, 1),
    ("na1d_4096_k31", (4096,), 2, 31, 1),
]
QUICK_CASES = ("nat_56x56_k7",)
CPU_COMPARE_CASES = ("nat_56x56_k7",)  # natten / compiled flex on CPU by default only here (the target case)
HEAD_DIM = 32


# ------------------------------------------------------------------------------------------------ timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, warmup: int, iters: int, timer: str) -> float:
    clock = time.process_time if timer == "cpu" and device.type == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = clock()
        fn()
        _sync(device)
        times.append(clock() - t0)
    return 1e3 * statistics.median(times)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _peak_mb(fn, device) -> float:
    """Peak memory of one call above what was allocated before it, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    import gc

    gc.collect()
    _trim()
    base = peak = _rss()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(2e-4)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    fn()
    done.set()
    th.join()
    peak = max(peak, _rss())
    return (peak - base) / 2**20


# ------------------------------------------------------------------------------------------------ NA impls


def _na_fn(n):
    return na1d if n == 1 else na2d


def _make_na(impl, case, q, k, v, rpb, scale, device):
    """(callable q, k, v -> out, compile seconds or None)."""
    _, spatial, heads, ks, dil = case
    n = len(spatial)
    if impl in ("torch", "torch_norpb", "gather", "triton"):
        be = "torch" if impl == "torch_norpb" else impl
        bias = None if impl == "torch_norpb" else rpb
        f = _na_fn(n)
        return (lambda q, k, v: f(q, k, v, ks, dilation=dil, rpb=bias, scale=scale, backend=be)), None
    if impl == "natten":
        import natten

        f = {1: natten.na1d, 2: natten.na2d}[n]
        return (lambda q, k, v: f(q, k, v, kernel_size=ks, dilation=dil, scale=scale)), None
    if impl in ("flex", "flex_rpb"):
        run = make_na_flex(spatial, ks, dil, rpb=rpb if impl == "flex_rpb" else None, scale=scale, device=device)
        t0 = time.perf_counter()
        if q.requires_grad:
            run(q, k, v).sum().backward()
        else:
            with torch.no_grad():
                run(q, k, v)
        _sync(device)
        return run, time.perf_counter() - t0
    if impl == "sdpa_dense":
        import torch.nn.functional as F

        def run(q, k, v):
            B, h, D = q.shape[0], q.shape[-2], q.shape[-1]
            qf, kf, vf = (t.reshape(B, -1, h, D).transpose(1, 2) for t in (q, k, v))
            return F.scaled_dot_product_attention(qf, kf, vf, scale=scale).transpose(1, 2).reshape(q.shape)

        return run, None
    raise ValueError(f"unknown NA impl {impl!r}")


def na_rows(args) -> list[dict]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cases = [c for c in NA_CASES if not args.quick or c[0] in QUICK_CASES]
    if args.cases:
        cases = [c for c in NA_CASES if c[0] in args.cases]
    impls = args.na_backends or (
        ["torch", "torch_norpb", "gather", "natten", "flex"]
        + (["triton", "flex_rpb", "sdpa_dense"] if device.type == "cuda" else [])
    )
    rows = []
    for case in cases:
        name, spatial, heads, ks, dil = case
        B = args.batch
        shape = (B, *spatial, heads, HEAD_DIM)
        gen = torch.Generator().manual_seed(0)
        q, k, v, gout = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(4))
        rpb = (0.1 * torch.randn(heads, *(2 * ks - 1 for _ in spatial), generator=gen)).to(device, dtype)
        scale = HEAD_DIM ** -0.5
        for impl in impls:
            if (impl in ("natten", "flex") and device.type == "cpu" and name not in CPU_COMPARE_CASES
                    and not args.compare_all):
                continue  # minutes per case on CPU (natten's unfused path, inductor compiles)
            for mode in ("fwd", "fwdbwd"):
                row = dict(op="na", case=name, shape="x".join(map(str, spatial)), heads=heads, kernel=ks,
                           dilation=dil, batch=B, dtype=args.dtype, device=device.type, backend=impl, mode=mode)
                try:
                    if mode == "fwdbwd" and impl == "natten" and device.type == "cpu":
                        raise RuntimeError("natten has no CPU backward")
                    if mode == "fwdbwd" and impl == "flex" and device.type == "cpu":
                        raise RuntimeError("FlexAttention has no CPU backward")
                    if (mode == "fwdbwd" and impl == "gather" and device.type == "cpu" and not args.compare_all
                            and math.prod(spatial) * B > 2048):
                        raise RuntimeError("skipped on CPU (tens of seconds; --compare-all runs it)")
                    leaves = [t.clone().requires_grad_(mode == "fwdbwd") for t in (q, k, v)]
                    rpb_l = rpb.clone().requires_grad_(mode == "fwdbwd")
                    fn, compile_s = _make_na(impl, case, *leaves, rpb_l, scale, device)
                    if compile_s is not None:
                        row["compile_s"] = compile_s
                    if mode == "fwd":
                        def call(fn=fn, leaves=leaves):
                            with torch.no_grad():
                                fn(*leaves)
                    else:
                        def call(fn=fn, leaves=leaves, rpb_l=rpb_l, gout=gout):
                            fn(*leaves).backward(gout)
                            for t in (*leaves, rpb_l):
                                t.grad = None
                    first = []
                    for _ in range(2):  # warm-up (caches, autograd threads, lazy compiles) before deciding
                        t0 = time.perf_counter()
                        call()
                        first.append(time.perf_counter() - t0)
                        if first[0] < 2.0:
                            break
                    if min(first) > 2.0:
                        # natten's unfused CPU path: one more timed call (under the memory sampler)
                        clock = time.process_time if args.timer == "cpu" else time.perf_counter
                        t0 = clock()
                        row["peak_mb"] = _peak_mb(call, device)
                        row["time_ms"] = 1e3 * (clock() - t0)
                        row["note"] = "1 timed call"
                    else:
                        row["time_ms"] = _time(call, device, args.warmup, args.iters, args.timer)
                        row["peak_mb"] = _peak_mb(call, device)
                except Exception as e:
                    msg = str(e).splitlines()[0][:160] if str(e) else ""
                    row["error"] = f"{type(e).__name__}: {msg}"
                rows.append(row)
    _add_ratios(rows)
    return rows


def _add_ratios(rows):
    by = {(r["case"], r["mode"], r["backend"]): r for r in rows if "time_ms" in r}
    for r in rows:
        if "time_ms" not in r:
            continue
        for other in ("natten", "flex", "gather"):
            o = by.get((r["case"], r["mode"], other))
            if o is not None and o is not r:
                r[f"speedup_vs_{other}"] = o["time_ms"] / r["time_ms"]


# ------------------------------------------------------------------------------------------------ BRA


def bra_rows(args) -> list[dict]:
    path = Path(__file__).resolve().parent / "_bench_bra.py"
    if not path.exists():
        print("tools/_bench_bra.py not found: no BRA rows", file=sys.stderr)
        return []
    sys.path.insert(0, str(path.parent))
    import _bench_bra

    ns = argparse.Namespace(device=args.device, dtype=args.dtype, warmup=args.warmup, iters=args.iters,
                            sizes=[224] if args.quick else None)
    return _bench_bra.run(ns)


# ------------------------------------------------------------------------------------------------ output

TABLE_COLS = ["op", "case", "size", "stage", "shape", "H", "region", "dim", "heads", "kernel", "dilation", "topk",
              "batch", "dtype", "backend", "mode", "time_ms", "peak_mb", "compile_s", "speedup_vs_natten",
              "speedup_vs_flex", "speedup_vs_gather", "mem_ratio_vs_gather", "note", "error"]


def _columns(rows):
    cols = [c for c in TABLE_COLS if any(c in r for r in rows)]
    extra = []
    for r in rows:
        extra += [c for c in r if c not in cols and c not in extra]
    return cols + extra


def format_table(rows) -> str:
    cols = [c for c in _columns(rows) if c in TABLE_COLS]
    cells = [[c for c in cols]]
    for r in rows:
        cells.append([f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=["na", "bra", "all"], default="na")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    p.add_argument("--quick", action="store_true", help="only the 56x56 k7 NA case (BRA: 224 only)")
    p.add_argument("--cases", nargs="+", default=None, help=f"NA cases, of {[c[0] for c in NA_CASES]}")
    p.add_argument("--na-backends", nargs="+", default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--timer", choices=["wall", "cpu"], default="wall")
    p.add_argument("--compare-all", action="store_true",
                   help="on CPU, run natten and compiled flex on every case (default: 56x56 k7 only; slow)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.timer == "cpu" and torch.get_num_threads() > 1:
        print("--timer cpu sums the CPU time of all threads; use it with --threads 1", file=sys.stderr)
    rows = []
    if args.op in ("na", "all"):
        rows += na_rows(args)
    if args.op in ("bra", "all"):
        rows += bra_rows(args)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} timer={args.timer} "
          f"torch={torch.__version__}")
    print(format_table(rows))
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_columns(rows))
            w.writeheader()
            w.writerows(rows)
    return rows


if __name__ == "__main__":
    main()
