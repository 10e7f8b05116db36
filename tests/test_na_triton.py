"""Fused Triton neighborhood attention vs the dense reference: forward and backward (q, k, v, rpb).

On CPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET): tiny shapes only.
"""
import math
import os
import subprocess
import sys

import pytest
import torch

from visionattn.kernels.na import na1d, na2d, na3d

FNS = {1: na1d, 2: na2d, 3: na3d}
TOL = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def _inputs(shape, rank, kernel_size, dtype, device, with_rpb, dv=None):
    heads = shape[-2]
    q, k = (torch.randn(shape, device=device, dtype=dtype) for _ in range(2))
    v = torch.randn(*shape[:-1], dv or shape[-1], device=device, dtype=dtype)
    ks = (kernel_size,) * rank if isinstance(kernel_size, int) else kernel_size
    rpb = 0.5 * torch.randn(heads, *(2 * kk - 1 for kk in ks), device=device, dtype=dtype) if with_rpb else None
    return [t.requires_grad_() for t in (q, k, v)], rpb.requires_grad_() if with_rpb else None


def _check(shape, kernel_size, dilation=1, stride=1, is_causal=False, with_rpb=True, dtype=torch.float32,
           device="cpu", dv=None):
    rank = len(shape) - 3
    fn = FNS[rank]
    (q, k, v), rpb = _inputs(shape, rank, kernel_size, dtype, device, with_rpb, dv)
    args = dict(kernel_size=kernel_size, stride=stride, dilation=dilation, is_causal=is_causal)
    out = fn(q, k, v, **args, rpb=rpb, backend="triton")
    # the oracle runs in fp32 from the same (rounded) inputs
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    rf = rpb.detach().float().requires_grad_() if with_rpb else None
    ref = fn(qf, kf, vf, **args, rpb=rf, backend="reference")
    assert out.shape == ref.shape and out.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)
    grad = torch.randn_like(ref)
    inputs = [q, k, v] + ([rpb] if with_rpb else [])
    ref_inputs = [qf, kf, vf] + ([rf] if with_rpb else [])
    got = torch.autograd.grad(out, inputs, grad.to(dtype))
    want = torch.autograd.grad(ref, ref_inputs, grad)
    for name, g, w in zip("q k v rpb".split(), got, want):
        assert g.dtype == dtype, name
        # dRPB sums over the whole map: scale its tolerance with the magnitude
        scale = max(1.0, w.abs().max().item()) if name == "rpb" else 1.0
        torch.testing.assert_close(g.float(), w, atol=tol * scale, rtol=tol, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("shape,kernel_size,dilation,with_rpb", [
    ((1, 9, 11, 2, 16), 3, 1, True),
    ((2, 13, 7, 1, 16), 5, 1, False),
    ((1, 11, 9, 1, 16), 3, 2, True),
    ((1, 17, 13, 1, 16), (5, 3), (3, 4), True),
])
def test_na2d_fp32(shape, kernel_size, dilation, with_rpb):
    _check(shape, kernel_size, dilation, with_rpb=with_rpb)


@pytest.fixture
def gpu_tiles():
    """The GPU's 64-position tiles (several tiles per map, mixed owned / iterated shapes) in the interpreter."""
    from visionattn._environment import override

    with override(na_triton_tiles_2d=((1, 8, 8), (1, 4, 16))):
        yield


@pytest.mark.parametrize("shape,kernel_size,dilation,stride,is_causal", [
    ((1, 13, 19, 1, 16), 5, 1, 1, False),
    ((1, 20, 17, 1, 16), 3, (2, 1), (1, 2), (False, True)),
])
def test_na2d_multi_tile(gpu_tiles, shape, kernel_size, dilation, stride, is_causal):
    _check(shape, kernel_size, dilation, stride, is_causal)


@pytest.mark.parametrize("shape,kernel_size,dilation,with_rpb", [
    ((2, 13, 2, 16), 5, 2, True),
    ((1, 70, 1, 16), 7, 3, False),
])
def test_na1d_fp32(shape, kernel_size, dilation, with_rpb):
    _check(shape, kernel_size, dilation, with_rpb=with_rpb)


def test_na2d_fp16():
    _check((1, 9, 11, 2, 16), 3, (1, 2), with_rpb=True, dtype=torch.float16)


@pytest.mark.parametrize("shape,kernel_size,dilation,stride,is_causal", [
    ((1, 9, 11, 1, 16), 3, (1, 2), 1, (True, False)),
    ((1, 10, 9, 1, 16), (5, 3), 1, (2, 3), (False, False)),
    ((1, 11, 13, 1, 16), 5, (2, 1), (3, 2), (True, True)),
    ((1, 23, 2, 16), 5, 2, 2, True),
])
def test_causal_stride(shape, kernel_size, dilation, stride, is_causal):
    _check(shape, kernel_size, dilation, stride, is_causal)


def test_head_dims():
    """head_dim not a power of two and below 16, v with its own head_dim (masked padding)."""
    _check((1, 7, 6, 1, 12), 3, 1, with_rpb=True, dv=8)


def test_na3d():
    _check((1, 5, 6, 7, 1, 16), (3, 3, 5), (1, 2, 1), with_rpb=True)


def test_non_contiguous_inputs():
    """q, k, v as views of one qkv tensor (how attention layers call it)."""
    qkv = torch.randn(1, 7, 6, 3, 2, 16, requires_grad=True)
    rpb = torch.randn(2, 5, 5, requires_grad=True)
    outs, grads = [], []
    for backend in ("triton", "reference"):
        out = na2d(*qkv.unbind(3), 3, rpb=rpb, backend=backend)
        outs.append(out)
        grads.append(torch.autograd.grad(out, (qkv, rpb), torch.ones_like(out)))
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=2e-5)
    for g, w in zip(*grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=2e-5)


_COMPILE_SM90 = """
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from visionattn.kernels import na_triton as m

ints = {"X", "Y", "Z", "DX", "DY", "DZ", "NTX", "NTY", "NTZ", "NH", "NHK", "D", "DV"}
# ints equal to 1 are specialised at launch, as for every 2-D call
base = dict(KX=1, KY=7, KZ=7, SX=1, SY=1, SZ=1, CX=False, CY=True, CZ=False, TAX=1, TAY=8, TAZ=8, TBX=1,
            TBY=4, TBZ=16, BLOCK_D=32, BLOCK_DV=32, HAS_RPB=True, PREC=None, ACC=tl.float32, X=1, DX=1, NTX=1)
for kernel, extra in ((m._na_fwd_dq_kernel, dict(BACKWARD=False, STORE_DS=False)),
                      (m._na_fwd_dq_kernel, dict(BACKWARD=True, STORE_DS=True)),
                      (m._na_dkdv_kernel, dict(CANDX=16, CANDY=32, CANDZ=32))):
    consts = dict(base, **extra)
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        else:
            sig[name] = ("i32" if name in ints else "fp32" if name in ("qk_scale", "scale")
                         else "*fp32" if name in ("LSE", "DELTA", "DS") else "*fp16")
    triton.compile(ASTSource(kernel, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                   options=dict(num_warps=4))
print("compiled")
"""


@pytest.mark.slow
def test_compiles_for_sm90():
    """Compiled mode (not the interpreter): the fp16 2-D kernels through Triton's CUDA pipeline and ptxas."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _COMPILE_SM90], env=env, capture_output=True, text=True)
    if res.returncode and ("ImportError" in res.stderr or "AttributeError" in res.stderr.splitlines()[-1]):
        pytest.skip(f"triton's compiler API differs: {res.stderr.splitlines()[-1]}")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]


def test_gradcheck_fp64():
    torch.manual_seed(0)
    shape = (1, 5, 6, 1, 4)
    (q, k, v), rpb = _inputs(shape, 2, 3, torch.float64, "cpu", True)
    f = lambda q, k, v, r: na2d(q, k, v, 3, dilation=(1, 2), rpb=r, backend="triton")  # noqa: E731
    # fast mode (random projections): the interpreter is too slow for the full numerical Jacobian
    assert torch.autograd.gradcheck(f, (q, k, v, rpb), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_unsupported_head_dim_is_value_error():
    q = torch.randn(1, 7, 7, 1, 512)
    with pytest.raises(ValueError, match="triton"):
        na2d(q, q, q, 3, backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,kernel_size,dilation,stride,is_causal", [
    ((2, 56, 56, 2, 32), 7, 1, 1, False),
    ((2, 28, 30, 4, 32), 7, 4, 1, False),
    ((2, 33, 45, 2, 64), (7, 5), (2, 3), (2, 3), (True, False)),
    ((2, 300, 2, 32), 13, 3, 1, False),
    ((1, 9, 10, 11, 2, 32), 3, (1, 2, 3), 1, (False, True, False)),
])
def test_gpu(dtype, shape, kernel_size, dilation, stride, is_causal):
    _check(shape, kernel_size, dilation, stride, is_causal, dtype=dtype, device="cuda")


@pytest.mark.gpu
def test_gpu_large_offsets():
    """Rows x heads x head_dim beyond 2**31 elements: 64-bit addressing."""
    shape = (1, 4096, 4096, 2, 64)
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2 ** 30:
        pytest.skip("needs 40 GiB")
    q = torch.randn(shape, device="cuda", dtype=torch.float16)
    out = na2d(q, q, q, 3, backend="triton")
    ref = na2d(q[:, -64:, -64:], q[:, -64:, -64:], q[:, -64:, -64:], 3, backend="torch")
    torch.testing.assert_close(out[:, -63:-1, -63:-1], ref[:, 1:-1, 1:-1], atol=2e-2, rtol=2e-2)


class _GuardedTorch:
    """Stand-in for ``torch`` inside na_triton: every buffer the kernels get lies between NaN guards as long as
    itself, so an unmasked read outside a tensor turns results into NaN and a write outside one shows in a
    guard (what an illegal memory access on a GPU would be)."""

    def __init__(self):
        self.buffers = []

    def __getattr__(self, name):
        return getattr(torch, name)

    def guarded(self, shape, dtype, fill=None, device="cpu"):
        n = math.prod(shape)
        buf = torch.full((3 * n,), float("nan"), dtype=dtype, device=device)
        view = buf[n:2 * n].view(shape)
        if fill is not None:
            view.fill_(fill)
        self.buffers.append((buf, n))
        return view

    def _shape(self, size):
        return tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)

    def empty(self, *size, dtype=None, device="cpu"):
        return self.guarded(self._shape(size), dtype or torch.get_default_dtype(), None, device)

    def zeros(self, *size, dtype=None, device="cpu"):
        if dtype is not None and not dtype.is_floating_point:  # index tables built on the host
            return torch.zeros(*size, dtype=dtype, device=device)
        return self.guarded(self._shape(size), dtype or torch.get_default_dtype(), 0.0, device)

    def empty_like(self, t):
        return self.guarded(tuple(t.shape), t.dtype, None, t.device)

    def intact(self):
        return all(torch.isnan(b[:n]).all() and torch.isnan(b[2 * n:]).all() for b, n in self.buffers)


@pytest.fixture
def device_tiles():
    """The GPU's tile shapes in the interpreter."""
    from visionattn._environment import override

    with override(na_triton_device_tiles=True):
        yield


@pytest.mark.parametrize("shape,kernel_size,dilation,stride,is_causal,kv_heads", [
    ((1, 13, 19, 1, 16), 5, 1, 1, False, 1),
    ((1, 20, 17, 1, 16), 3, (2, 1), (1, 2), (False, True), 1),
    ((1, 150, 1, 16), 13, 3, 1, False, 1),
    ((1, 5, 6, 7, 1, 16), (3, 3, 5), (1, 2, 1), 1, (False, False, True), 1),
    ((1, 11, 13, 3, 16), 3, (1, 2), 1, False, 1),  # MQA: the dK/dV programs loop over the query heads
])
def test_no_out_of_bounds_access(monkeypatch, device_tiles, shape, kernel_size, dilation, stride, is_causal,
                                 kv_heads):
    """The GPU's tile shapes, every input, output and scratch buffer fenced by NaN guards: forward and backward
    read and write inside their tensors only, and cover every output element."""
    from visionattn.kernels import na_triton

    guard = _GuardedTorch()
    monkeypatch.setattr(na_triton, "torch", guard)
    rank = len(shape) - 3
    ks = (kernel_size,) * rank if isinstance(kernel_size, int) else kernel_size
    gen = torch.Generator().manual_seed(0)
    kv_shape = (*shape[:-2], kv_heads, shape[-1])
    q, k, v, g = (guard.guarded(s, torch.float32).copy_(torch.randn(s, generator=gen))
                  for s in (shape, kv_shape, kv_shape, shape))
    rpb_shape = (shape[-2], *(2 * x - 1 for x in ks))
    rpb = guard.guarded(rpb_shape, torch.float32).copy_(0.5 * torch.randn(rpb_shape, generator=gen))
    leaves = [t.requires_grad_() for t in (q, k, v, rpb)]
    args = dict(kernel_size=kernel_size, stride=stride, dilation=dilation, is_causal=is_causal)
    out = FNS[rank](*leaves[:3], **args, rpb=leaves[3], backend="triton")
    grads = torch.autograd.grad(out, leaves, g)
    assert guard.intact(), "a kernel wrote outside its tensors"
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    ref = FNS[rank](*ref_leaves[:3], **args, rpb=ref_leaves[3], backend="reference")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    for name, got, want in zip("qkvr", grads, torch.autograd.grad(ref, ref_leaves, g)):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, atol=2e-5 * scale, rtol=2e-5, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("which", ["query", "key", "rpb"])
def test_nonfinite_pattern_equals_reference(which):
    """A NaN / inf query, key or RPB entry reaches exactly the outputs it reaches in the reference (a non-finite
    *value* reaches the queries of its kernel tile, as in flash-attention kernels: see na_triton's docstring)."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 9, 10, 1, 16, generator=gen) for _ in range(3))
    rpb = torch.randn(1, 5, 5, generator=gen)
    for val in (float("nan"), float("inf"), float("-inf")):
        qq, kk, rr = q.clone(), k.clone(), rpb.clone()
        if which == "rpb":
            rr[0, 1, 3] = val
        else:
            (qq if which == "query" else kk)[0, 4, 5, 0, 2] = val
        args = dict(dilation=(1, 2), rpb=rr)
        ref = na2d(qq, kk, v, 3, backend="reference", **args)
        out = na2d(qq, kk, v, 3, backend="triton", **args)
        assert (~torch.isfinite(ref)).any() or (which == "rpb" and val < 0)  # -inf bias: a pair dropped
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.equal(torch.isinf(out), torch.isinf(ref))
        fin = torch.isfinite(ref)
        torch.testing.assert_close(out[fin], ref[fin], atol=2e-5, rtol=2e-5)
