"""Neighborhood attention: backends vs the dense reference, gradcheck, NATTEN equality, arguments, modules, ONNX."""
from __future__ import annotations

import warnings

import pytest
import torch
from na_cases import NA_CASES, assert_matches_reference, case_id, make_inputs, run_na

from visionattn.kernels import na1d, na2d, na2d_logits, na3d, na_logits
from visionattn.layers import NeighborhoodAttention1D, NeighborhoodAttention2D

# ------------------------------------------------------------------------------------------ backends


@pytest.mark.parametrize("case", NA_CASES, ids=case_id)
def test_torch_matches_reference(case):
    assert_matches_reference("torch", **case)


@pytest.mark.parametrize("case", NA_CASES[::3], ids=case_id)
def test_gather_matches_reference(case):
    assert_matches_reference("gather", **case)


@pytest.mark.parametrize("tile", [(1, 1), (3, 5), (16, 16)])
def test_torch_tile_sizes(tile):
    """Any tiling gives the same function (tiles overlapping at group ends, tiles larger than a group)."""
    from visionattn.kernels import na_torch
    from visionattn.kernels.checks import NAConfig

    q, k, v, rpb = make_inputs((13, 17), 5, heads=2, dtype=torch.float64)
    ref = run_na("reference", q, k, v, rpb, 5, dilation=2, stride=2, is_causal=(False, True))
    cfg = NAConfig(kernel_size=(5, 5), stride=(2, 2), dilation=(2, 2), is_causal=(False, True), scale=8 ** -0.5)
    out = na_torch.forward(q, k, v, rpb, cfg, tile=tile)[0]
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("case", NA_CASES, ids=case_id)
def test_exported_formulation_matches_reference(case):
    """``na_torch.plain`` (what ONNX export and torch.jit.trace record) at the tiling it picks for the shape and at
    the fixed tiling it uses for symbolic sizes, there also untrimmed (tiles and regions past the map's end, as in
    an export with a dynamic height / width): forward and gradients equal the reference."""
    from visionattn.kernels import na_torch
    from visionattn.kernels.checks import na_args

    q, k, v, rpb = make_inputs(case["spatial"], case["kernel_size"], case.get("heads", 2), 8, case.get("batch", 1),
                               case.get("rpb", True), torch.float64)
    args = {a: case[a] for a in ("dilation", "stride", "is_causal") if a in case}
    ref = run_na("reference", q, k, v, rpb, case["kernel_size"], **args)
    n = len(case["spatial"])
    cfg = na_args(n, q, k, v, case["kernel_size"], args.get("stride", 1), args.get("dilation", 1),
                  args.get("is_causal", False), None, rpb)
    picked = na_torch.graph_tile(case["spatial"], cfg, 16)
    assert len(picked) == n and all(1 <= t for t in picked)
    for tile, fit in ((None, None), (na_torch.GRAPH_TILE[n], None), (na_torch.GRAPH_TILE[n], False)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb) if t is not None]
        out = na_torch.plain(*leaves[:3], leaves[3] if rpb is not None else None, cfg, tile=tile, fit=fit)[0]
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
        out.sum().backward()
        ref_leaves = [t.clone().requires_grad_() for t in (q, k, v, rpb) if t is not None]
        run_na("reference", *ref_leaves[:3], ref_leaves[3] if rpb is not None else None, case["kernel_size"],
               **args).sum().backward()
        for a, b in zip(leaves, ref_leaves):
            torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("spatial,ks,dil,tile,causal", [((12, 16), 5, (1, 2), (4, 4), False),
                                                       ((14, 14), 7, 1, (2, 7), (True, False)),
                                                       ((8, 6, 9), 3, (2, 1, 3), (2, 3, 3), False),
                                                       ((24,), 5, 3, (4,), False)])
def test_exported_formulation_exact_tiles(spatial, ks, dil, tile, causal):
    """Tiles that cut every axis exactly: query tiles and results are layout copies (no gathers); same function,
    with the logsumexp."""
    from visionattn.kernels import na_torch
    from visionattn.kernels._na_index import graph_tiles
    from visionattn.kernels.checks import na_args

    q, k, v, rpb = make_inputs(spatial, ks, 2, 8, 2, True, torch.float64)
    cfg = na_args(len(spatial), q, k, v, ks, 1, dil, causal, None, rpb)
    assert na_torch._partition(spatial, graph_tiles(spatial, *cfg[:4], tile, "cpu")) is not None
    ref, ref_lse = run_na("reference", q, k, v, rpb, ks, dilation=dil, is_causal=causal), None
    fn = {1: "na1d", 2: "na2d", 3: "na3d"}[len(spatial)]
    ref_lse = getattr(__import__("visionattn.kernels", fromlist=[fn]), fn)(
        q, k, v, ks, dilation=dil, is_causal=causal, rpb=rpb, return_lse=True, backend="reference")[1]
    out, lse = na_torch.plain(q, k, v, rpb, cfg, need_lse=True, tile=tile)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(lse, ref_lse, atol=1e-10, rtol=1e-8)



@pytest.mark.parametrize("case", NA_CASES[::2], ids=case_id)
def test_exported_packed_formulation_matches_reference(case):
    """``na_torch.plain_qkv`` (the ONNX graph of the NA modules: q / k / v gathered from the packed projection, the
    query bias on the query tiles) at the picked, the symbolic-size and the untrimmed tilings: forward and
    gradients (projection, query bias, RPB) equal the reference."""
    from visionattn.kernels import na_torch
    from visionattn.kernels.checks import na_args

    n, heads = len(case["spatial"]), case.get("heads", 2)
    q, k, v, rpb = make_inputs(case["spatial"], case["kernel_size"], heads, 8, case.get("batch", 1),
                               case.get("rpb", True), torch.float64)
    qb = torch.randn(heads, 8, dtype=torch.float64)
    args = {a: case[a] for a in ("dilation", "stride", "is_causal") if a in case}
    cfg = na_args(n, q, k, v, case["kernel_size"], args.get("stride", 1), args.get("dilation", 1),
                  args.get("is_causal", False), None, rpb)
    packed = torch.stack([q, k, v], -3)
    ref_leaves = [t.clone().requires_grad_() for t in (packed, qb, rpb) if t is not None]
    p, b = ref_leaves[:2]
    ref = run_na("reference", p[..., 0, :, :] + b, p[..., 1, :, :], p[..., 2, :, :],
                 ref_leaves[2] if rpb is not None else None, case["kernel_size"], **args)
    ref.sum().backward()
    for tile, fit in ((None, None), (na_torch.GRAPH_TILE[n], None), (na_torch.GRAPH_TILE[n], False)):
        leaves = [t.clone().requires_grad_() for t in (packed, qb, rpb) if t is not None]
        out = na_torch.plain_qkv(leaves[0], leaves[2] if rpb is not None else None, cfg, q_bias=leaves[1],
                                 tile=tile, fit=fit)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
        out.sum().backward()
        for a, r in zip(leaves, ref_leaves):
            torch.testing.assert_close(a.grad, r.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("cls,size,kw", [(NeighborhoodAttention2D, (13, 10), dict(kernel_size=5, dilation=2)),
                                         (NeighborhoodAttention2D, (4, 9), dict(kernel_size=3, dilation=2)),
                                         (NeighborhoodAttention2D, (9, 9), dict(kernel_size=3, qkv_bias=False)),
                                         (NeighborhoodAttention2D, (8, 8), dict(kernel_size=3, rpb=False)),
                                         (NeighborhoodAttention1D, (23,), dict(kernel_size=5, dilation=3))])
def test_module_export_forward_equals_forward(cls, size, kw):
    """The NA modules' ONNX-export forward (packed q / k / v, key bias dropped, value bias folded into proj) is the
    module's function, also on maps padded up to kernel * dilation."""
    torch.manual_seed(0)
    m = cls(16, 2, **kw).double().eval()
    with torch.no_grad():
        for p in m.parameters():  # biases away from zero: dropping / folding them must not matter
            p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    padded = __import__("visionattn.layers.na", fromlist=["_pad_small_input"])._pad_small_input(x, m._need, True)
    torch.testing.assert_close(m._export_forward(padded, x), m(x), atol=1e-10, rtol=1e-8)

def test_graph_tile_choice():
    """The exported graph's tiling follows the shape (NAT's 56 / 28 / 14 maps at k7 get smaller tiles than the
    symbolic-size default) and falls back to ``GRAPH_TILE`` when a size is not an int."""
    from visionattn.kernels import na_torch
    from visionattn.kernels._na_index import graph_tiles
    from visionattn.kernels.checks import NAConfig

    cfg = NAConfig((7, 7), (1, 1), (1, 1), (False, False), 1.0)
    for side in (56, 28, 14):
        t = na_torch.graph_tile((side, side), cfg, 64)
        assert t != na_torch.GRAPH_TILE[2] and t[0] * t[1] < 64, (side, t)
        assert na_torch._partition((side, side), graph_tiles((side, side), *cfg[:4], t, "cpu")) is not None
    assert na_torch.graph_tile((torch.tensor(56), 56), cfg, 64) == na_torch.GRAPH_TILE[2]


def test_torch_large_map_matches_reference():
    """The NAT stage-1 window (k7) on a map with many full tiles, fp32, with RPB."""
    assert_matches_reference("torch", spatial=(30, 33), kernel_size=7, dilation=1, heads=2, head_dim=16,
                             batch=1, backward=True)


def test_scale_and_head_dim_of_v():
    q, k, _, rpb = make_inputs((9, 10), 3, heads=2, head_dim=8, dtype=torch.float64)
    v = torch.randn(1, 9, 10, 2, 5, dtype=torch.float64)
    ref = na2d(q, k, v, 3, rpb=rpb, scale=0.3, backend="reference")
    out = na2d(q, k, v, 3, rpb=rpb, scale=0.3, backend="torch")
    assert out.shape == (1, 9, 10, 2, 5)
    torch.testing.assert_close(out, ref)


def test_half_precision_forward():
    q, k, v, rpb = make_inputs((11, 13), 5, heads=2, dtype=torch.float32)
    ref = na2d(q, k, v, 5, dilation=2, rpb=rpb, backend="reference")
    out = na2d(q.bfloat16(), k.bfloat16(), v.bfloat16(), 5, dilation=2, rpb=rpb.bfloat16(), backend="torch")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_window_semantics_by_hand():
    """1-D k3 on length 5: windows [0,2], [0,2], [1,3], [2,4], [2,4] (shifted inward, never padded)."""
    L = 5
    q = torch.zeros(1, L, 1, 1, dtype=torch.float64)
    k = torch.zeros_like(q)
    v = torch.arange(L, dtype=torch.float64).reshape(1, L, 1, 1)
    for slot, want in ((4, [2.0, 1.0, 2.0, 3.0, 3.0]), (0, [1.0, 1.0, 2.0, 3.0, 2.0])):
        # a huge bias at one rpb slot (key - query = slot - 2) picks that key when it is in the window,
        # otherwise the query averages its window
        rpb = torch.zeros(1, 5, dtype=torch.float64)
        rpb[0, slot] = 50.0
        for be in ("reference", "torch", "gather"):
            out = na1d(q, k, v, 3, rpb=rpb, backend=be).flatten()
            torch.testing.assert_close(out, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)


def test_gradcheck_fp64():
    from torch.autograd import gradcheck

    # full Jacobians on a tiny DiNA case; random-projection (fast_mode) checks on stride/causal/1-D/3-D
    q, k, v, rpb = make_inputs((6, 7), 3, heads=1, head_dim=2, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (q, k, v, rpb)]
    assert gradcheck(lambda q, k, v, r: na2d(q, k, v, 3, dilation=2, rpb=r, backend="torch"), leaves)
    for spatial, ks, d, s, c in [((7, 6), (3, 5), 1, (2, 1), (True, False)), ((11,), 5, 2, 1, True),
                                 ((4, 5, 4), 3, 1, (1, 2, 1), (False, False, True))]:
        q, k, v, rpb = make_inputs(spatial, ks, heads=2, head_dim=3, dtype=torch.float64)
        leaves = [t.requires_grad_() for t in (q, k, v, rpb)]
        fn = {1: na1d, 2: na2d, 3: na3d}[len(spatial)]
        f = lambda q, k, v, r, fn=fn, ks=ks, d=d, s=s, c=c: fn(q, k, v, ks, stride=s, dilation=d, is_causal=c, rpb=r,
                                                               backend="torch")
        assert gradcheck(f, leaves, fast_mode=True)


def test_logits():
    """na_logits gives the window logits (row-major neighbours); softmax of them times the gathered v = na2d."""
    q, k, v, rpb = make_inputs((9, 11), 3, heads=2, dtype=torch.float64)
    logits = na2d_logits(q, k, 3, dilation=2, rpb=rpb)
    assert logits.shape == (1, 2, 9, 11, 9)
    # query (0, 0) with d2: keys rows {0, 2, 4} x cols {0, 2, 4}; rpb rows/cols index key-query in units of 2, +2
    s = 8 ** -0.5
    for n, (r, c) in enumerate([(r, c) for r in (0, 2, 4) for c in (0, 2, 4)]):
        want = (q[0, 0, 0, 1] * s) @ k[0, r, c, 1] + rpb[1, r // 2 + 2, c // 2 + 2]
        torch.testing.assert_close(logits[0, 1, 0, 0, n], want)
    out = na2d(q, k, v, 3, dilation=2, rpb=rpb, backend="reference")
    # the same attention rebuilt from the logits and the gathered values
    from visionattn.kernels._na_index import window_index
    from visionattn.kernels.checks import NAConfig
    from visionattn.kernels.na_torch import gather_windows

    cfg = NAConfig((3, 3), (1, 1), (2, 2), (False, False), 1.0)
    vw = gather_windows(v, window_index((9, 11), *cfg[:4], "cpu").pos)  # [B, H, W, h, K, D]
    rebuilt = (logits.movedim(1, -2).softmax(-1).unsqueeze(-2) @ vw).squeeze(-2)
    torch.testing.assert_close(rebuilt, out)
    causal = na_logits(q, k, 3, rpb=rpb, is_causal=True)
    assert torch.isinf(causal[0, 0, 0, 0]).sum() == 8  # the first query sees only itself


# ------------------------------------------------------------------------------------------ natten


NATTEN_CASES = [
    ((13, 17), 5, 2, 1, False),
    ((15, 14), 7, 2, (3, 7), (True, False)),
    ((11, 13), 3, 3, 2, True),
    ((12, 16), 4, (1, 2), (2, 3), (False, True)),
    ((40,), 6, 3, 4, True),
    ((5, 6, 7), 3, (1, 2, 1), (1, 1, 2), (False, True, False)),
]


@pytest.mark.natten
@pytest.mark.parametrize("spatial,ks,d,s,c", NATTEN_CASES)
def test_equals_natten(spatial, ks, d, s, c):
    import natten

    q, k, v, _ = make_inputs(spatial, ks, heads=2, head_dim=8, batch=2, rpb=False)
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(spatial)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = fn(q, k, v, kernel_size=ks, dilation=d, stride=s, is_causal=c)
        via_backend = run_na("natten", q, k, v, None, ks, d, s, c)
    for be in ("reference", "torch"):
        torch.testing.assert_close(run_na(be, q, k, v, None, ks, d, s, c), want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(via_backend, want)


@pytest.mark.natten
def test_natten_backend_rejects_rpb():
    q, k, v, rpb = make_inputs((9, 9), 3)
    with pytest.raises(ValueError, match="rpb"):
        na2d(q, k, v, 3, rpb=rpb, backend="natten")


# ------------------------------------------------------------------------------------------ arguments


def _qkv(shape=(1, 9, 10, 2, 8)):
    t = torch.randn(shape)
    return t, t.clone(), t.clone()


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(kernel_size=3.0), "kernel_size"),
    (dict(kernel_size=11), "kernel_size \\* dilation"),
    (dict(kernel_size=5, dilation=2), "kernel_size \\* dilation"),
    (dict(kernel_size=3, dilation=0), "dilation"),
    (dict(kernel_size=3, stride=4), "stride"),
    (dict(kernel_size=3, stride=0), "stride"),
    (dict(kernel_size=3, is_causal="yes"), "is_causal"),
    (dict(kernel_size=3, backend="cuda"), "backend"),
    (dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)), "rpb"),
    (dict(kernel_size=3, rpb=torch.zeros(3, 5, 5)), "rpb"),
    (dict(kernel_size=3, rpb=torch.zeros(2, 5, 5, dtype=torch.float64)), "rpb"),
    (dict(kernel_size=3, scale=float("nan")), "scale"),
])
def test_bad_arguments(kwargs, match):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=match):
        na2d(q, k, v, **kwargs)


def test_bad_tensors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="rank"):
        na2d(q[0], k[0], v[0], 3)
    with pytest.raises(ValueError, match="rank"):
        na1d(q, k, v, 3)
    with pytest.raises(ValueError, match="shapes"):
        na2d(q, k[:, :8], v, 3)
    with pytest.raises(ValueError, match="dtypes"):
        na2d(q, k.double(), v, 3)
    with pytest.raises(ValueError, match="floating"):
        na2d(q.long(), k.long(), v.long(), 3)
    with pytest.raises(ValueError, match="devices"):
        na2d(q, k.to("meta"), v, 3)
    with pytest.raises(ValueError, match="rpb"):
        na2d(q, k, v, 3, rpb=torch.zeros(2, 5, 5, device="meta"))
    with pytest.raises(ValueError, match="rank"):
        na2d_logits(q[0], k[0], 3)


def test_triton_backend_errors(monkeypatch):
    """Configurations the Triton kernel does not run surface as ValueError naming the argument."""
    from visionattn.kernels import dispatch

    monkeypatch.setitem(dispatch.NA_CHECKS, "triton", lambda *a: "is_causal is not supported")
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="backend='triton': is_causal"):
        na2d(q, k, v, 3, is_causal=True, backend="triton")


def test_triton_backend_needs_cuda_or_interpreter():
    import visionattn.kernels.na_triton  # noqa: F401  (decorated while the interpreter is on: triton.jit decides then)
    from visionattn._environment import override

    q, k, v = _qkv()
    with override(triton_interpret=False), pytest.raises(ValueError, match="device cpu"):
        na2d(q, k, v, 3, backend="triton")


def _cfg(q, ks=3):
    from visionattn.kernels.checks import na_args

    return na_args(q.dim() - 3, q, q, q, ks, 1, 1, False, None, None)


def test_auto_policy_on_cuda(monkeypatch):
    """On CUDA `auto` runs triton only when opted in (VISIONATTN_NA_AUTO_TRITON=1) and the kernel runs the
    arguments; a configuration the kernel rejects runs on the torch path."""
    from visionattn._environment import override
    from visionattn.kernels import dispatch

    seen = []
    monkeypatch.setattr(dispatch, "_device", lambda q: "cuda")
    monkeypatch.setitem(dispatch.NA_CHECKS, "triton", lambda *a: seen.append(1) or "no")
    q, k, v = _qkv()
    cfg = _cfg(q)
    assert dispatch.na_backend("auto", q, k, v, None, cfg) == "torch" and seen == []  # not opted in: not asked
    with override(na_auto_triton=True):
        assert dispatch.na_backend("auto", q, k, v, None, cfg) == "torch" and seen == [1]
        torch.testing.assert_close(na2d(q, k, v, 3), na2d(q, k, v, 3, backend="torch"))
        monkeypatch.setitem(dispatch.NA_CHECKS, "triton", lambda *a: None)
        assert dispatch.na_backend("auto", q, k, v, None, cfg) == "triton"
        monkeypatch.setattr(dispatch, "exporting", lambda: True)  # ONNX export / jit.trace: the torch path
        monkeypatch.setitem(dispatch.NA_CHECKS, "triton", dispatch._na_triton)
        assert dispatch.na_backend("auto", q, k, v, None, cfg) == "torch"


def test_auto_is_torch_on_cpu_without_the_compiled_kernel(monkeypatch):
    from visionattn.kernels import dispatch, na

    # auto prefers the compiled CPU kernel (tests/test_na_cpu.py); where it is unavailable, the torch path
    monkeypatch.setitem(dispatch.NA_CHECKS, "cpu", lambda *a: "unavailable")
    seen = []
    monkeypatch.setitem(na._RUN, "torch", lambda *a: seen.append(1) or (a[0], None))
    q, k, v = _qkv()
    assert dispatch.na_backend("auto", q, k, v, None, _cfg(q)) == "torch"
    na2d(q, k, v, 3)
    assert seen == [1]


def test_keyword_only_natten_order():
    """Everything after kernel_size is keyword-only (NATTEN >= 0.20 names): no silent stride/dilation swap."""
    q, k, v = _qkv((1, 12, 12, 2, 8))
    with pytest.raises(TypeError):
        na2d(q, k, v, 3, 2)
    with pytest.raises(TypeError):
        na2d_logits(q, k, 3, 2)
    a = na2d(q, k, v, 3, stride=2, dilation=3, backend="reference")
    b = na2d(q, k, v, kernel_size=3, dilation=3, stride=2, backend="torch")
    torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ modules


def test_module_state_dict_and_repr():
    m = NeighborhoodAttention2D(32, 4, kernel_size=7, dilation=2)
    sd = m.state_dict()
    assert list(sd) == ["rpb", "qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    assert sd["rpb"].shape == (4, 13, 13)
    assert 0 < sd["rpb"].std() < 0.05 and sd["rpb"].abs().max() <= 2.0
    assert "kernel_size=(7, 7)" in repr(m) and "dilation=(2, 2)" in repr(m) and "backend='auto'" in repr(m)
    m1 = NeighborhoodAttention1D(16, 2, kernel_size=5, rpb=False, qkv_bias=False)
    assert list(m1.state_dict()) == ["qkv.weight", "proj.weight", "proj.bias"]
    with pytest.raises(ValueError, match="num_heads"):
        NeighborhoodAttention2D(30, 4)
    with pytest.raises(ValueError, match="attn_drop"):
        NeighborhoodAttention2D(16, 2, 3, attn_drop=0.1).train()(torch.randn(1, 5, 5, 16))
    with pytest.raises(ValueError, match="x must be"):
        NeighborhoodAttention2D(16, 2, 3)(torch.randn(5, 5, 16))


def _module_by_hand(m: NeighborhoodAttention2D, x: torch.Tensor) -> torch.Tensor:
    """Old NATTEN's module written out: pad the input with zeros to k*d, qkv, dense NA, crop, proj."""
    B, H, W, C = x.shape
    kd = [k * d for k, d in zip(m.kernel_size, m.dilation)]
    Hp, Wp = max(H, kd[0]), max(W, kd[1])
    xp = x.new_zeros(B, Hp, Wp, C)
    xp[:, :H, :W] = x
    qkv = m.qkv(xp).reshape(B, Hp, Wp, 3, m.num_heads, C // m.num_heads)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    o = na2d(q, k, v, m.kernel_size, dilation=m.dilation, rpb=m.rpb, scale=m.scale, backend="reference")
    return m.proj(o.reshape(B, Hp, Wp, C)[:, :H, :W])


@pytest.mark.parametrize("size,k,d", [((5, 9), 7, 1), ((9, 6), 3, 4), ((4, 4), 5, 2), ((12, 13), 3, 2)])
def test_module_small_map_padding(size, k, d):
    torch.manual_seed(0)
    m = NeighborhoodAttention2D(16, 2, kernel_size=k, dilation=d).double().eval()
    with torch.no_grad():
        m.qkv.bias.normal_()  # pad tokens carry the qkv bias: make them matter
        m.rpb.normal_()
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    out = m(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _module_by_hand(m, x))
    if size[0] < k * d or size[1] < k * d:
        m.pad_small_inputs = False
        with pytest.raises(ValueError, match="pad_small_inputs"):
            m(x)


def test_module_1d_and_backward():
    m = NeighborhoodAttention1D(16, 2, kernel_size=5, dilation=2)
    x = torch.randn(2, 23, 16, requires_grad=True)
    m(x).sum().backward()
    assert m.rpb.grad is not None and m.rpb.grad.abs().sum() > 0 and x.grad is not None
    m.backend = "reference"
    y_ref = m(x)
    m.backend = "torch"
    torch.testing.assert_close(m(x), y_ref)
    assert m(torch.randn(1, 7, 16)).shape == (1, 7, 16)  # 7 < k*d: padded like old NATTEN


# ------------------------------------------------------------------------------------------ export


def test_onnx_export_dynamo(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = NeighborhoodAttention2D(32, 2, kernel_size=5, dilation=2).eval()
    with torch.no_grad():
        m.rpb.normal_()
    x = torch.randn(1, 13, 15, 32)
    path = tmp_path / "na.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = m(x)
    assert abs(torch.from_numpy(got) - want).max().item() < 1e-4


# ------------------------------------------------------------------------------------------ compile, GPU, sweeps


@pytest.mark.full
def test_torch_compile_fullgraph():
    """`auto` under torch.compile takes the torch path; the index tensors become graph constants (no breaks)."""
    torch.manual_seed(0)
    m = NeighborhoodAttention2D(16, 2, kernel_size=5, dilation=2).eval()
    x = torch.randn(1, 11, 13, 16, requires_grad=True)
    mc = torch.compile(m, fullgraph=True)
    y = mc(x)
    torch.testing.assert_close(y, m(x))
    y.sum().backward()
    assert m.rpb.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("case", NA_CASES[::4], ids=case_id)
def test_torch_on_cuda(case):
    assert_matches_reference("torch", device="cuda", **case)


_SWEEP = [
    dict(spatial=sp, kernel_size=k, dilation=d, stride=s, is_causal=c, heads=2, batch=1)
    for sp in ((13, 17), (21, 19))
    for k in (3, 5, 7, 13)
    for d in (1, 2, 3)
    for s in (1, 2, k)
    for c in (False, True, (True, False))
    if k * d <= min(sp) and s <= k
]


@pytest.mark.full
@pytest.mark.parametrize("case", _SWEEP, ids=case_id)
def test_torch_sweep(case):
    assert_matches_reference("torch", **case)


def test_module_under_bf16_autocast():
    """The fp32 RPB table is cast to the activations' dtype (NAT/DiNAT training with bf16 AMP)."""
    from visionattn.layers import NeighborhoodAttention2D

    m = NeighborhoodAttention2D(32, 2, 5, dilation=2)
    x = torch.randn(2, 11, 13, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().square().mean().backward()
    assert y.dtype == torch.bfloat16 and m.rpb.grad is not None and m.rpb.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), m(x), atol=5e-2, rtol=5e-2)


# ------------------------------------------------------------------------------------------ faults (issue 15)

_NONFINITE_CONFIGS = [
    dict(spatial=(9, 10), kernel_size=3),
    dict(spatial=(11, 13), kernel_size=(5, 3), dilation=(2, 1), stride=(1, 2), is_causal=(False, True)),
    dict(spatial=(17,), kernel_size=5, dilation=2, is_causal=True),
    dict(spatial=(5, 6, 7), kernel_size=3, dilation=(1, 2, 1), stride=(1, 1, 2)),
]


def _poisoned(cfg, which, value, seed=0):
    spatial = cfg["spatial"]
    q, k, v, rpb = make_inputs(spatial, cfg["kernel_size"], heads=2, head_dim=8, dtype=torch.float64, seed=seed)
    pos = tuple(s // 2 for s in spatial)
    t = {"query": q, "key": k, "value": v}[which]
    t[(0, *pos, 1, 3)] = value
    return q, k, v, rpb, pos


def _window_set(cfg, pos):
    """Queries whose window contains key position `pos` (NATTEN's mask predicate, one axis at a time)."""
    from visionattn.kernels.na_reference import axis_dense

    spatial = cfg["spatial"]
    n = len(spatial)
    per_axis = lambda name, d: (lambda x: (x,) * n if isinstance(x, (int, bool)) else tuple(x))(cfg.get(name, d))
    ks, ss, ds, cs = (per_axis(*a) for a in (("kernel_size", 1), ("stride", 1), ("dilation", 1), ("is_causal", False)))
    out = torch.ones(spatial, dtype=torch.bool)
    for a in range(n):
        col = torch.from_numpy(axis_dense(spatial[a], ks[a], ds[a], ss[a], cs[a])[0][:, pos[a]])
        out &= col.reshape([-1 if b == a else 1 for b in range(n)])
    return out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("which", ["query", "key", "value"])
@pytest.mark.parametrize("cfg", _NONFINITE_CONFIGS, ids=lambda c: "x".join(map(str, c["spatial"])))
def test_nonfinite_stays_in_windows(cfg, which, value):
    """A NaN / inf reaches exactly the queries whose window holds it: the same NaN and inf pattern in every
    backend (issue 15: an inf key made 21 queries NaN on the torch path where the reference gave 4)."""
    q, k, v, rpb, pos = _poisoned(cfg, which, value)
    args = {a: cfg[a] for a in ("stride", "dilation", "is_causal") if a in cfg}
    ref = run_na("reference", q, k, v, rpb, cfg["kernel_size"], **args)
    bad = ~torch.isfinite(ref).all(-1)[0, ..., 1]  # [*spatial], head 1
    if which == "query":
        want = torch.zeros_like(bad)
        want[pos] = True
        assert torch.equal(bad, want)
    else:
        window = _window_set(cfg, pos)
        assert bool((bad <= window).all()) and bad.any()
        if which == "value":
            assert torch.equal(bad, window)
    assert torch.isfinite(ref[:, ..., 0, :]).all()  # the other head is untouched
    for be in ("torch", "gather"):
        out = run_na(be, q, k, v, rpb, cfg["kernel_size"], **args)
        assert torch.equal(torch.isnan(out), torch.isnan(ref)), be
        assert torch.equal(torch.isinf(out), torch.isinf(ref)), be
        fin = torch.isfinite(ref)
        torch.testing.assert_close(out[fin], ref[fin])


def test_nonfinite_rpb_entry_stays_in_its_pairs():
    q, k, v, rpb = make_inputs((9, 10), 3, heads=2, dtype=torch.float64)
    rpb[1, 2, 2] = float("inf")  # key - query = (0, 0): every query's own position
    rpb[0, 0, 4] = float("nan")  # key - query = (-2, +2): queries in rows >= 2 (cols < 8) or pushed by borders
    ref = na2d(q, k, v, 3, rpb=rpb, backend="reference")
    for be in ("torch", "gather"):
        out = na2d(q, k, v, 3, rpb=rpb, backend=be)
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.equal(torch.isinf(out), torch.isinf(ref))
    assert torch.isnan(ref[..., 0, :]).any() and not torch.isnan(ref[..., 0, :]).all()


@pytest.mark.parametrize("backend", ["reference", "torch", "gather", "triton"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_batch_zero(backend, n):
    """Batch 0 gives an empty result and empty gradients, like every torch op (issue 15)."""
    fn = {1: na1d, 2: na2d, 3: na3d}[n]
    spatial = (5,) * n
    q, k = (torch.randn(0, *spatial, 2, 16, requires_grad=True) for _ in range(2))
    v = torch.randn(0, *spatial, 2, 8, requires_grad=True)
    rpb = torch.randn(2, *([5] * n), requires_grad=True)
    out = fn(q, k, v, 3, dilation=1, is_causal=n == 1, rpb=rpb, backend=backend)
    assert out.shape == (0, *spatial, 2, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape and v.grad.shape == v.shape and torch.equal(rpb.grad, torch.zeros_like(rpb))
    assert na_logits(q, k, 3).shape == (0, 2, *spatial, 3 ** n)


@pytest.mark.parametrize("shape", [(1, 6, 6, 0, 8), (1, 6, 6, 2, 0)], ids=["heads0", "head_dim0"])
def test_empty_heads_or_head_dim_is_value_error(shape):
    x = torch.randn(shape)
    with pytest.raises(ValueError, match="heads and head_dim"):
        na2d(x, x, x, 3)
    with pytest.raises(ValueError, match="heads and head_dim"):
        na2d_logits(x, x, 3)
    v = torch.randn(1, 6, 6, 2, 0)
    with pytest.raises(ValueError, match="heads and head_dim"):
        na2d(torch.randn(1, 6, 6, 2, 8), torch.randn(1, 6, 6, 2, 8), v, 3)


def test_split_calls_compile_fullgraph():
    """na2d_logits / na2d_av compile as one graph (a generator in the window gather broke dynamo)."""
    from visionattn.kernels import na2d_av

    q, k, v = (torch.randn(1, 9, 9, 2, 8) for _ in range(3))
    logits = torch.compile(lambda q, k: na2d_logits(q, k, 3, dilation=2), fullgraph=True)(q, k)
    torch.testing.assert_close(logits, na2d_logits(q, k, 3, dilation=2))
    a = logits.softmax(-1)
    out = torch.compile(lambda a, v: na2d_av(a, v, 3, dilation=2), fullgraph=True)(a, v)
    torch.testing.assert_close(out, na2d_av(a, v, 3, dilation=2))


def test_natten_backend_refuses_the_compat_emulation(monkeypatch):
    import sys

    from visionattn.compat import natten_legacy

    # what install_natten_legacy() does, without refusing a real natten other tests in this process imported
    monkeypatch.setitem(sys.modules, "natten", natten_legacy)
    q = torch.randn(1, 9, 9, 2, 8)
    with pytest.raises(ValueError, match="emulation"):
        na2d(q, q, q, 3, backend="natten")
