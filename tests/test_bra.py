"""Bi-level routing attention: kernels (reference / torch), modules, official parity, validation, ONNX."""
import pytest
import torch
from bra_cases import BRA_CASES, case_id, check_backend, make_inputs
from parity_utils import case_names, load_case, max_abs_diff

import visionattn
from visionattn.kernels import bra_torch, dispatch, ops
from visionattn.kernels.bra import (
    bi_level_routing_attention,
    region_mean,
    region_topk,
    routed_attention,
)
from visionattn.layers.bra import BiLevelRoutingAttention, NchwBiLevelRoutingAttention

# ---------------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BRA_CASES, ids=case_id)
def test_torch_matches_reference_fp64(case):
    check_backend("torch", case, dtype=torch.float64, atol=1e-10)


@pytest.mark.parametrize("case", BRA_CASES[1::3], ids=case_id)
def test_torch_matches_reference_fp32(case):
    check_backend("torch", case, dtype=torch.float32, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("case", BRA_CASES[:5], ids=case_id)
def test_torch_many_chunks(case, monkeypatch):
    # Force one query region per chunk so the chunk loop and the index_add accumulation are exercised.
    monkeypatch.setattr(bra_torch, "_CHUNK_ELEMS", 1)
    check_backend("torch", case, dtype=torch.float64, atol=1e-10)


@pytest.mark.parametrize("case", BRA_CASES[1::2], ids=case_id)
def test_capture_path_matches_reference(case, monkeypatch):
    # The ONNX graph (single gather, plain autograd) is what the exporter sees.
    monkeypatch.setattr(ops, "exporting", lambda: True)
    check_backend("torch", case, dtype=torch.float64, atol=1e-10)


def test_auto_is_torch_on_cpu():
    case = BRA_CASES[1]
    q, k, v, index = make_inputs(case)
    a = routed_attention(q, k, v, index, case["region"], backend="auto")
    b = routed_attention(q, k, v, index, case["region"], backend="torch")
    assert torch.equal(a, b)


def test_triton_dispatch(monkeypatch):
    case = BRA_CASES[1]
    q, k, v, index = make_inputs(case)
    seen = {}

    def check(q, k, v, index, region_size, scale):
        seen.update(region_size=region_size, scale=scale)
        return "head_dim 8 is not supported"

    monkeypatch.setitem(dispatch.BRA_CHECKS, "triton", check)
    with pytest.raises(ValueError, match="backend='triton': head_dim 8"):
        routed_attention(q, k, v, index, case["region"], backend="triton")
    assert seen == dict(region_size=(2, 2), scale=8 ** -0.5)
    # auto tries triton first on CUDA, and falls back to torch where the kernel declines.
    monkeypatch.setattr(dispatch, "_device", lambda q: "cuda")
    seen.clear()
    want = routed_attention(q, k, v, index, case["region"], backend="torch")
    assert torch.equal(routed_attention(q, k, v, index, case["region"]), want) and seen


def test_duplicate_routed_regions():
    # Not produced by topk, but a valid index: a duplicated region simply counts twice in the softmax.
    case = dict(B=1, grid=(2, 2), region=(2, 2), heads=2, dq=4, dv=4, topk=3)
    q, k, v, _ = make_inputs(case, dtype=torch.float64)
    index = torch.tensor([[[0, 0, 1], [3, 3, 3], [2, 1, 2], [0, 1, 0]]])
    outs = []
    for be in ("reference", "torch"):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        out = routed_attention(*ins, index, (2, 2), backend=be)
        outs.append((out, *torch.autograd.grad(out.square().sum(), ins)))
    for a, b in zip(*outs):
        assert max_abs_diff(a, b) < 1e-10


def test_gradcheck_torch_fp64():
    case = dict(B=2, grid=(2, 2), region=(1, 2), heads=2, dq=3, dv=2, topk=2)
    q, k, v, index = make_inputs(case, dtype=torch.float64)
    ins = tuple(t.requires_grad_() for t in (q, k, v))
    fn = lambda q, k, v: routed_attention(q, k, v, index, case["region"], scale=0.8, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, ins, eps=1e-6, atol=1e-7)


def test_default_scale_is_head_dim():
    case = BRA_CASES[3]
    q, k, v, index = make_inputs(case, dtype=torch.float64)
    a = routed_attention(q, k, v, index, case["region"], backend="torch")
    b = routed_attention(q, k, v, index, case["region"], scale=case["dq"] ** -0.5, backend="reference")
    assert max_abs_diff(a, b) < 1e-10


def test_region_topk_matches_official_router():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 12, 20, 32, generator=g, requires_grad=True)
    k = torch.randn(2, 12, 20, 32, generator=g)
    qr, kr = region_mean(q, 4), region_mean(k, 4)
    # Official: region = 3x5 tile, mean over its tokens, regions row-major.
    tiles = q.detach().reshape(2, 4, 3, 4, 5, 32).permute(0, 1, 3, 2, 4, 5).reshape(2, 16, 15, 32)
    assert torch.allclose(qr, tiles.mean(2), atol=1e-6)
    idx, logits = region_topk(qr, kr, 5, return_logits=True)
    want = torch.topk((qr.detach() * 32 ** -0.5) @ kr.transpose(1, 2), 5, dim=-1)
    assert torch.equal(idx, want.indices) and idx.dtype == torch.int64
    assert not logits.requires_grad
    assert torch.equal(region_topk(qr, kr, 16, scale=1.0)[..., :5], torch.topk(qr.detach() @ kr.mT, 5).indices)


def test_bi_level_routing_attention_composes():
    case = dict(B=2, grid=(4, 4), region=(2, 3), heads=2, dq=8, dv=8, topk=3)
    q, k, v, _ = make_inputs(case)
    out, index = bi_level_routing_attention(q, k, v, 4, 3, backend="torch", return_index=True)
    scale = 16 ** -0.5
    want_idx = region_topk(region_mean(q, 4), region_mean(k, 4), 3, scale=scale)
    assert torch.equal(index, want_idx)
    want = routed_attention(q, k, v, want_idx, (2, 3), scale=scale, backend="reference")
    assert max_abs_diff(out, want) < 1e-5


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


def test_kernel_validation_errors():
    case = dict(B=1, grid=(2, 2), region=(2, 2), heads=2, dq=4, dv=4, topk=2)
    q, k, v, index = make_inputs(case)
    ra = lambda *a, **kw: routed_attention(*a, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="region_size"):
        ra(q, k, v, index, (3, 2))
    with pytest.raises(ValueError, match="region_size"):
        ra(q, k, v, index, (0, 2))
    with pytest.raises(ValueError, match="index"):
        ra(q, k, v, index + 4, (2, 2))
    with pytest.raises(ValueError, match="index"):
        ra(q, k, v, -index - 1, (2, 2))
    with pytest.raises(ValueError, match="index"):
        ra(q, k, v, index.int(), (2, 2))
    with pytest.raises(ValueError, match="index"):
        ra(q, k, v, index[:, :3], (2, 2))
    with pytest.raises(ValueError, match="topk"):
        ra(q, k, v, torch.zeros(1, 4, 5, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match="key shape"):
        ra(q, k[..., :3], v, index, (2, 2))
    with pytest.raises(ValueError, match="value shape"):
        ra(q, k, v[:, :2], index, (2, 2))
    with pytest.raises(ValueError, match="dtype"):
        ra(q, k, v.double(), index, (2, 2))
    with pytest.raises(ValueError, match="query must be"):
        ra(q[0], k, v, index, (2, 2))
    with pytest.raises(ValueError, match="backend"):
        ra(q, k, v, index, (2, 2), backend="cuda")
    with pytest.raises(ValueError, match="topk"):
        region_topk(q.flatten(3)[:, 0], k.flatten(3)[:, 0], 5)
    with pytest.raises(ValueError, match="topk"):
        region_topk(q.flatten(3)[:, 0], k.flatten(3)[:, 0], 0)
    with pytest.raises(ValueError, match="n_win"):
        bi_level_routing_attention(q, k, v, 3, 2)


def test_module_validation_errors():
    with pytest.raises(ValueError, match="kv_downsample_mode"):
        BiLevelRoutingAttention(32, num_heads=2, n_win=2, kv_downsample_mode="ada_avgpool")
    with pytest.raises(ValueError, match="param_routing"):
        BiLevelRoutingAttention(32, num_heads=2, n_win=2, param_routing=True, diff_routing=True)
    with pytest.raises(ValueError, match="topk"):
        BiLevelRoutingAttention(32, num_heads=2, n_win=2, topk=5)
    with pytest.raises(ValueError, match="num_heads"):
        BiLevelRoutingAttention(32, num_heads=3, n_win=2)
    with pytest.raises(ValueError, match="backend"):
        BiLevelRoutingAttention(32, num_heads=2, n_win=2, backend="fast")
    m = BiLevelRoutingAttention(32, num_heads=2, n_win=2, topk=2)
    with pytest.raises(ValueError, match="n_win"):
        m(torch.randn(1, 5, 4, 32))
    with pytest.raises(ValueError, match="attn_backend"):
        NchwBiLevelRoutingAttention(32, num_heads=2, n_win=2, attn_backend="cuda")
    m = NchwBiLevelRoutingAttention(32, num_heads=2, n_win=4, topk=17)
    with pytest.raises(ValueError, match="topk"):
        m(torch.randn(1, 32, 8, 8))  # 4x4 = 16 regions
    with pytest.raises(ValueError, match="n_win"):
        m(torch.randn(1, 32, 3, 8))


# ---------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,shape",
    [
        (dict(dim=32, num_heads=2, n_win=4, topk=3, side_dwconv=5, auto_pad=True), (2, 13, 18, 32)),
        (dict(dim=24, num_heads=3, n_win=3, qk_dim=12, topk=9, side_dwconv=3), (1, 9, 12, 24)),
        (dict(dim=16, num_heads=2, n_win=7, topk=1, side_dwconv=0, param_attention="qkv", auto_pad=True),
         (1, 15, 9, 16)),
    ],
)
def test_legacy_module_backends_agree(kw, shape):
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(**kw).double()
    x = torch.randn(shape, dtype=torch.float64)
    res = []
    for be in ("reference", "torch"):
        m.backend = be
        m.zero_grad()
        xi = x.clone().requires_grad_()
        out, idx = m(xi, return_index=True)
        out.square().mean().backward()
        res.append((out, idx, xi.grad, *(p.grad for p in m.parameters())))
    (o1, i1, *g1), (o2, i2, *g2) = res
    assert o1.shape == shape and torch.equal(i1, i2)
    assert max_abs_diff(o1, o2) < 1e-10
    for a, b in zip(g1, g2):
        assert max_abs_diff(a, b) < 1e-10


def test_nchw_module_backends_agree():
    torch.manual_seed(0)
    m = NchwBiLevelRoutingAttention(24, num_heads=3, n_win=4, topk=5, side_dwconv=5).double()
    x = torch.randn(2, 24, 13, 18, dtype=torch.float64)
    res = []
    for be in ("reference", "torch"):
        m.backend = be
        m.zero_grad()
        xi = x.clone().requires_grad_()
        out, idx = m(xi, return_index=True)
        out.square().mean().backward()
        res.append((out, idx, xi.grad, *(p.grad for p in m.parameters())))
    (o1, i1, *g1), (o2, i2, *g2) = res
    assert o1.shape == x.shape and i1.shape == (2, 25, 5) and torch.equal(i1, i2)
    for a, b in zip((o1, *g1), (o2, *g2)):
        assert max_abs_diff(a, b) < 1e-10


def test_legacy_module_compiles():
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(32, num_heads=2, n_win=4, topk=3, side_dwconv=5, auto_pad=True, backend="torch")
    x = torch.randn(2, 10, 13, 32, requires_grad=True)
    want = m(x)
    (gx_want,) = torch.autograd.grad(want.square().sum(), x)
    got = torch.compile(m, backend="aot_eager", fullgraph=True)(x)
    (gx,) = torch.autograd.grad(got.square().sum(), x)
    assert max_abs_diff(got, want) < 1e-5 and max_abs_diff(gx, gx_want) < 1e-4


def test_legacy_state_dict_keys():
    m = BiLevelRoutingAttention(64, num_heads=2, n_win=7, topk=1, side_dwconv=5)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "lepe.weight": (64, 1, 5, 5), "lepe.bias": (64,), "qkv.qkv.weight": (192, 64), "qkv.qkv.bias": (192,),
        "wo.weight": (64, 64), "wo.bias": (64,),
    }
    m = NchwBiLevelRoutingAttention(96, num_heads=3, n_win=7, topk=1, side_dwconv=5)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {
        "lepe.weight": (96, 1, 5, 5), "lepe.bias": (96,), "qkv_linear.weight": (288, 96, 1, 1),
        "qkv_linear.bias": (288,), "output_linear.weight": (96, 96, 1, 1), "output_linear.bias": (96,),
    }


# ---------------------------------------------------------------------------------------------------------
# Official parity
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", case_names("biformer", "bra_") or ["<no fixtures>"])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_official_parity(name, backend, parity_root):
    meta, tensors, sd = load_case("biformer", name)
    m = visionattn.from_official("biformer", meta["official_builder"], meta["official_kwargs"], sd).eval()
    m.backend = backend
    with torch.no_grad():
        out = m(tensors["input"])
        out2, idx = m(tensors["input"], return_index=True)
    assert torch.equal(out, out2)
    assert out.shape == tensors["out"].shape
    assert max_abs_diff(out, tensors["out"]) <= meta["tolerance"]
    assert idx.dtype == torch.int64 and torch.equal(idx, tensors["r_idx"])


# ---------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["legacy", "nchw"])
def test_onnx_export(which, tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    if which == "legacy":  # auto-padded 10x13 -> 12x16
        m = BiLevelRoutingAttention(32, num_heads=2, n_win=4, topk=3, side_dwconv=5, auto_pad=True).eval()
        x = torch.randn(1, 10, 13, 32)
    else:  # partial regions: 13x18 with 3x4 regions -> 5x5 grid
        m = NchwBiLevelRoutingAttention(24, num_heads=3, n_win=4, topk=5, side_dwconv=5).eval()
        x = torch.randn(1, 24, 13, 18)
    path = tmp_path / "bra.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    assert max_abs_diff(torch.from_numpy(y), want) < 1e-4


# ---------------------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("case", BRA_CASES, ids=case_id)
def test_torch_cuda_matches_reference(case):
    check_backend("torch", case, dtype=torch.float32, device="cuda", atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_cuda_low_precision(dtype):
    case = BRA_CASES[4]
    check_backend("torch", case, dtype=dtype, device="cuda", atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
def test_legacy_module_cuda():
    torch.manual_seed(0)
    m = BiLevelRoutingAttention(64, num_heads=2, n_win=7, topk=4, side_dwconv=5, auto_pad=True).cuda()
    x = torch.randn(2, 30, 33, 64, device="cuda")
    outs = []
    for be in ("reference", "torch", "auto"):
        m.backend = be
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.square().mean().backward()
        outs.append((out, xi.grad))
    for o, g in outs[1:]:
        assert max_abs_diff(o, outs[0][0]) < 1e-4 and max_abs_diff(g, outs[0][1]) < 1e-5


# ---------------------------------------------------------------------------------------------------------
# Faults (issue 15): non-finite values, empty inputs
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["query", "key", "value"])
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_nonfinite_pattern_equals_reference(which, value, grad):
    """A NaN query gives a NaN row as in the reference (the torch path's CPU flash kernels, fp32, gave 0.0)."""
    case = dict(B=2, grid=(3, 3), region=(2, 2), heads=2, dq=8, dv=8, topk=2)
    q, k, v, index = make_inputs(case, dtype=torch.float32)
    {"query": q, "key": k, "value": v}[which][1, 2, 3, 1, 5] = value
    ref = routed_attention(q, k, v, index, (2, 2), backend="reference")
    ins = [t.clone().requires_grad_(grad) for t in (q, k, v)]
    out = routed_attention(*ins, index, (2, 2), backend="torch")
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.equal(torch.isinf(out), torch.isinf(ref))
    assert (~torch.isfinite(ref)).any()
    fin = torch.isfinite(ref)
    torch.testing.assert_close(out[fin], ref[fin])


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_batch_zero(backend):
    case = dict(B=1, grid=(2, 2), region=(2, 3), heads=2, dq=16, dv=8, topk=2)
    q, k, v, _ = make_inputs(case)
    q, k, v = (t[:0].clone().requires_grad_() for t in (q, k, v))
    index = torch.zeros(0, 4, 2, dtype=torch.long)
    out = routed_attention(q, k, v, index, (2, 3), backend=backend)
    assert out.shape == (0, 4, 6, 2, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape
    with torch.no_grad():
        assert routed_attention(q, k, v, index, (2, 3), backend=backend).shape == (0, 4, 6, 2, 8)
    out, idx = bi_level_routing_attention(q, k, v, 2, 2, backend=backend, return_index=True)
    assert out.shape == (0, 4, 6, 2, 8) and idx.shape == (0, 4, 2)
    assert region_mean(q, 2).shape == (0, 4, 32)


def test_empty_heads_or_head_dim_is_value_error():
    index = torch.zeros(1, 4, 2, dtype=torch.long)
    for shape in ((1, 4, 4, 0, 8), (1, 4, 4, 2, 0)):
        x = torch.randn(shape)
        with pytest.raises(ValueError, match="heads and head_dim"):
            routed_attention(x, x, x, index, (2, 2))
        with pytest.raises(ValueError, match="heads and head_dim"):
            bi_level_routing_attention(x, x, x, 2, 2)
