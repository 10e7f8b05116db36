"""Neighborhood-attention test helpers shared by the backend tests (torch here, Triton in its own file).

    from na_cases import NA_CASES, assert_matches_reference
    @pytest.mark.parametrize("case", NA_CASES, ids=case_id)
    def test_mine(case):
        assert_matches_reference("triton", **case)
"""
from __future__ import annotations

import torch

from visionattn.kernels import na1d, na2d, na3d

NA_FNS = {1: na1d, 2: na2d, 3: na3d}

# A representative grid, not a cross product: every kernel size, dilation, stride and causal setting
# appears on 1-D / 2-D / 3-D, odd non-square maps, uneven dilation groups, several batch/head counts.
NA_CASES = [
    # 2-D, plain NA and DiNA
    dict(spatial=(13, 17), kernel_size=3, dilation=1, heads=2, batch=2),
    dict(spatial=(13, 17), kernel_size=5, dilation=2, heads=1, batch=1),
    dict(spatial=(13, 17), kernel_size=7, dilation=1, heads=3, batch=2),
    dict(spatial=(15, 14), kernel_size=7, dilation=2, heads=2, batch=1),
    dict(spatial=(14, 16), kernel_size=13, dilation=1, heads=2, batch=1),
    dict(spatial=(17, 13), kernel_size=(5, 3), dilation=(3, 4), heads=2, batch=1),
    dict(spatial=(11, 15), kernel_size=3, dilation=3, heads=4, batch=3, rpb=False),
    # stride (GNA) and causal, alone and mixed per axis
    dict(spatial=(13, 17), kernel_size=5, dilation=1, stride=2, heads=2, batch=1),
    dict(spatial=(13, 17), kernel_size=5, dilation=1, stride=5, heads=2, batch=1),
    dict(spatial=(13, 17), kernel_size=(7, 3), dilation=(1, 2), stride=(3, 2), heads=2, batch=1),
    dict(spatial=(13, 17), kernel_size=5, dilation=1, is_causal=True, heads=2, batch=1),
    dict(spatial=(13, 17), kernel_size=3, dilation=2, stride=2, is_causal=(True, False), heads=2, batch=2),
    dict(spatial=(12, 16), kernel_size=4, dilation=(1, 2), stride=(2, 3), is_causal=(False, True), heads=1,
         batch=1),
    # 1-D
    dict(spatial=(37,), kernel_size=13, dilation=2, heads=2, batch=2),
    dict(spatial=(40,), kernel_size=7, dilation=3, stride=3, is_causal=True, heads=2, batch=1),
    dict(spatial=(29,), kernel_size=5, dilation=1, stride=4, heads=3, batch=1, rpb=False),
    # 3-D
    dict(spatial=(5, 6, 7), kernel_size=3, dilation=(1, 2, 1), stride=(1, 1, 2), is_causal=(False, True, False),
         heads=2, batch=1),
    dict(spatial=(6, 7, 5), kernel_size=(3, 5, 3), dilation=1, heads=1, batch=2),
]


def case_id(case: dict) -> str:
    parts = ["x".join(map(str, case["spatial"])), f"k{case['kernel_size']}", f"d{case.get('dilation', 1)}"]
    if case.get("stride", 1) != 1:
        parts.append(f"s{case['stride']}")
    if case.get("is_causal", False):
        parts.append(f"c{case['is_causal']}")
    if not case.get("rpb", True):
        parts.append("norpb")
    return "-".join(str(p).replace(" ", "") for p in parts)


def make_inputs(spatial, kernel_size, heads=2, head_dim=8, batch=1, rpb=True, dtype=torch.float32,
                device="cpu", seed=0, **_):
    """q, k, v [B, *spatial, heads, head_dim] and an RPB table (or None)."""
    n = len(spatial)
    ks = (kernel_size,) * n if isinstance(kernel_size, int) else tuple(kernel_size)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, *spatial, heads, head_dim, generator=g) for _ in range(3))
    table = torch.randn(heads, *(2 * x - 1 for x in ks), generator=g) if rpb else None
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return cast(q), cast(k), cast(v), cast(table)


def run_na(backend, q, k, v, table, kernel_size, dilation=1, stride=1, is_causal=False, scale=None):
    fn = NA_FNS[q.dim() - 3]
    return fn(q, k, v, kernel_size, stride=stride, dilation=dilation, is_causal=is_causal, rpb=table, scale=scale,
              backend=backend)


def assert_matches_reference(backend, spatial, kernel_size, dilation=1, stride=1, is_causal=False, heads=2,
                             head_dim=8, batch=1, rpb=True, dtype=torch.float32, device="cpu", backward=True,
                             atol=None, rtol=None, scale=None, seed=0):
    """`backend` equals the dense reference (computed in fp64 on CPU): output and grads of q, k, v, rpb."""
    if atol is None:
        atol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    if rtol is None:
        rtol = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    q, k, v, table = make_inputs(spatial, kernel_size, heads, head_dim, batch, rpb, torch.float64, "cpu", seed)
    args = dict(kernel_size=kernel_size, dilation=dilation, stride=stride, is_causal=is_causal, scale=scale)

    leaves_ref = [t.clone().requires_grad_(backward) if t is not None else None for t in (q, k, v, table)]
    out_ref = run_na("reference", *leaves_ref, **args)
    leaves = [t.to(device=device, dtype=dtype).requires_grad_(backward) if t is not None else None
              for t in (q, k, v, table)]
    out = run_na(backend, *leaves, **args)
    assert out.shape == out_ref.shape and out.dtype == dtype and out.device.type == torch.device(device).type
    torch.testing.assert_close(out.detach().cpu().double(), out_ref.detach(), atol=atol, rtol=rtol)
    if not backward:
        return
    gout = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    out_ref.backward(gout)
    out.backward(gout.to(device=device, dtype=dtype))
    for name, a, b in zip(("q", "k", "v", "rpb"), leaves, leaves_ref):
        if b is None:
            continue
        assert a.grad is not None, f"no gradient for {name}"
        torch.testing.assert_close(a.grad.cpu().double(), b.grad, atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")
