"""Speed of 2-D neighborhood attention, fwd+bwd, at NAT-Tiny stage shapes (CUDA only).

    python -m visionattn.kernels._na_triton_bench [--batch 32] [--kernel 7] [--dtype float16]

Compares the fused Triton kernel (with / without RPB), the tiled torch backend, torch.compile'd
flex_attention with an NA block mask (without RPB, and with RPB as score_mod) and dense SDPA.
Times are medians of triton.testing.do_bench in ms.
"""
from __future__ import annotations

import argparse

import torch
import triton

from . import na_triton
from ._na_flex import make_na_flex
from .na import na2d

TILE_CHOICES = (((8, 8), (8, 8)), ((4, 16), (4, 16)), ((8, 16), (8, 16)), ((16, 16), (8, 16)), ((8, 8), (4, 16)))


def _sdpa_dense(q, k, v):
    B, heads, D = q.shape[0], q.shape[-2], q.shape[-1]
    qf, kf, vf = (t.reshape(B, -1, heads, D).transpose(1, 2) for t in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(qf, kf, vf).transpose(1, 2).reshape(q.shape)


def _time(fn, inputs):
    out = fn(*inputs)
    g = torch.randn_like(out)

    def step():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(g)

    return triton.testing.do_bench(step, warmup=10, rep=50)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--kernel", type=int, default=7)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--head-dim", type=int, default=32)
    args = ap.parse_args(argv)
    dt = getattr(torch, args.dtype)
    k, B, D = args.kernel, args.batch, args.head_dim
    dev = "cuda"
    print(f"B={B} k={k} head_dim={D} {args.dtype}, fwd+bwd ms (median)")
    for H, heads in ((56, 2), (28, 4), (14, 8)):
        W = H
        hl = [torch.randn(B, H, W, heads, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3)]
        rpb = torch.randn(heads, 2 * k - 1, 2 * k - 1, device=dev, dtype=dt, requires_grad=True)
        res = {}
        for ta, tb in TILE_CHOICES:
            na_triton.TILES_2D = ((1, *ta), (1, *tb))
            res[f"triton {ta}/{tb}"] = _time(lambda q, k_, v, rpb=rpb: na2d(q, k_, v, k, rpb=rpb, backend="triton"), hl)
        na_triton.TILES_2D = None
        res["triton"] = _time(lambda q, k_, v: na2d(q, k_, v, k, backend="triton"), hl)
        res["triton+rpb"] = _time(lambda q, k_, v, rpb=rpb: na2d(q, k_, v, k, rpb=rpb, backend="triton"), hl)
        res["torch+rpb"] = _time(lambda q, k_, v, rpb=rpb: na2d(q, k_, v, k, rpb=rpb, backend="torch"), hl)
        for name, bias in (("flex", None), ("flex+rpb", rpb)):
            try:
                res[name] = _time(make_na_flex((H, W), k, rpb=bias, device=dev), hl)
            except Exception as e:  # report and go on
                res[name] = float("nan")
                print(f"  {name} failed: {type(e).__name__}: {str(e)[:200]}")
        res["sdpa dense"] = _time(_sdpa_dense, hl)
        print(f"{H}x{W} heads {heads}: " + ", ".join(f"{n} {t:.3f}" for n, t in res.items())
              + f" | rpb cost x{res['triton+rpb'] / res['triton']:.2f}")


if __name__ == "__main__":
    main()
