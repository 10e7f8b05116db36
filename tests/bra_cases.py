"""Shared routed-attention cases and a backend-vs-reference checker (used by test_bra.py and the Triton tests).

    from bra_cases import BRA_CASES, check_backend
    check_backend("triton", BRA_CASES[0], dtype=torch.float32, atol=1e-4)
"""
from __future__ import annotations

import torch

from visionattn.kernels.bra import routed_attention

# B, region grid (rows, cols), region size (rows, cols), heads, qk head dim, v head dim, topk (None = all).
BRA_CASES = [
    dict(B=2, grid=(7, 7), region=(2, 2), heads=2, dq=8, dv=8, topk=1),
    dict(B=2, grid=(7, 7), region=(2, 2), heads=2, dq=8, dv=8, topk=4),
    dict(B=1, grid=(7, 7), region=(1, 2), heads=1, dq=4, dv=4, topk=None),
    dict(B=2, grid=(8, 8), region=(1, 1), heads=3, dq=4, dv=4, topk=4),
    dict(B=2, grid=(4, 6), region=(3, 5), heads=3, dq=8, dv=12, topk=None),
    dict(B=1, grid=(4, 6), region=(2, 3), heads=2, dq=6, dv=4, topk=1),
    dict(B=2, grid=(2, 2), region=(8, 8), heads=2, dq=16, dv=16, topk=2),
    dict(B=1, grid=(3, 2), region=(5, 7), heads=4, dq=8, dv=8, topk=4),
]


def case_id(case: dict) -> str:
    g, r = case["grid"], case["region"]
    return (f"B{case['B']}-g{g[0]}x{g[1]}-r{r[0]}x{r[1]}-h{case['heads']}-d{case['dq']}v{case['dv']}"
            f"-k{case['topk'] or 'all'}")


def make_inputs(case: dict, dtype=torch.float32, device="cpu", seed: int = 0):
    """q, k, v ``[B, H, W, heads, d]`` and a random routing index ``[B, R, topk]`` (distinct regions per row)."""
    g = torch.Generator().manual_seed(seed)
    B, (gh, gw), (rh, rw) = case["B"], case["grid"], case["region"]
    H, W, R = gh * rh, gw * rw, gh * gw
    topk = case["topk"] or R
    nh, dq, dv = case["heads"], case["dq"], case["dv"]
    q = torch.randn(B, H, W, nh, dq, generator=g)
    k = torch.randn(B, H, W, nh, dq, generator=g)
    v = torch.randn(B, H, W, nh, dv, generator=g)
    index = torch.stack([torch.randperm(R, generator=g)[:topk] for _ in range(B * R)]).view(B, R, topk)
    return (*(t.to(device=device, dtype=dtype) for t in (q, k, v)), index.to(device))


def check_backend(backend: str, case: dict, dtype=torch.float64, device="cpu", atol: float = 1e-9,
                  rtol: float = 0.0, grad: bool = True, scale: float | None = 0.37, seed: int = 0) -> dict:
    """Asserts that `backend` matches the reference (forward and q/k/v grads); returns the max abs diffs.

    The reference runs in float64 on the same inputs; `atol`/`rtol` apply to every compared tensor.
    """
    q, k, v, index = make_inputs(case, dtype=dtype, device=device, seed=seed)
    rs = case["region"]
    g = torch.Generator().manual_seed(seed + 1)
    gout = torch.randn(v.shape, generator=g).to(device=device, dtype=dtype)

    def run(be, dt):
        ins = [t.detach().to(dt).requires_grad_(grad) for t in (q, k, v)]
        out = routed_attention(*ins, index, rs, scale=scale, backend=be)
        grads = torch.autograd.grad(out, ins, gout.to(dt)) if grad else ()
        return (out, *grads)

    got = run(backend, dtype)
    want = run("reference", torch.float64)
    names = ["out", "grad_q", "grad_k", "grad_v"][: len(got)]
    diffs = {}
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == dtype, f"{name}: {a.shape}/{a.dtype} vs {b.shape}"
        diff = (a.double() - b).abs()
        diffs[name] = diff.max().item()
        bound = atol + rtol * b.abs()
        assert bool((diff <= bound).all()), f"{backend} {case_id(case)} {name}: max abs diff {diffs[name]:.3e}"
    return diffs
