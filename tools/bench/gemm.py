"""The machine's matmul rate, measured in the same process as the kernels it is the yardstick for.

`rate_rows` times a square fp32 GEMM (2048^3 by default: MKL / oneDNN at full speed) and, for attention kernels,
the batched small GEMMs of 7x7-window attention (Swin's: [*, 49, 32] @ [*, 32, 49] and back) with the same FLOPs
as neighborhood attention at NAT's first stage; `add_gemm_fraction` turns kernel rows into GFLOP/s and percent of
the square GEMM's rate (`pct_gemm`), counting only the FLOPs the operation needs (NA: each query's window).
"""
from __future__ import annotations

import math

import torch

from .timing import latency


def gemm_gflops(device="cpu", dtype=torch.float32, n: int = 2048, iters: int = 5,
                timer: str = "wall") -> tuple[float, float]:
    """(GFLOP/s, p50 ms per call) of an n x n x n matmul."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    t = latency(lambda: a @ b, device, warmup=2, reps=iters, timer=timer)["p50_ms"]
    return 2 * n ** 3 / (t * 1e6), t


def window_bmm_gflops(device="cpu", dtype=torch.float32, windows: int = 8 * 2 * 64, tokens: int = 49,
                      dim: int = 32, iters: int = 5, timer: str = "wall") -> tuple[float, float]:
    """(GFLOP/s, p50 ms per call) of window attention's two batched matmuls (scores and weighted values)."""
    q, k, v = (torch.randn(windows, tokens, dim, device=device, dtype=dtype) for _ in range(3))
    p = torch.randn(windows, tokens, tokens, device=device, dtype=dtype)
    t = latency(lambda: (q @ k.transpose(-1, -2), p @ v), device, warmup=2, reps=iters,
                timer=timer)["p50_ms"]
    return 4 * windows * tokens * tokens * dim / (t * 1e6), t


def rate_rows(device="cpu", dtype=torch.float32, when: str = "", timer: str = "wall") -> list[dict]:
    """Rows for the table: the square GEMM and the window-attention batched GEMM, timed with the kernels' timer
    (a CPU-time kernel beside a wall-clock GEMM would inflate `pct_gemm` on a busy machine)."""
    dt = str(dtype).replace("torch.", "")
    rows = []
    for name, fn in (("matmul_2048", gemm_gflops), ("window_bmm_49x32", window_bmm_gflops)):
        gflops, t = fn(device, dtype, timer=timer)
        rows.append(dict(op="gemm", case=f"{name}{'_' + when if when else ''}", backend="torch", dtype=dt,
                         device=torch.device(device).type, mode="fwd", p50_ms=t, gflops=gflops))
    return rows


def na_flops(spatial, heads: int, kernel: int, head_dim: int, batch: int, mode: str) -> float:
    """FLOPs NA needs: 2 (q.k + p.v) multiply-adds per (query, window key, dim); backward twice the forward."""
    fwd = 2 * 2 * batch * math.prod(spatial) * heads * kernel ** len(spatial) * head_dim
    return fwd * (3 if mode == "fwdbwd" else 1)


def add_gemm_fraction(rows, gemm_gflops_rate: float) -> None:
    """`gflops` and `pct_gemm` (percent of the square GEMM's rate) on every timed NA row."""
    for r in rows:
        if r.get("op") != "na" or "p50_ms" not in r:
            continue
        spatial = tuple(int(x) for x in str(r["shape"]).split("x"))
        fl = na_flops(spatial, r["heads"], r["kernel"], r.get("head_dim", 32), r["batch"], r["mode"])
        r["gflops"] = fl / (r["p50_ms"] * 1e6)
        r["pct_gemm"] = 100 * r["gflops"] / gemm_gflops_rate
