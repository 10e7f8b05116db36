"""The kernels as torch custom ops: opcheck, torch.compile (fullgraph), torch.export, ONNX, autocast, FX leaves.

visionattn::na_forward / na_backward and visionattn::routed_attention_forward / _backward on CPU (the torch path;
one Triton-interpreter case each, tiny).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from bra_cases import make_inputs as bra_inputs
from torch import nn

from visionattn.kernels import bi_level_routing_attention, na, na1d, na2d, routed_attention

OPS = torch.ops.visionattn


def _na_inputs(B, spatial, heads, kv_heads, D, Dv, k, rpb=True, extra=0, dtype=torch.float64, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return (t(B, *spatial, heads, D), t(B, *spatial, kv_heads, D), t(B, *spatial, kv_heads, Dv),
            t(heads, *([2 * k - 1] * len(spatial))) if rpb else None,
            t(B, extra, kv_heads, D) if extra else None, t(B, extra, kv_heads, Dv) if extra else None)


# (inputs, kernel_size, stride, dilation, is_causal): dilation, stride, causal, RPB, odd sizes, batch 0, GQA,
# extra keys, v head_dim != qk head_dim, 1-D / 2-D / 3-D
NA_OP_CASES = [
    (dict(B=2, spatial=(7, 9), heads=2, kv_heads=2, D=4, Dv=4, k=3), [3, 3], [1, 1], [2, 1], [False, False]),
    (dict(B=1, spatial=(11, 6), heads=3, kv_heads=3, D=5, Dv=3, k=3), [3, 3], [2, 3], [1, 2], [True, False]),
    (dict(B=1, spatial=(9,), heads=2, kv_heads=1, D=4, Dv=3, k=5, extra=3), [5], [2], [1], [True]),
    (dict(B=0, spatial=(5, 6), heads=2, kv_heads=2, D=4, Dv=4, k=3), [3, 3], [1, 1], [1, 2], [False, True]),
    (dict(B=1, spatial=(4, 5, 4), heads=4, kv_heads=2, D=3, Dv=3, k=3, rpb=False, extra=2), [3, 3, 3],
     [1, 1, 1], [1, 2, 1], [False, False, True]),
]


def _na_case_id(c):
    d = c[0]
    return f"B{d['B']}-{'x'.join(map(str, d['spatial']))}-h{d['heads']}kv{d['kv_heads']}-x{d.get('extra', 0)}"


@pytest.mark.parametrize("case", NA_OP_CASES, ids=_na_case_id)
def test_opcheck_na(case):
    spec, ks, ss, ds, cs = case
    q, k, v, rpb, ak, av = _na_inputs(**spec)
    for need_lse in (False, True):
        args = (q, k, v, rpb, ak, av, ks, ss, ds, cs, 0.5, "torch", need_lse, True)
        torch.library.opcheck(OPS.na_forward.default, args)
    # the backward op on its own, from a real forward's outputs
    with torch.no_grad():
        out, lse, aux = OPS.na_forward(q, k, v, rpb, ak, av, ks, ss, ds, cs, 0.5, "torch", True, True)
    gout, glse = torch.randn_like(out), torch.randn_like(lse)
    bargs = (gout, glse, q.detach(), k.detach(), v.detach(), None if rpb is None else rpb.detach(),
             None if ak is None else ak.detach(), None if av is None else av.detach(), out, aux, ks, ss, ds, cs, 0.5,
             "torch", rpb is not None)
    torch.library.opcheck(OPS.na_backward.default, bargs)


def test_opcheck_na_triton_interpreter():
    q, k, v, rpb, ak, av = _na_inputs(1, (5, 6), 2, 1, 16, 16, 3, extra=2, dtype=torch.float32)
    args = (q, k, v, rpb, ak, av, [3, 3], [1, 1], [1, 2], [False, True], 0.25, "triton", True, True)
    torch.library.opcheck(OPS.na_forward.default, args, test_utils=("test_schema", "test_autograd_registration",
                                                                    "test_faketensor"))


BRA_OP_CASES = [
    dict(B=2, grid=(3, 3), region=(2, 2), heads=2, dq=4, dv=4, topk=2),
    dict(B=1, grid=(2, 3), region=(3, 2), heads=3, dq=6, dv=4, topk=None),
    dict(B=1, grid=(4, 2), region=(1, 3), heads=1, dq=4, dv=4, topk=1),
]


@pytest.mark.parametrize("batch0", [False, True], ids=["", "batch0"])
@pytest.mark.parametrize("case", BRA_OP_CASES, ids=lambda c: f"g{c['grid']}-r{c['region']}-dv{c['dv']}")
def test_opcheck_routed_attention(case, batch0):
    q, k, v, index = bra_inputs(case, dtype=torch.float64)
    if batch0:
        q, k, v, index = q[:0], k[:0], v[:0], index[:0]
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    rs = list(case["region"])
    for need_aux in (False, True):
        torch.library.opcheck(OPS.routed_attention_forward.default, (q, k, v, index, rs, 0.4, "torch", need_aux))
    with torch.no_grad():
        out, aux = OPS.routed_attention_forward(q, k, v, index, rs, 0.4, "torch", True)
    bargs = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), index, out, aux, rs, 0.4, "torch", True, True)
    torch.library.opcheck(OPS.routed_attention_backward.default, bargs)


def test_opcheck_routed_attention_triton_interpreter():
    case = dict(B=1, grid=(2, 2), region=(2, 2), heads=1, dq=16, dv=16, topk=2)
    q, k, v, index = (t.requires_grad_() if t.is_floating_point() else t for t in bra_inputs(case))
    torch.library.opcheck(OPS.routed_attention_forward.default, (q, k, v, index, [2, 2], 0.3, "triton", True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---------------------------------------------------------------------------------------------------------
# a module calling NA and BRA (what the models do): compile, export, ONNX
# ---------------------------------------------------------------------------------------------------------


class _NABRA(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(0.1 * torch.randn(heads, 9, 9))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H, W, 3, self.heads, C // self.heads).unbind(3)
        y = na2d(q, k, v, 5, dilation=(1, 2), rpb=self.rpb)
        y = y + bi_level_routing_attention(q, k, v, 2, 2)
        z = na1d(q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2), 3, is_causal=True)
        return self.proj(y.reshape(B, H, W, C) + z.reshape(B, H, W, C))


def _module_and_input():
    torch.manual_seed(0)
    return _NABRA().eval(), torch.randn(2, 10, 12, 16)


def _graph_ops(gm) -> set:
    """Names of the visionattn ops a graph calls."""
    names = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    return {x.replace("torch.ops.", "").replace(".default", "") for x in names if "visionattn" in x}


def test_compile_fullgraph_matches_eager():
    """One graph (fullgraph), the custom ops in it, forward and backward equal to eager (inductor, CPU)."""
    m, x = _module_and_input()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._inductor.compile_fx import compile_fx

        return compile_fx(gm, example_inputs)

    mc = torch.compile(m, fullgraph=True, backend=backend)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = m(xe), mc(xc)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    gw = torch.autograd.grad(want.square().sum(), [xe, *m.parameters()])
    gc = torch.autograd.grad(got.square().sum(), [xc, *m.parameters()])
    for a, b in zip(gc, gw):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert len(graphs) == 1
    ops = _graph_ops(graphs[0])
    assert {"visionattn.na_forward", "visionattn.routed_attention_forward"} <= ops, ops


def test_torch_export_runs_with_equal_outputs():
    m, x = _module_and_input()
    ep = torch.export.export(m, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}})
    ops = _graph_ops(ep.graph_module)
    assert {"visionattn.na_forward", "visionattn.routed_attention_forward"} <= ops, ops
    torch.testing.assert_close(ep.module()(x), m(x))
    x2 = torch.randn(1, 10, 12, 16)
    torch.testing.assert_close(ep.module()(x2), m(x2))


def test_onnx_export_matches_onnxruntime(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    m, x = _module_and_input()
    path = tmp_path / "nabra.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_autocast_runs_ops_in_low_precision(dtype):
    q, k, v, rpb, _, _ = _na_inputs(1, (7, 8), 2, 2, 8, 8, 3, dtype=torch.float32, grad=False)
    with torch.autocast("cpu", dtype=dtype):
        out = na2d(q, k, v, 3, rpb=rpb)
        assert OPS.na_forward(q, k, v, rpb, None, None, [3, 3], [1, 1], [1, 1], [False, False], 0.3, "torch",
                              False, False)[0].dtype == dtype
        case = dict(B=1, grid=(2, 2), region=(2, 2), heads=2, dq=8, dv=8, topk=2)
        bq, bk, bv, index = bra_inputs(case)
        bout = routed_attention(bq, bk, bv, index, (2, 2))
    assert out.dtype == dtype and bout.dtype == dtype
    torch.testing.assert_close(out.float(), na2d(q, k, v, 3, rpb=rpb), atol=5e-2, rtol=5e-2)


def test_ops_take_an_implementation_never_auto():
    """The public functions resolve `auto` once; the ops run the implementation they are given."""
    q, k, v, rpb, _, _ = _na_inputs(1, (6, 6), 2, 2, 4, 4, 3, grad=False)
    args = [q, k, v, rpb, None, None, [3, 3], [1, 1], [1, 1], [False, False], 0.5]
    out = OPS.na_forward(*args, "torch", False, False)[0]
    torch.testing.assert_close(out, na2d(q, k, v, 3, rpb=rpb, scale=0.5, backend="reference"))
    for bad in ("auto", "cuda", "reference"):
        with pytest.raises(ValueError, match="backend must be one of"):
            OPS.na_forward(*args, bad, False, False)
    bq, bk, bv, index = bra_inputs(dict(B=1, grid=(2, 2), region=(2, 2), heads=1, dq=4, dv=4, topk=2))
    with pytest.raises(ValueError, match="backend must be one of"):
        OPS.routed_attention_forward(bq, bk, bv, index, [2, 2], 0.5, "auto", False)


def test_public_wrappers_are_fx_leaves_through_call_site_wrap():
    """The wrappers validate with Python control flow, so FX cannot trace into them; modules mark the call
    sites as leaves with torch.fx.wrap (visionattn.layers.na does) and the traced graph keeps the call."""
    from visionattn.layers import NeighborhoodAttention2D

    m = NeighborhoodAttention2D(16, 2, kernel_size=3).eval()
    gm = torch.fx.symbolic_trace(m)
    calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert na.na2d in calls, calls  # the public function itself, one leaf node
    assert not any(getattr(t, "__module__", "").startswith("visionattn.kernels.") and t is not na.na2d
                   for t in calls), calls  # nothing of the kernels' internals was traced into the graph
    x = torch.randn(1, 6, 7, 16)
    torch.testing.assert_close(gm(x), m(x))


def test_timm_fx_feature_extraction_keeps_kernel_calls_as_leaves():
    """A module calling the kernels directly (no torch.fx.wrap) traces with timm's FX feature extractor."""
    from timm.models import create_feature_extractor

    m, x = _module_and_input()
    fx = create_feature_extractor(m, return_nodes=["proj"])
    torch.testing.assert_close(fx(x)["proj"], m(x))
