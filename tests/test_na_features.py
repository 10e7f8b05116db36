"""NATTEN >= 0.20 features of na1d/na2d/na3d (extra keys/values, logsumexp, GQA/MQA, value head_dim) and the
split calls (na*_logits, na*_av, merge_attentions): against a brute-force computation written out per query,
gradcheck, NATTEN 0.21 equality, ONNX export."""
from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from visionattn.kernels import (
    merge_attentions,
    na1d,
    na1d_av,
    na1d_logits,
    na2d,
    na2d_av,
    na2d_logits,
    na3d,
    na3d_av,
    na3d_logits,
)
from visionattn.kernels.na_reference import axis_dense

FNS = {1: na1d, 2: na2d, 3: na3d}


def _per_axis(x, n):
    return (x,) * n if isinstance(x, (int, bool)) else tuple(x)


def brute_force(q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, rpb=None, ak=None,
                av=None):
    """One query at a time: its window keys (NATTEN's mask predicate per axis), its extra keys, one softmax.
    Returns (out [B, *S, h, Dv], natural lse [B, *S, h]); differentiable."""
    B, *spatial, h, D = q.shape
    n = len(spatial)
    hk = k.shape[-2]
    g = h // hk
    ks, ss, ds, cs = (_per_axis(x, n) for x in (kernel_size, stride, dilation, is_causal))
    scale = D ** -0.5 if scale is None else scale
    dense = [axis_dense(spatial[a], ks[a], ds[a], ss[a], cs[a]) for a in range(n)]
    outs, lses = [], []
    for pos in itertools.product(*(range(s) for s in spatial)):
        keys = [key for key in itertools.product(*(range(s) for s in spatial))
                if all(dense[a][0][pos[a], key[a]] for a in range(n))]
        rel = [[int(dense[a][1][pos[a], key[a]]) for a in range(n)] for key in keys]
        o_h, l_h = [], []
        for head in range(h):
            kvh = head // g
            qv = q[(slice(None), *pos, head)] * scale  # [B, D]
            kw = torch.stack([k[(slice(None), *key, kvh)] for key in keys], 1)  # [B, K, D]
            vw = torch.stack([v[(slice(None), *key, kvh)] for key in keys], 1)
            logits = (kw @ qv.unsqueeze(-1)).squeeze(-1)  # [B, K]
            if rpb is not None:
                logits = logits + torch.stack([rpb[(head, *r)] for r in rel])
            if ak is not None:
                logits = torch.cat([logits, (ak[:, :, kvh] @ qv.unsqueeze(-1)).squeeze(-1)], 1)
                vw = torch.cat([vw, av[:, :, kvh]], 1)
            o_h.append((logits.softmax(-1).unsqueeze(1) @ vw).squeeze(1))
            l_h.append(logits.logsumexp(-1))
        outs.append(torch.stack(o_h, 1))
        lses.append(torch.stack(l_h, 1))
    out = torch.stack(outs, 1).reshape(B, *spatial, h, v.shape[-1])
    return out, torch.stack(lses, 1).reshape(B, *spatial, h)


def _inputs(spatial, heads, kv_heads, D, Dv, k, rpb=True, extra=0, B=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    n = len(spatial)
    ks = _per_axis(k, n)
    return dict(q=t(B, *spatial, heads, D), k=t(B, *spatial, kv_heads, D), v=t(B, *spatial, kv_heads, Dv),
                rpb=t(heads, *(2 * x - 1 for x in ks)) if rpb else None,
                ak=t(B, extra, kv_heads, D) if extra else None, av=t(B, extra, kv_heads, Dv) if extra else None)


CASES = [
    # spatial, heads, kv_heads, D, Dv, kernel, stride, dilation, causal, rpb, extra
    ((6, 7), 4, 2, 4, 5, 3, 1, (1, 2), False, True, 3),
    ((7, 6), 2, 1, 3, 3, (3, 5), (2, 1), 1, (True, False), True, 2),
    ((11,), 3, 1, 4, 2, 5, 2, 2, True, True, 1),
    ((4, 6, 4), 4, 2, 3, 4, 3, (1, 1, 2), (1, 2, 1), (False, True, False), False, 2),
    ((6, 6), 2, 2, 4, 4, 3, 1, 1, False, True, 0),
]


def _case_id(c):
    return f"{'x'.join(map(str, c[0]))}-h{c[1]}kv{c[2]}-d{c[3]}v{c[4]}-x{c[10]}"


def _run(fn_or_backend, case, backward=True, dtype=torch.float64):
    spatial, h, hk, D, Dv, kk, s, d, c, with_rpb, extra = case
    x = _inputs(spatial, h, hk, D, Dv, kk, with_rpb, extra, dtype=dtype)
    leaves = {name: t.clone().requires_grad_(backward) for name, t in x.items() if t is not None}
    args = dict(kernel_size=kk, stride=s, dilation=d, is_causal=c, scale=0.7)
    get = lambda name: leaves.get(name)  # noqa: E731
    if fn_or_backend == "brute":
        out, lse = brute_force(get("q"), get("k"), get("v"), rpb=get("rpb"), ak=get("ak"), av=get("av"), **args)
    else:
        out, lse = FNS[len(spatial)](get("q"), get("k"), get("v"), rpb=get("rpb"), additional_keys=get("ak"),
                                     additional_values=get("av"), return_lse=True, backend=fn_or_backend, **args)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    grads = {}
    if backward:
        gen = torch.Generator().manual_seed(1)
        w_out = torch.randn(out.shape, generator=gen).to(out.dtype)
        w_lse = torch.randn(lse.shape, generator=gen).to(lse.dtype)
        loss = (out * w_out).sum() + (lse * w_lse).sum()
        names = list(leaves)
        grads = dict(zip(names, torch.autograd.grad(loss, [leaves[n] for n in names])))
    return out, lse, grads


@pytest.mark.parametrize("backend", ["reference", "torch", "gather"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_features_match_brute_force(case, backend):
    """Extra keys (one softmax with the window), logsumexp, GQA / MQA, value head_dim, with RPB: outputs and the
    gradients of every input (the logsumexp's too) equal the per-query brute force."""
    want = _run("brute", case)
    got = _run(backend, case)
    torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(got[1], want[1], atol=1e-10, rtol=1e-9)
    assert set(got[2]) == set(want[2])
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], atol=1e-9, rtol=1e-8,
                                   msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("case", [CASES[0], CASES[2]], ids=_case_id)
def test_triton_features_match_reference(case):
    """The fused kernel (interpreter): GQA in the kernel, extra keys merged by logsumexp, backward as one softmax."""
    case = (case[0], case[1], case[2], 16, 16, *case[5:])  # tl.dot needs 16
    want = _run("reference", case, dtype=torch.float32)
    got = _run("triton", case, dtype=torch.float32)
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    for name in want[2]:
        scale = max(1.0, want[2][name].abs().max().item())
        torch.testing.assert_close(got[2][name], want[2][name], atol=3e-5 * scale, rtol=2e-5,
                                   msg=lambda m, n=name: f"d{n}: {m}")


def test_gradcheck_reference_and_torch_fp64():
    case = ((4, 6), 2, 1, 2, 3, 3, 1, (1, 2), (False, True), True, 2)
    spatial, h, hk, D, Dv, kk, s, d, c, _, extra = case
    x = _inputs(spatial, h, hk, D, Dv, kk, True, extra, B=1)
    leaves = [x[n].requires_grad_() for n in ("q", "k", "v", "rpb", "ak", "av")]
    for backend, fast in (("reference", False), ("torch", True)):
        def f(q, k, v, rpb, ak, av, backend=backend):
            out, lse = na2d(q, k, v, kk, stride=s, dilation=d, is_causal=c, rpb=rpb, additional_keys=ak,
                            additional_values=av, return_lse=True, backend=backend)
            return out, lse

        assert torch.autograd.gradcheck(f, leaves, fast_mode=fast), backend


# ------------------------------------------------------------------------------------------ merge


def test_merge_attentions_equals_one_softmax():
    """NA with return_lse, merged with an attention over extra tokens = NA with those extra tokens."""
    x = _inputs((7, 8), 2, 2, 4, 4, 3, rpb=True, extra=5)
    na_out, na_lse = na2d(x["q"], x["k"], x["v"], 3, rpb=x["rpb"], return_lse=True)
    B, H, W, h, D = x["q"].shape
    logits = torch.einsum("bnhd,bmhd->bnhm", x["q"].reshape(B, H * W, h, D) * D ** -0.5, x["ak"])
    ex_out = torch.einsum("bnhm,bmhd->bnhd", logits.softmax(-1), x["av"]).reshape(B, H, W, h, D)
    merged, lse = merge_attentions([na_out, ex_out], [na_lse, logits.logsumexp(-1).reshape(B, H, W, h)])
    want, want_lse = na2d(x["q"], x["k"], x["v"], 3, rpb=x["rpb"], additional_keys=x["ak"],
                          additional_values=x["av"], return_lse=True)
    torch.testing.assert_close(merged, want)
    torch.testing.assert_close(lse, want_lse)
    with pytest.raises(ValueError, match="lses"):
        merge_attentions([na_out, ex_out], [na_lse, na_lse[..., :1]])
    with pytest.raises(ValueError, match="length"):
        merge_attentions([na_out], [na_lse])


# ------------------------------------------------------------------------------------------ arguments


def test_feature_argument_errors():
    x = _inputs((6, 6), 4, 2, 4, 4, 3, extra=2)
    q, k, v, ak, av = x["q"], x["k"], x["v"], x["ak"], x["av"]
    with pytest.raises(ValueError, match="together"):
        na2d(q, k, v, 3, additional_keys=ak)
    with pytest.raises(ValueError, match="additional_keys"):
        na2d(q, k, v, 3, additional_keys=ak[:, :, :1], additional_values=av)
    with pytest.raises(ValueError, match="additional_values"):
        na2d(q, k, v, 3, additional_keys=ak, additional_values=av[..., :3])
    with pytest.raises(ValueError, match="same number"):
        na2d(q, k, v, 3, additional_keys=ak, additional_values=av[:, :1])
    with pytest.raises(ValueError, match="additional_keys"):
        na2d(q, k, v, 3, additional_keys=ak[0], additional_values=av)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        na2d(q[..., :3, :], k, v, 3)
    with pytest.raises(ValueError, match="return_lse"):
        na2d(q, k, v, 3, return_lse=1)


# ------------------------------------------------------------------------------------------ natten 0.21


NATTEN_FEATURE_CASES = [
    # spatial, heads, kv_heads, kernel, stride, dilation, causal, extra, return_lse
    ((6, 7), 4, 4, 3, 1, (1, 2), False, 3, True),
    ((7, 6), 4, 2, 3, 2, 1, (True, False), 0, True),
    ((13,), 2, 1, 5, 1, 2, True, 2, True),
    ((4, 5, 4), 2, 2, 3, 1, 1, (False, False, True), 2, False),
]


@pytest.mark.natten
@pytest.mark.parametrize("spatial,h,hk,kk,s,d,c,extra,lse", NATTEN_FEATURE_CASES)
def test_features_equal_natten(spatial, h, hk, kk, s, d, c, extra, lse):
    """NATTEN 0.21.7 (its CPU path: flex attention, forward only) for every feature it shares: extra keys,
    logsumexp, GQA / MQA (NATTEN has no RPB and, on CPU, no value head_dim != qk head_dim)."""
    import natten

    x = _inputs(spatial, h, hk, 8, 8, kk, rpb=False, extra=extra, B=1, dtype=torch.float32)
    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[len(spatial)]
    kw = dict(kernel_size=kk, stride=s, dilation=d, is_causal=c, additional_keys=x["ak"],
              additional_values=x["av"], return_lse=lse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = fn(x["q"], x["k"], x["v"], **kw)
        via_backend = FNS[len(spatial)](x["q"], x["k"], x["v"], backend="natten", **kw)
    want = want if lse else (want,)
    for be in ("reference", "torch"):
        got = FNS[len(spatial)](x["q"], x["k"], x["v"], backend=be, **kw)
        got = got if lse else (got,)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    for a, b in zip(via_backend if lse else (via_backend,), want):
        torch.testing.assert_close(a, b)


@pytest.mark.natten
def test_merge_attentions_equals_natten():
    import natten

    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(2, 10, 2, 8, generator=g) for _ in range(3)]
    lses = [torch.randn(2, 10, 2, generator=g) for _ in range(3)]
    want = natten.merge_attentions(outs, lses, torch_compile=False, use_autograd_fix=False)
    got = merge_attentions(outs, lses)
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------ split calls


SPLIT_CASES = [
    ((9, 11), 2, 2, 3, 1, 2, False),
    ((8, 7), 4, 2, (3, 5), (2, 1), 1, (True, False)),
    ((17,), 2, 1, 5, 2, 3, True),
    ((5, 6, 4), 2, 2, 3, (1, 1, 2), (1, 2, 1), (False, True, False)),
]


@pytest.mark.parametrize("spatial,h,hk,kk,s,d,c", SPLIT_CASES)
def test_logits_softmax_av_equals_na(spatial, h, hk, kk, s, d, c):
    """softmax(na*_logits) then na*_av is na*d (NATTEN's split QK / AV calls), with RPB, causal, stride, GQA."""
    n = len(spatial)
    x = _inputs(spatial, h, hk, 4, 3, kk, rpb=True)
    kw = dict(stride=s, dilation=d, is_causal=c)
    logits = {1: na1d_logits, 2: na2d_logits, 3: na3d_logits}[n](x["q"], x["k"], kk, rpb=x["rpb"], **kw)
    assert logits.shape == (2, h, *spatial, math.prod(_per_axis(kk, n)))
    out = {1: na1d_av, 2: na2d_av, 3: na3d_av}[n](logits.softmax(-1), x["v"], kk, **kw)
    want = FNS[n](x["q"], x["k"], x["v"], kk, rpb=x["rpb"], backend="reference", **kw)
    torch.testing.assert_close(out, want)


def test_av_gradcheck_and_errors():
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(1, 2, 5, 6, 9, generator=g, dtype=torch.float64).requires_grad_()
    value = torch.randn(1, 5, 6, 1, 3, generator=g, dtype=torch.float64).requires_grad_()
    f = lambda a, v: na2d_av(a, v, 3, dilation=(1, 2), is_causal=(True, False))  # noqa: E731
    assert torch.autograd.gradcheck(f, (attn, value))
    q = torch.randn(1, 5, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 5, 6, 1, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k: na2d_logits(q, k, 3, stride=2), (q, k))
    with pytest.raises(ValueError, match="prod\\(kernel_size\\)"):
        na2d_av(attn.detach(), value.detach(), 5)
    with pytest.raises(ValueError, match="spatial"):
        na2d_av(attn.detach()[:, :, :4], value.detach(), 3)
    with pytest.raises(ValueError, match="multiple of value heads"):
        na2d_av(attn.detach(), value.detach().expand(1, 5, 6, 3, 3), 3)
    with pytest.raises(ValueError, match="rank"):
        na1d_av(attn.detach(), value.detach(), 3)


# ------------------------------------------------------------------------------------------ ONNX


class _ExtraKV(nn.Module):
    """Neighborhood attention plus learned register tokens every query attends to."""

    def __init__(self, dim=16, heads=2, registers=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.reg = nn.Parameter(torch.randn(1, registers, 2, heads, dim // heads))
        self.rpb = nn.Parameter(0.1 * torch.randn(heads, 5, 5))

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, H, W, 3, self.heads, C // self.heads).unbind(3)
        reg = self.reg.expand(B, -1, -1, -1, -1)
        out, lse = na2d(q, k, v, 3, dilation=2, rpb=self.rpb, additional_keys=reg[:, :, 0],
                        additional_values=reg[:, :, 1], return_lse=True)
        return out.reshape(B, H, W, C), lse


def test_onnx_export_extra_keys(tmp_path):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = _ExtraKV().eval()
    x = torch.randn(1, 9, 11, 16)
    path = tmp_path / "extra.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), str(path), dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = m(x)
    for a, b in zip(got, want):
        torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=1e-4)
