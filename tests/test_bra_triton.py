"""Fused Triton routed attention (kernels/bra_triton.py) vs the gather reference, forward and q/k/v grads.

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): tiny shapes only.
"""
import pytest
import torch
from bra_cases import case_id, check_backend, make_inputs

from visionattn._environment import override, settings
from visionattn.kernels import bra_triton
from visionattn.kernels.bra import routed_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETING = settings().triton_interpret


def _case(B, grid, region, heads, dq, dv, topk):
    return dict(B=B, grid=grid, region=region, heads=heads, dq=dq, dv=dv, topk=topk)


# Region grids 2x2 / 3x2 / 4x4, region sizes 1x1 / 2x3 / 4x4 (+ one of 72 tokens: two query tiles), topk 1 / 2 /
# all, qk dim != v dim. Several cases span more than one key tile (topk * region > BLOCK_N) and more than one
# query-row tile in the dK/dV kernel (a key region routed from many query regions).
CASES = [
    _case(1, (2, 2), (1, 1), 2, 16, 16, 1),
    _case(2, (2, 2), (2, 3), 1, 16, 8, 2),
    _case(1, (3, 2), (2, 3), 2, 16, 16, None),
    _case(2, (3, 2), (1, 1), 1, 16, 8, None),
    _case(1, (4, 4), (4, 4), 1, 16, 16, 2),
    _case(1, (4, 4), (1, 1), 1, 8, 16, None),
    _case(1, (2, 2), (4, 4), 1, 16, 16, None),
    _case(1, (2, 1), (9, 8), 1, 16, 16, 1),
]
FP16_CASES = [CASES[1], CASES[4], CASES[6]]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fp32_matches_reference(case):
    check_backend("triton", case, dtype=torch.float32, device=DEVICE, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", FP16_CASES, ids=case_id)
def test_fp16_matches_reference(case):
    check_backend("triton", case, dtype=torch.float16, device=DEVICE, atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(not INTERPRETING, reason="fp64 runs in the Triton interpreter only")
def test_fp64_exact_and_gradcheck():
    case = _case(1, (2, 1), (1, 2), 1, 2, 3, 2)
    diffs = check_backend("triton", case, dtype=torch.float64, atol=1e-12)
    assert max(diffs.values()) < 1e-12
    q, k, v, index = make_inputs(case, dtype=torch.float64)
    ins = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b, c: routed_attention(a, b, c, index, (1, 2), scale=0.7, backend="triton"), ins, fast_mode=True
    )


def test_strided_views_of_a_fused_projection():
    # q, k, v as head-split views of one [B, H, W, 2*C + Cv] projection: no copies needed by the kernel.
    B, H, W, nh, dq, dv = 1, 4, 6, 2, 16, 8
    qkv = torch.randn(B, H, W, nh * (2 * dq + dv), device=DEVICE)
    q, k, v = qkv.split([nh * dq, nh * dq, nh * dv], dim=-1)
    q, k, v = q.view(B, H, W, nh, dq), k.view(B, H, W, nh, dq), v.view(B, H, W, nh, dv)
    index = torch.tensor([[[0, 3], [1, 0], [3, 2], [2, 1]]], device=DEVICE)
    gout = torch.randn(B, H, W, nh, dv, device=DEVICE).transpose(1, 2).contiguous().transpose(1, 2)
    res = []
    for be in ("triton", "reference"):
        ins = [t.detach().requires_grad_() for t in (q, k, v)]
        out = routed_attention(*ins, index, (2, 3), scale=0.3, backend=be)
        res.append((out, *torch.autograd.grad(out, ins, gout)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_repeated_regions_and_partial_grads():
    # A region listed twice counts twice in the softmax (gather semantics); only v needs a gradient.
    q, k, v, _ = make_inputs(_case(1, (2, 2), (2, 2), 1, 16, 16, 2))
    q, k, v = (t.to(DEVICE) for t in (q, k, v))
    index = torch.tensor([[[1, 1], [0, 3], [3, 3], [2, 0]]], device=DEVICE)
    res = []
    for be in ("triton", "reference"):
        vv = v.detach().requires_grad_()
        out = routed_attention(q, k, vv, index, (2, 2), backend=be)
        res.append((out, torch.autograd.grad(out.square().sum(), vv)[0]))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_no_grad_forward_matches():
    q, k, v, index = (t.to(DEVICE) for t in make_inputs(CASES[1]))
    with torch.no_grad():
        got = routed_attention(q, k, v, index, (2, 3), backend="triton")
    want = routed_attention(q, k, v, index, (2, 3), backend="reference")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_unsupported_configs_raise():
    q, k, v, index = make_inputs(CASES[0])
    big = torch.zeros(*q.shape[:4], 512)
    assert "head_dim" in bra_triton.unsupported(big, big, v)
    assert "dtype" in bra_triton.unsupported(q.to(torch.complex64), k, v)
    assert bra_triton.unsupported(q, k, v) is None
    with pytest.raises(ValueError, match="backend='triton': head_dim"):  # the public API names the backend
        routed_attention(big, big, v, index, (1, 1), backend="triton")
    with override(triton_interpret=False):
        assert "device" in bra_triton.unsupported(q, k, v)
        with pytest.raises(ValueError, match="backend='triton': device cpu"):
            routed_attention(q, k, v, index, (1, 1), backend="triton")


# ---------------------------------------------------------------------------------------------------------
# CUDA (compiled kernels): bf16, BiFormer-sized regions
# ---------------------------------------------------------------------------------------------------------

GPU_CASES = [
    _case(2, (7, 7), (8, 8), 2, 32, 32, 1),  # BiFormer-S stage 1 at 224
    _case(2, (7, 7), (4, 4), 4, 32, 32, 4),  # stage 2
    _case(2, (7, 7), (2, 2), 8, 32, 32, 16),  # stage 3
    _case(1, (7, 7), (10, 10), 2, 32, 32, 4),  # 100-token regions: two query tiles
    _case(1, (4, 6), (3, 5), 3, 24, 40, None),
    _case(1, (3, 3), (32, 32), 1, 64, 64, 2),  # 1024-token regions
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_matches_reference(case, dtype):
    tol = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    check_backend("triton", case, dtype=dtype, device="cuda", atol=tol, rtol=tol)


@pytest.mark.gpu
def test_cuda_auto_backend_uses_triton():
    q, k, v, index = (t.to("cuda", torch.float16) if t.is_floating_point() else t.cuda()
                      for t in make_inputs(GPU_CASES[0]))
    a = routed_attention(q, k, v, index, (8, 8), backend="auto")
    b = routed_attention(q, k, v, index, (8, 8), backend="triton")
    assert torch.equal(a, b)
