"""NeighborhoodAttention2D against the official NATTEN (<= 0.15) module-only fixtures (`na2d_*` cases)."""
from __future__ import annotations

import pytest
import torch
from parity_utils import case_names, load_case, max_abs_diff

from visionattn.kernels import na2d_logits
from visionattn.layers import NeighborhoodAttention2D

CASES = [(fam, name) for fam in ("nat", "dinat") for name in case_names(fam, "na2d_")]


def _build(kw: dict) -> NeighborhoodAttention2D:
    return NeighborhoodAttention2D(
        kw["dim"], kw["num_heads"], kernel_size=kw["kernel_size"], dilation=kw.get("dilation") or 1,
        rpb=kw.get("bias", kw.get("rel_pos_bias", True)), qkv_bias=kw.get("qkv_bias", True),
        qk_scale=kw.get("qk_scale"), attn_drop=kw.get("attn_drop", 0.0), proj_drop=kw.get("proj_drop", 0.0),
    )


@pytest.mark.skipif(not CASES, reason="parity fixtures not found")
@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_na2d_parity(family, name, backend):
    meta, tensors, sd = load_case(family, name)
    m = _build(meta["official_kwargs"]).eval()
    assert list(m.state_dict()) == list(sd), "state-dict keys/order differ from the official module"
    m.load_state_dict(sd, strict=True)
    m.backend = backend
    x = tensors["input"]
    tol = meta["tolerance"]
    with torch.no_grad():
        out = m(x)
        B, H, W, C = x.shape
        q, k, _ = m.qkv(x).reshape(B, H, W, 3, m.num_heads, C // m.num_heads).unbind(3)
        logits = na2d_logits(q, k, m.kernel_size, dilation=m.dilation, rpb=m.rpb, scale=m.scale)
    assert max_abs_diff(out, tensors["out"]) <= tol
    assert logits.shape == tensors["attn_logits"].shape
    assert max_abs_diff(logits, tensors["attn_logits"]) <= tol
