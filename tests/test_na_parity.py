"""NATTEN's NeighborhoodAttention2D (<= 0.15), built through `visionattn.from_official`, against the module-only
fixtures (`na2d_*` cases of the nat and dinat families)."""
from __future__ import annotations

import pytest
import torch
from parity_utils import case_names, load_case, max_abs_diff, official_kwargs

import visionattn
from visionattn.kernels import na2d_logits
from visionattn.layers import NeighborhoodAttention2D

CASES = [(fam, name) for fam in ("nat", "dinat") for name in case_names(fam, "na2d_")]
BUILDER = "src/natten/natten2d.py:NeighborhoodAttention2D"


def test_natten_builder_registered():
    """from_official knows NATTEN's module under both families (the fixtures use it in both)."""
    assert ("nat", BUILDER) in visionattn.official_builders("nat")
    assert ("dinat", BUILDER) in visionattn.official_builders("dinat")


@pytest.mark.parametrize("family,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_na2d_parity(family, name, backend):
    meta, tensors, sd = load_case(family, name)
    assert meta["official_builder"] == BUILDER
    m = visionattn.from_official(family, BUILDER, official_kwargs(meta), sd).eval()
    assert isinstance(m, NeighborhoodAttention2D)
    assert list(m.state_dict()) == list(sd), "state-dict keys/order differ from the official module"
    visionattn.set_attn_backend(m, backend)
    x = tensors["input"]
    tol = meta["tolerance"]
    with torch.no_grad():
        out = m(x)
        q, k, _ = m.qkv(x).unflatten(-1, (3, m.num_heads, m.head_dim)).unbind(-3)
        logits = na2d_logits(q, k, m.kernel_size, dilation=m.dilation, rpb=m.rpb, scale=m.scale)
    assert max_abs_diff(out, tensors["out"]) <= tol
    assert logits.shape == tensors["attn_logits"].shape
    assert max_abs_diff(logits, tensors["attn_logits"]) <= tol
