"""Benchmark of routed (bi-level routing) attention backends on BiFormer-S stage shapes.

Compares our backends with the official gather formulation (backend "reference"): median time after warm-up
and peak extra memory (allocations made during the call, inputs excluded), forward (inference) and
forward+backward. On CUDA it adds the Triton kernel and compiled FlexAttention with a block mask built from
the routing index.

    python tools/_bench_bra.py --sizes 512 --device cpu
    python tools/bench_kernels.py --op bra ...   (calls run(args))
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    from visionattn.kernels.bra import region_mean, region_topk, routed_attention
except ImportError:  # a checkout without the editable install: the kernels folder is importable as is
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kernels.bra import region_mean, region_topk, routed_attention

# BiFormer-S routed stages: (stride, dim, heads, topk); n_win 7, qk_dim = dim, scale dim ** -0.5.
BIFORMER_S_STAGES = ((4, 64, 2, 1), (8, 128, 4, 4), (16, 256, 8, 16))
N_WIN = 7


def stage_shapes(size: int, n_win: int = N_WIN):
    """Per routed stage: dict(stage, H, W (padded to a multiple of n_win as auto_pad does), dim, heads, topk)."""
    out = []
    for i, (stride, dim, heads, topk) in enumerate(BIFORMER_S_STAGES):
        s = math.ceil(size / stride)
        s = math.ceil(s / n_win) * n_win
        out.append(dict(stage=i, H=s, W=s, dim=dim, heads=heads, topk=topk))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_bytes(fn, device) -> int:
    """Peak of the bytes allocated during fn() and not yet freed (CUDA: allocator stats; CPU: profiler events)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events):
        cur += nbytes
        peak = max(peak, cur)
    return peak


def _flex_fn(q, k, v, index, region_size, scale, mode="fwd", gout=None):
    """Compiled FlexAttention over region-major token order, mask = routed region pairs (CUDA only)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, W, nh, dq = q.shape
    rh, rw = region_size
    gh, gw = H // rh, W // rw
    R, hw = gh * gw, rh * rw

    def to_seq(t):  # [B, H, W, nh, d] -> [B, nh, R*hw, d], regions contiguous
        d = t.shape[-1]
        return t.reshape(B, gh, rh, gw, rw, nh, d).permute(0, 5, 1, 3, 2, 4, 6).reshape(B, nh, R * hw, d)

    routed = torch.zeros(B, R, R, dtype=torch.bool, device=q.device)
    routed.scatter_(2, index, True)

    def mask_mod(b, h, q_idx, kv_idx):
        return routed[b, q_idx // hw, kv_idx // hw]

    # _compile: evaluate the mask block-wise instead of materialising [N, N] (OOM at 1024 input otherwise).
    mask = create_block_mask(mask_mod, B, None, R * hw, R * hw, device=q.device, _compile=True)
    flex = torch.compile(flex_attention)
    qs, ks, vs = to_seq(q), to_seq(k), to_seq(v)
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                flex(qs, ks, vs, block_mask=mask, scale=scale)

        return fwd
    qs, ks, vs = (t.detach().requires_grad_() for t in (qs, ks, vs))
    gs = to_seq(gout)

    def fwdbwd():
        out = flex(qs, ks, vs, block_mask=mask, scale=scale)
        torch.autograd.grad(out, (qs, ks, vs), gs)

    return fwdbwd


def _make_fn(be, mode, q, k, v, index, region_size, scale, gout):
    """The timed callable of one (backend, mode)."""
    if be == "flex":
        return _flex_fn(q, k, v, index, region_size, scale, mode, gout)
    if mode == "fwd":

        def fwd():
            with torch.no_grad():
                routed_attention(q, k, v, index, region_size, scale=scale, backend=be)

        return fwd
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def fwdbwd():
        out = routed_attention(qg, kg, vg, index, region_size, scale=scale, backend=be)
        torch.autograd.grad(out, (qg, kg, vg), gout)

    return fwdbwd


def _get(args, name, default):
    if args is None:
        return default
    if isinstance(args, dict):
        return args.get(name, default)
    val = getattr(args, name, None)
    return default if val is None else val


def run(args=None) -> list[dict]:
    """One row per (input size, stage, backend, mode): time_ms, peak_mb and the ratios to "reference".

    Reads from `args` (Namespace or dict; all optional): device ('cpu'/'cuda'), sizes (input sizes),
    batch, dtype ('float32'/'float16'/'bfloat16'), warmup, iters, backends, modes ('fwd', 'fwdbwd'),
    stages (indices into BiFormer-S's routed stages).
    """
    device = torch.device(_get(args, "device", "cuda" if torch.cuda.is_available() else "cpu"))
    sizes = [int(s) for s in _get(args, "sizes", [224, 512])]
    batch = int(_get(args, "batch", 1))
    dtype = getattr(torch, str(_get(args, "dtype", "float32")))
    warmup = int(_get(args, "warmup", 2))
    iters = int(_get(args, "iters", 5))
    modes = list(_get(args, "modes", ["fwd", "fwdbwd"]))
    stages = [int(s) for s in _get(args, "stages", [0, 1, 2])]
    default_backends = ["reference", "torch"] + (["triton", "flex"] if device.type == "cuda" else [])
    backends = list(_get(args, "backends", default_backends))
    if "reference" not in backends:
        backends = ["reference"] + backends

    rows = []
    gen = torch.Generator().manual_seed(0)
    for size in sizes:
        for st in stage_shapes(size):
            if st["stage"] not in stages:
                continue
            H, W, dim, nh, topk = st["H"], st["W"], st["dim"], st["heads"], st["topk"]
            d = dim // nh
            scale = dim ** -0.5
            shape = (batch, H, W, nh, d)
            q, k, v = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
            index = region_topk(region_mean(q, N_WIN), region_mean(k, N_WIN), topk, scale=scale)
            region_size = (H // N_WIN, W // N_WIN)
            gout = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
            ref = {}
            for be in backends:
                for mode in modes:
                    row = dict(op="bra", size=size, stage=st["stage"], H=H, W=W, dim=dim, heads=nh, topk=topk,
                               region=f"{region_size[0]}x{region_size[1]}", batch=batch, dtype=str(dtype)[6:],
                               device=device.type, backend=be, mode=mode)
                    try:
                        fn = _make_fn(be, mode, q, k, v, index, region_size, scale, gout)
                        row["time_ms"] = 1e3 * _median_time(fn, device, warmup, iters)
                        row["peak_mb"] = _peak_bytes(fn, device) / 2**20
                    except Exception as e:  # a backend unavailable here (e.g. triton without CUDA)
                        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    if be == "reference" and "time_ms" in row:
                        ref[mode] = row
                    elif mode in ref and "time_ms" in row:
                        row["speedup_vs_gather"] = ref[mode]["time_ms"] / row["time_ms"]
                        if row["peak_mb"] > 0:
                            row["mem_ratio_vs_gather"] = ref[mode]["peak_mb"] / row["peak_mb"]
                    rows.append(row)
    return rows


def _fmt(rows: list[dict]) -> str:
    cols = ["size", "stage", "H", "region", "dim", "heads", "topk", "backend", "mode", "time_ms", "peak_mb",
            "speedup_vs_gather", "mem_ratio_vs_gather"]
    lines = [" | ".join(cols)]
    for r in rows:
        if "error" in r:
            lines.append(" | ".join(str(r.get(c, "")) for c in cols[:9]) + f" | {r['error']}")
            continue
        vals = []
        for c in cols:
            x = r.get(c, "")
            vals.append(f"{x:.2f}" if isinstance(x, float) else str(x))
        lines.append(" | ".join(vals))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--backends", nargs="+", default=None)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"])
    args = p.parse_args(argv)
    rows = []
    for size in args.sizes:  # one table per size, printed as soon as it is measured
        args.sizes = [size]
        part = run(args)
        print(_fmt(part), flush=True)
        rows += part
    return rows


if __name__ == "__main__":
    main()
