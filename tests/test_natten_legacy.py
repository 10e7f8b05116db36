"""The NATTEN 0.17.4 emulation (visionattn.compat.natten_legacy) and its installation as `natten`.

The split ops are checked against an independent per-query transcription of NATTEN's naive-kernel index rules
(window start / end incl. causal, (key - query) / dilation + k - 1 bias index) in fp64, values and gradients;
the modules against the official module-only parity fixtures; installation in subprocesses, because pytest's
conftest imports the real natten of the environment.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parity_utils import REPO_ROOT, case_names, load_case, max_abs_diff, parity_dir

from visionattn.compat.natten_legacy import (
    NeighborhoodAttention1D,
    NeighborhoodAttention2D,
    NeighborhoodAttention3D,
    flops,
)
from visionattn.compat.natten_legacy import functional as nf
from visionattn.kernels import na1d, na2d, na3d
from visionattn.layers import NeighborhoodAttention2D as LayersNA2D

DT = torch.float64
QK = {1: nf.na1d_qk, 2: nf.na2d_qk, 3: nf.na3d_qk}
AV = {1: nf.na1d_av, 2: nf.na2d_av, 3: nf.na3d_av}
FUSED = {1: nf.na1d, 2: nf.na2d, 3: nf.na3d}
KERNEL = {1: na1d, 2: na2d, 3: na3d}

# (spatial, kernel_size, dilation, is_causal): odd and uneven maps, uneven dilation groups, per-axis settings
CASES = [
    ((11,), 3, 1, False),
    ((13,), 5, 2, False),
    ((12,), 3, 3, True),
    ((7, 9), 3, 1, False),
    ((11, 12), 5, 2, False),
    ((11, 10), (3, 5), (3, 1), False),
    ((8, 9), 3, (1, 2), (True, False)),
    ((5, 6, 7), 3, 1, False),
    ((4, 7, 6), (3, 3, 5), (1, 2, 1), (False, True, False)),
]


def _id(case):
    spatial, ks, d, c = case
    return "x".join(map(str, spatial)) + f"-k{ks}-d{d}-c{c}".replace(" ", "")


def _tup(x, n):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * n


# ---------------------------------------------------------------------------------------------------------------
# oracle: NATTEN's naive kernels, one query at a time

def _axis(L: int, k: int, d: int, causal: bool):
    """Per position: (key positions [k], valid [k]) as NATTEN's get_window_start / get_window_end."""
    ns = k // 2
    out = []
    for i in range(L):
        di, ip = i % d, i // d
        lp = (L + d - 1) // d
        lp -= 1 if di >= d - (lp * d - L) else 0
        if causal:
            s = max(ip - k + 1, 0)
        else:
            s = max(ip - ns, 0) + (ip + ns >= lp) * (lp - ip - ns - 1)
        start = s * d + di
        end = min(L, i + d) if causal else min(L, start + k * d)
        pos = [start + t * d for t in range(k)]
        out.append((pos, [p < end for p in pos]))
    return out


def _windows(spatial, ks, ds, cs):
    axes = [_axis(spatial[a], ks[a], ds[a], cs[a]) for a in range(len(spatial))]
    for idx in itertools.product(*(range(s) for s in spatial)):
        slots = []
        for t in itertools.product(*(range(k) for k in ks)):
            key = tuple(axes[a][idx[a]][0][t[a]] for a in range(len(spatial)))
            ok = all(axes[a][idx[a]][1][t[a]] for a in range(len(spatial)))
            rel = tuple((key[a] - idx[a]) // ds[a] + ks[a] - 1 for a in range(len(spatial)))
            slots.append((key, ok, rel))
        yield idx, slots


def oracle_qk(q, k, rpb, ks, ds, cs):
    """[B, h, *S, D] -> [B, h, *S, K]; masked slots -inf."""
    spatial = q.shape[2:-1]
    out = torch.full((*q.shape[:-1], math.prod(ks)), float("-inf"), dtype=q.dtype)
    for idx, slots in _windows(spatial, ks, ds, cs):
        for t, (key, ok, rel) in enumerate(slots):
            if ok:
                val = (q[(slice(None), slice(None), *idx)] * k[(slice(None), slice(None), *key)]).sum(-1)
                if rpb is not None:
                    val = val + rpb[(slice(None), *rel)]
                out[(slice(None), slice(None), *idx, t)] = val
    return out


def oracle_av(attn, v, ks, ds, cs):
    spatial = v.shape[2:-1]
    out = torch.zeros_like(v)
    for idx, slots in _windows(spatial, ks, ds, cs):
        for t, (key, ok, _) in enumerate(slots):
            if ok:
                sl = (slice(None), slice(None), *idx)
                out[sl] = out[sl] + attn[(*sl, t)].unsqueeze(-1) * v[(slice(None), slice(None), *key)]
    return out


def _inputs(spatial, ks, heads=2, dim=4, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(spatial)
    q, k, v = (torch.randn(batch, heads, *spatial, dim, generator=g, dtype=DT) for _ in range(3))
    rpb = torch.randn(heads, *(2 * kk - 1 for kk in _tup(ks, n)), generator=g, dtype=DT)
    return q, k, v, rpb


# ---------------------------------------------------------------------------------------------------------------
# split ops against the oracle

@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("with_rpb", [True, False], ids=["rpb", "norpb"])
def test_qk_matches_natten_rules(case, with_rpb):
    spatial, ks, d, c = case
    n = len(spatial)
    q, k, _, rpb = _inputs(spatial, ks)
    rpb = rpb if with_rpb else None
    got = QK[n](q, k, ks, d, is_causal=c, rpb=rpb)
    want = oracle_qk(q, k, rpb, _tup(ks, n), _tup(d, n), _tup(c, n))
    assert got.shape == want.shape
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_av_matches_natten_rules(case):
    spatial, ks, d, c = case
    n = len(spatial)
    _, _, v, _ = _inputs(spatial, ks)
    attn = torch.randn(*v.shape[:-1], math.prod(_tup(ks, n)), dtype=DT)
    attn = attn.masked_fill(torch.isinf(oracle_qk(v, v, None, _tup(ks, n), _tup(d, n), _tup(c, n))), 0.0)
    got = AV[n](attn, v, ks, d, is_causal=c)
    torch.testing.assert_close(got, oracle_av(attn, v, _tup(ks, n), _tup(d, n), _tup(c, n)), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_split_ops_equal_reference_values_and_grads(case):
    """softmax(QK(q * scale) + rpb) -> AV is the visionattn reference NA: values and every gradient incl. RPB."""
    spatial, ks, d, c = case
    n = len(spatial)
    q, k, v, rpb = _inputs(spatial, ks)
    scale = q.shape[-1] ** -0.5
    ours = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    attn = QK[n](ours[0] * scale, ours[1], ks, d, is_causal=c, rpb=ours[3]).softmax(-1)
    out = AV[n](attn, ours[2], ks, d, is_causal=c)
    ref = [t.clone().requires_grad_() for t in (q, k, v, rpb)]
    hl = [t.movedim(1, -2) for t in ref[:3]]
    want = KERNEL[n](*hl, ks, dilation=d, is_causal=c, rpb=ref[3], scale=scale, backend="reference").movedim(-2, 1)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    for a, b, name in zip(ours, ref, "qkv" + "r"):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"d{name}: {m}")


GRAD_CASES = [((9,), 3, 2, False), ((5, 6), 3, (1, 2), (True, False)), ((3, 4, 5), 3, 1, (False, False, True))]


@pytest.mark.parametrize("case", GRAD_CASES, ids=_id)
def test_split_ops_gradcheck(case):
    spatial, ks, d, c = case
    n = len(spatial)
    q, k, v, rpb = _inputs(spatial, ks, heads=1, dim=2, batch=1)
    q, k, v, rpb = (t.requires_grad_() for t in (q, k, v, rpb))
    # masked causal slots are -inf, constant in every input: compare them as 0
    assert torch.autograd.gradcheck(
        lambda a, b, r: QK[n](a, b, ks, d, is_causal=c, rpb=r).nan_to_num(neginf=0.0), (q, k, rpb))
    attn = torch.randn(*v.shape[:-1], math.prod(_tup(ks, n)), dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: AV[n](a, b, ks, d, is_causal=c), (attn, v))


def test_additional_tokens_equal_one_softmax():
    """0.17's additional_keys / additional_values: extra columns of the same softmax."""
    q, k, v, rpb = _inputs((7, 8), 3)
    ek, ev = torch.randn(2, 2, 5, 4, dtype=DT), torch.randn(2, 2, 5, 4, dtype=DT)
    logits = nf.na2d_qk(q, k, 3, 2, additional_keys=ek, rpb=rpb)
    assert logits.shape == (2, 2, 7, 8, 9 + 5)
    torch.testing.assert_close(logits[..., :9], nf.na2d_qk(q, k, 3, 2, rpb=rpb))
    torch.testing.assert_close(logits[..., 9:], torch.einsum("bhijd,bhnd->bhijn", q, ek))
    attn = logits.softmax(-1)
    out = nf.na2d_av(attn, v, 3, 2, additional_values=ev)
    want = nf.na2d_av(attn[..., :9], v, 3, 2) + torch.einsum("bhijn,bhnd->bhijd", attn[..., 9:], ev)
    torch.testing.assert_close(out, want)
    # the fused op (0.17 FNA: heads-last, extra tokens [B, N, heads, D]) is the same softmax
    fused = nf.na2d(q.movedim(1, -2), k.movedim(1, -2), v.movedim(1, -2), 3, 2, False, rpb, 1.0,
                    ek.transpose(1, 2), ev.transpose(1, 2))
    torch.testing.assert_close(fused.movedim(-2, 1), out)
    small = [torch.randn(*shape, dtype=DT, requires_grad=True) for shape in ((1, 1, 5, 5, 2), (1, 1, 3, 2), (1, 5, 5))]
    assert torch.autograd.gradcheck(lambda a, b, c: nf.na2d_qk(a, a, 3, 1, additional_keys=b, rpb=c), small)
    small_v = [torch.randn(*shape, dtype=DT, requires_grad=True) for shape in ((1, 1, 5, 5, 12), (1, 1, 5, 5, 2),
                                                                               (1, 1, 3, 2))]
    assert torch.autograd.gradcheck(lambda a, b, c: nf.na2d_av(a, b, 3, 1, additional_values=c), small_v)


def test_legacy_names_and_signatures():
    q, k, v, rpb = _inputs((10, 11), 5)
    torch.testing.assert_close(nf.natten2dqkrpb(q, k, rpb, 5, 2), nf.na2d_qk(q, k, 5, 2, rpb=rpb), rtol=0, atol=0)
    torch.testing.assert_close(nf.natten2dqk(q, k, 5, 1), nf.na2d_qk(q, k, 5, 1), rtol=0, atol=0)
    a = nf.na2d_qk(q, k, 5, 1).softmax(-1)
    torch.testing.assert_close(nf.natten2dav(a, v, 5, 1), nf.na2d_av(a, v, 5, 1), rtol=0, atol=0)
    q1, k1, v1, r1 = _inputs((13,), 3)
    torch.testing.assert_close(nf.natten1dqkrpb(q1, k1, r1, 3, 4), nf.na1d_qk(q1, k1, 3, 4, rpb=r1), rtol=0, atol=0)
    a1 = nf.natten1dqk(q1, k1, 3, 4).softmax(-1)
    torch.testing.assert_close(nf.natten1dav(a1, v1, 3, 4), nf.na1d_av(a1, v1, 3, 4), rtol=0, atol=0)
    # 3-D: 0.15's separate depth kernel/dilation
    q3, k3, v3, _ = _inputs((6, 7, 7), (5, 3, 3))
    r3 = torch.randn(2, 9, 5, 5, dtype=DT)
    torch.testing.assert_close(nf.natten3dqkrpb(q3, k3, r3, 5, 3, 1, 2),
                               nf.na3d_qk(q3, k3, (5, 3, 3), (1, 2, 2), rpb=r3), rtol=0, atol=0)
    a3 = nf.natten3dqk(q3, k3, 5, 3, 1, 2).softmax(-1)
    torch.testing.assert_close(nf.natten3dav(a3, v3, 5, 3, 1, 2), nf.na3d_av(a3, v3, (5, 3, 3), (1, 2, 2)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_fused_signature_equals_split_ops(n):
    spatial = {1: (15,), 2: (9, 8), 3: (5, 6, 5)}[n]
    q, k, v, rpb = _inputs(spatial, 3)
    # 0.17 FNA: heads-last, kernel_size, dilation, is_causal, rpb, scale positionally
    out = FUSED[n](q.movedim(1, -2), k.movedim(1, -2), v.movedim(1, -2), 3, 1, False, rpb, 0.3).movedim(-2, 1)
    want = AV[n](QK[n](q * 0.3, k, 3, 1, rpb=rpb).softmax(-1), v, 3, 1)
    torch.testing.assert_close(out, want)


def test_argument_errors():
    q, k, v, rpb = _inputs((9, 9), 3)
    with pytest.raises(ValueError, match="kernel_size"):
        nf.na2d_qk(q, k, 4)
    with pytest.raises(ValueError, match="dilation"):
        nf.na2d_qk(q, k, 3, 0)
    with pytest.raises(ValueError, match="rpb"):
        nf.na2d_qk(q, k, 3, rpb=rpb[:, :2])
    with pytest.raises(ValueError, match="attn"):
        nf.na2d_av(torch.zeros(2, 2, 9, 9, 8, dtype=DT), v, 3)
    with pytest.raises(ValueError, match="query"):
        nf.na2d_qk(q[0], k[0], 3)
    with pytest.raises(ValueError, match="kernel_size"):
        NeighborhoodAttention2D(16, 2, 6)
    with pytest.raises(ValueError, match="bias"):
        NeighborhoodAttention2D(16, 2, 3, rel_pos_bias=True, bias=False)


# ---------------------------------------------------------------------------------------------------------------
# modules

NA_CASES = [(fam, name) for fam in ("nat", "dinat") for name in case_names(fam, "na2d_")]


@pytest.mark.parametrize("family,name", NA_CASES)
def test_module_matches_official_fixture(family, name):
    """The official (NATTEN <= 0.15) module-only cases: constructor kwargs as recorded (`bias=True`), strict load,
    output and the natten2dqkrpb logits."""
    meta, tensors, sd = load_case(family, name)
    kw = meta["official_kwargs"]
    m = NeighborhoodAttention2D(**kw).eval()
    m.load_state_dict(sd, strict=True)
    assert list(m.state_dict()) == list(sd)
    x = tensors["input"]
    with torch.no_grad():
        out = m(x)
        B, H, W, C = x.shape
        qkv = m.qkv(x).reshape(B, H, W, 3, m.num_heads, m.head_dim).permute(3, 0, 4, 1, 2, 5)
        logits = nf.natten2dqkrpb(qkv[0] * m.scale, qkv[1], m.rpb, kw["kernel_size"], kw["dilation"] or 1)
    tol = meta["tolerance"]
    assert max_abs_diff(out, tensors["out"]) <= tol
    assert logits.shape == tensors["attn_logits"].shape
    assert max_abs_diff(logits, tensors["attn_logits"]) <= tol
    # the 0.17 spelling builds the same module
    kw17 = {("rel_pos_bias" if key == "bias" else key): val for key, val in kw.items()}
    m17 = NeighborhoodAttention2D(**kw17).eval()
    m17.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert max_abs_diff(m17(x), out) == 0.0


def _module_by_hand(m, x):
    """Old NATTEN's module, written out with the split ops: pad right/bottom to k*d, qkv, QK, softmax, AV, crop."""
    n = x.dim() - 2
    spatial = x.shape[1:-1]
    need = [k * d for k, d in zip(m.kernel_size, m.dilation)]
    pad = []
    for s, w in reversed(list(zip(spatial, need))):
        pad += [0, max(0, w - s)]
    xp = F.pad(x, [0, 0] + pad)
    B, C = x.shape[0], x.shape[-1]
    qkv = m.qkv(xp).reshape(B, *xp.shape[1:-1], 3, m.num_heads, m.head_dim)
    q, k, v = (t.movedim(-2, 1) for t in qkv.unbind(-3))
    attn = QK[n](q * m.scale, k, m.kernel_size, m.dilation, is_causal=m.is_causal, rpb=m.rpb).softmax(-1)
    out = AV[n](attn, v, m.kernel_size, m.dilation, is_causal=m.is_causal).movedim(1, -2)
    out = out.reshape(B, *xp.shape[1:-1], C)[(slice(None), *(slice(0, s) for s in spatial))]
    return m.proj(out)


@pytest.mark.parametrize("cls,shape,ks,d", [
    (NeighborhoodAttention1D, (2, 11, 16), 5, 2),  # 11 >= 5 * 2: no padding
    (NeighborhoodAttention1D, (2, 7, 16), 5, 2),  # padded to 10
    (NeighborhoodAttention2D, (2, 5, 9, 16), 3, 2),  # H padded to 6
    (NeighborhoodAttention3D, (1, 4, 5, 6, 16), (3, 3, 5), (1, 2, 1)),  # Y padded to 6
    (NeighborhoodAttention3D, (1, 2, 5, 4, 16), 3, 1),  # X padded to 3
])
def test_module_equals_split_ops_with_small_map_padding(cls, shape, ks, d):
    m = cls(16, 2, ks, d, rel_pos_bias=True).double().eval()
    x = torch.randn(*shape, dtype=DT)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _module_by_hand(m, x))


def test_module_backward_reaches_every_parameter():
    m = NeighborhoodAttention3D(16, 2, 3, (1, 1, 2), rel_pos_bias=True).double()
    x = torch.randn(1, 4, 5, 7, 16, dtype=DT, requires_grad=True)
    m(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert x.grad is not None


def test_module_is_the_layers_module():
    m = NeighborhoodAttention2D(32, 4, 5, 2, rel_pos_bias=True).eval()
    ref = LayersNA2D(32, 4, kernel_size=5, dilation=2).eval()
    ref.load_state_dict(m.state_dict(), strict=True)
    assert isinstance(m, LayersNA2D)
    x = torch.randn(2, 7, 12, 32)  # 7 < 10: padded
    with torch.no_grad():
        assert max_abs_diff(m(x), ref(x)) == 0.0
    assert NeighborhoodAttention2D(32, 4, 5).rpb is None  # 0.17's default: no bias table


def test_module_attention_dropout_on_the_unfused_path():
    m = NeighborhoodAttention2D(16, 2, 3, rel_pos_bias=True, attn_drop=0.5).double()
    x = torch.randn(1, 6, 7, 16, dtype=DT)
    m.eval()
    with torch.no_grad():
        clean = m(x)
        m.train()
        torch.manual_seed(3)
        dropped = m(x)
        # by hand: same RNG stream, dropout on the softmax weights
        torch.manual_seed(3)
        B, H, W, C = x.shape
        q, k, v = m.qkv(x).reshape(B, H, W, 3, 2, 8).permute(3, 0, 4, 1, 2, 5)
        attn = F.dropout(nf.na2d_qk(q * m.scale, k, 3, rpb=m.rpb).softmax(-1), 0.5, training=True)
        want = m.proj(nf.na2d_av(attn, v, 3).permute(0, 2, 3, 1, 4).reshape(B, H, W, C))
    assert max_abs_diff(dropped, clean) > 1e-3
    torch.testing.assert_close(dropped, want)


# ---------------------------------------------------------------------------------------------------------------
# FLOP counting (fvcore)

def test_fvcore_counts_module_and_split_ops():
    fvcore_nn = pytest.importorskip("fvcore.nn")

    class Split(torch.nn.Module):
        def forward(self, q, k, v, rpb):
            attn = nf.na2d_qk(q, k, 5, 1, rpb=rpb).softmax(-1)
            return nf.natten2dav(attn, v, 5, 1)

    m = NeighborhoodAttention2D(32, 4, 5, rel_pos_bias=True).eval()
    x = torch.randn(2, 9, 10, 32)
    na_macs = 2 * 4 * 90 * 25 * (8 + 8)
    linear_macs = 2 * 90 * 32 * 96 + 2 * 90 * 32 * 32
    counter = flops.add_natten_handle(fvcore_nn.FlopCountAnalysis(m, x)).unsupported_ops_warnings(False)
    assert counter.total() == na_macs + linear_macs
    ops = counter.by_operator()
    assert ops["PythonOp.FusedNeighborhoodAttention2D"] == na_macs
    q, k, v = torch.randn(3, 2, 4, 9, 10, 8).unbind(0)
    counter = flops.add_natten_handle(fvcore_nn.FlopCountAnalysis(Split(), (q, k, v, m.rpb.detach())))
    ops = counter.unsupported_ops_warnings(False).by_operator()
    assert ops["PythonOp.NeighborhoodAttention2DQKAutogradFunction"] == na_macs // 2
    assert ops["PythonOp.NeighborhoodAttention2DAVAutogradFunction"] == na_macs // 2
    assert flops.fna_flop_count(q.movedim(1, -2).shape, k.movedim(1, -2).shape, v.movedim(1, -2).shape, (5, 5),
                                (1, 1), (False, False), is_heads_last=True, return_macs=True) == na_macs
    # outside tracing the ops are plain calls (no autograd Function in eager graphs)
    assert "NeighborhoodAttention" not in type(nf.na2d_qk(q.clone().requires_grad_(), k, 5).grad_fn).__name__


def test_module_and_split_ops_export_to_onnx(tmp_path):
    ort = pytest.importorskip("onnxruntime")

    class Split(torch.nn.Module):
        def forward(self, q, k, v, rpb):
            return nf.natten2dav(nf.natten2dqkrpb(q, k, rpb, 3, 2).softmax(-1), v, 3, 2)

    m = NeighborhoodAttention2D(32, 4, 5, 2, rel_pos_bias=True).eval()
    x = torch.randn(1, 7, 13, 32)  # 7 < 10: the padded path
    q, k, v = torch.randn(3, 1, 2, 7, 9, 8).unbind(0)
    for name, model, args in (("module", m, (x,)), ("split", Split().eval(), (q, k, v, torch.randn(2, 5, 5)))):
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(model, args, dynamo=True).save(str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})[0]
        with torch.no_grad():
            assert max_abs_diff(torch.from_numpy(got), model(*args)) < 1e-5, name


# ---------------------------------------------------------------------------------------------------------------
# installation as `natten` (subprocesses: the test session has the real natten imported by conftest)

def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)


def test_install_runs_official_style_code(tmp_path):
    # a file written like the official NAT code (import natten at module level, the `context` probe, the
    # 0.17 / 0.14 keyword switch, the old functional names, fvcore handles)
    (tmp_path / "natlike.py").write_text(textwrap.dedent("""
        import natten
        from natten import NeighborhoodAttention2D as NeighborhoodAttention
        from natten.functional import natten2dqkrpb, natten2dav, na2d_qk, na2d_av
        from natten.flops import add_natten_handle
        is_natten_post_017 = hasattr(natten, "context")
        extra_args = {"rel_pos_bias": True} if is_natten_post_017 else {"bias": True}

        def build():
            return NeighborhoodAttention(dim=16, kernel_size=3, dilation=1, num_heads=2, qkv_bias=True,
                                         qk_scale=None, attn_drop=0.0, proj_drop=0.0, **extra_args)
    """))
    r = _run("""
        import json, sys
        import torch
        import visionattn.compat as compat
        natten = compat.install_natten_legacy()
        assert compat.install_natten_legacy() is natten  # idempotent
        import natlike
        m = natlike.build()
        y = m(torch.randn(1, 2, 5, 16))  # smaller than the window: padded like NATTEN <= 0.15
        import natten.functional, natten.context, natten.na2d, natten.natten2d
        loaded = sorted(k for k in sys.modules if k == "natten" or k.startswith("natten."))
        files = {k: getattr(sys.modules[k], "__file__", "") for k in loaded}
        real = [k for k, f in files.items() if "site-packages" in (f or "")]
        compat.uninstall_natten_legacy()
        after = sorted(k for k in sys.modules if k == "natten" or k.startswith("natten."))
        with compat.natten_legacy_installed() as nt:
            inside = "natten" in sys.modules and nt.__version__
        print(json.dumps(dict(post017=natlike.is_natten_post_017, shape=list(y.shape), rpb=m.rpb is not None,
                              real=real, loaded=loaded, after=after, inside=inside,
                              gone="natten" not in sys.modules, pkg=natten.__name__)))
    """, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["post017"] is True and res["rpb"] is True and res["shape"] == [1, 2, 5, 16]
    assert res["real"] == []  # no file of a real NATTEN was imported
    assert {"natten", "natten.functional", "natten.flops", "natten.context", "natten.na2d"} <= set(res["loaded"])
    assert res["after"] == [] and res["inside"] == "0.17.4" and res["gone"] is True
    assert res["pkg"] == "visionattn.compat.natten_legacy"


def test_install_refuses_when_a_real_natten_is_imported(tmp_path):
    try:
        import importlib.metadata as md

        version = md.version("natten")
    except Exception:
        pytest.skip("no real natten installed to import")
    r = _run("""
        import natten
        import visionattn.compat as compat
        try:
            compat.install_natten_legacy()
        except RuntimeError as e:
            print("REFUSED", e)
        else:
            print("INSTALLED")
        import sys
        print("SAME", sys.modules["natten"] is natten)
    """, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "REFUSED" in r.stdout and version in r.stdout
    assert "SAME True" in r.stdout


# ---------------------------------------------------------------------------------------------------------------
# the official files themselves, where a local copy exists (never committed; CI has none)

OFFICIAL = Path(os.environ.get("VISIONATTN_OFFICIAL_NAT", REPO_ROOT / ".cache" / "official" /
                               "Neighborhood-Attention-Transformer"))


@pytest.mark.slow
@pytest.mark.skipif(not (OFFICIAL / "classification" / "nat.py").is_file(),
                    reason="no local copy of the official NAT repo (.cache/official/)")
def test_official_nat_files_run_unmodified(tmp_path):
    """The unmodified official classification files on the emulation: every nat/dinat classification parity case
    (recorded with a port of NATTEN <= 0.15) and, for two small configs, logits equal to visionattn.from_official
    given the official state dict (a subprocess: the official files also register timm models)."""
    root = parity_dir()
    if root is None:
        pytest.skip("parity fixtures not found")
    r = _run(f"""
        import importlib.util, json, sys
        from pathlib import Path
        import torch
        from safetensors.torch import load_file
        import visionattn
        from visionattn.compat import install_natten_legacy
        install_natten_legacy()
        cls_dir = Path({str(OFFICIAL / "classification")!r})
        mods = {{}}
        for name in ("nat", "dinat", "dinats", "isotropic"):  # dinat.py / isotropic.py import their siblings
            spec = importlib.util.spec_from_file_location(name, cls_dir / f"{{name}}.py")
            mods[name] = sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mods[name])
        out = {{}}
        for path in sorted([*Path({str(root)!r}).glob("nat/*.json"), *Path({str(root)!r}).glob("dinat/*.json")]):
            meta = json.loads(path.read_text())
            file, cls = meta["official_builder"].split(":")
            if not file.startswith("classification/"):
                continue
            kw = {{}}
            for k, v in meta["official_kwargs"].items():
                if isinstance(v, str) and v.startswith("default") and v.endswith("not passed"):
                    continue
                if k == "layer":
                    v = (mods["dinats"].NATransformerLayer if "NATransformer" in v
                         else mods["isotropic"].VisionTransformerLayer)
                kw[k] = v
            t = load_file(str(path.with_suffix(".safetensors")))
            model = getattr(mods[Path(file).stem], cls)(**kw).eval()
            model.load_state_dict({{k[11:]: v for k, v in t.items() if k.startswith("state_dict.")}}, strict=True)
            with torch.no_grad():
                out[path.stem] = (model(t["input"]) - t["logits"]).abs().max().item() / meta["tolerance"]
        cfgs = {{
            "nat": (mods["nat"].NAT, "classification/nat.py:NAT",
                    dict(embed_dim=32, mlp_ratio=2.0, depths=[1, 1, 2, 1], num_heads=[2, 2, 4, 4], kernel_size=5,
                         num_classes=10)),
            "dinat": (mods["dinat"].DiNAT, "classification/dinat.py:DiNAT",
                      dict(embed_dim=32, mlp_ratio=2.0, depths=[1, 2, 2, 1], num_heads=[2, 2, 4, 4], kernel_size=3,
                           dilations=[[1], [1, 4], [2, 1], [1]], num_classes=10)),
        }}
        for fam, (cls, builder, kw) in cfgs.items():
            torch.manual_seed(0)
            off = cls(**kw).eval()
            ours = visionattn.from_official(fam, builder, kw, off.state_dict()).eval()
            x = torch.randn(2, 3, 96, 112)
            with torch.no_grad():
                out["from_official:" + fam] = (off(x) - ours(x)).abs().max().item() / 1e-4
        print(json.dumps(out))
    """, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ratios = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(ratios) >= 10
    assert all(v <= 1.0 for v in ratios.values()), ratios
