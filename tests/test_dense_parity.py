"""The zoo's dense backbones compute the official mmdet / mmseg backbones' function (issue 24).

Fixtures: tests/fixtures/dense/<family>/<case>.{json,safetensors}, made by tools/make_dense_fixtures.py from the
official downstream backbone files run unmodified (README of that tool). Each case holds the official state dict
(official key names), and the official outputs at four input sizes (non-square multiples of 32, an image padded to
32 as mmdet pads, an odd unpadded size as mmseg's whole-image inference feeds). The backbone is built the way a
config builds it -- the registry class with `model_name`, the official arguments and
``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` -- from an mmdet-style checkpoint file (`backbone.` keys);
without mmdet/mmseg installed the dense class behind it (`visionattn.mm.dense.build_dense`) is built with the same
arguments and file. A missing
fixture fails under VISIONATTN_REQUIRE_PARITY=1 (CI), as the other parity tests.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from parity_utils import REQUIRED, ParityFixturesMissing

ROOT = Path(__file__).resolve().parent / "fixtures" / "dense"

# every case the tool makes: (family, case) -> (registry class, zoo variant)
CASES = {
    ("agent_attention", "agent_swin"): ("AgentAttentionMM", "agent_swin_t"),
    ("agent_attention", "agent_swin_mixed"): ("AgentAttentionMM", "agent_swin_b"),
    ("agent_attention", "agent_pvt"): ("AgentAttentionMM", "agent_pvt_t"),
    ("gcvit", "gcvit"): ("GCViTMM", "gcvit_tiny"),
    ("gcvit", "gcvit_ls_from_cls"): ("GCViTMM", "gcvit_small"),
    ("slab", "slab_swin"): ("SLABMM", "slab_swin_t"),
    ("slab", "swin_prepbn"): ("SLABMM", "swin_t_prepbn"),
    ("nat", "nat"): ("NATMM", "nat_mini"),
    ("dinat", "dinat"): ("DiNATMM", "dinat_mini"),
    ("dinat", "dinat_s"): ("DiNATMM", "dinat_s_tiny"),
    ("biformer", "biformer_mm"): ("BiFormerMM", "biformer_s"),
}

def _load(family: str, case: str):
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta_path = ROOT / family / f"{case}.json"
    if not meta_path.is_file():
        msg = f"dense parity fixture {meta_path} is missing (tools/make_dense_fixtures.py makes it)"
        if REQUIRED:
            raise ParityFixturesMissing(msg)
        pytest.skip(msg)
    meta = json.loads(meta_path.read_text())
    outs, sd = {}, {}
    with safe_open(str(ROOT / family / f"{case}.safetensors"), framework="pt") as f:
        for k in f.keys():
            if k.startswith("state_dict."):
                sd[k[len("state_dict."):]] = f.get_tensor(k)
            else:
                outs[k] = f.get_tensor(k)
    inputs = load_file(str(ROOT / "inputs.safetensors"))
    return meta, outs, {k: sd[k] for k in meta["state_dict_order"]}, inputs


def _backbone_kwargs(family: str, meta: dict) -> dict:
    kw = {k: v for k, v in meta["official_kwargs"].items() if k not in ("out_indices", "pretrained")}
    kw.update(meta.get("ours_kwargs", {}))
    return kw


def _has_mm() -> bool:
    try:
        import mmdet.registry  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError:
        return False
    return True


def _build(family: str, case: str, meta: dict, path: str):
    cls_name, variant = CASES[(family, case)]
    out_indices = tuple(meta["official_kwargs"].get("out_indices", (0, 1, 2, 3)))
    kw = _backbone_kwargs(family, meta)
    if _has_mm():
        from mmdet.registry import MODELS
        from mmengine.registry import DefaultScope

        import visionattn.mm

        visionattn.mm.register_all()
        with DefaultScope.overwrite_default_scope("mmdet"):
            bb = MODELS.build(dict(type=cls_name, model_name=variant, out_indices=out_indices,
                                   init_cfg=dict(type="Pretrained", checkpoint=path), **kw))
        bb.init_weights()
        return bb.eval()
    # no OpenMMLab here: the dense class behind the registry class, with the same file
    from visionattn.mm import dense

    return dense.build_dense(variant, out_indices=out_indices, pretrained=path, **kw).eval()


@pytest.mark.parametrize("family,case", list(CASES), ids=[c for _, c in CASES])
def test_dense_backbone_matches_official(family, case, tmp_path):
    meta, outs, sd, inputs = _load(family, case)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = tmp_path / "official.pth"
    if meta.get("from_classification_checkpoint"):
        torch.save({"state_dict": sd, "epoch": 300}, path)  # a timm-trainer classification file
    else:  # an mmdet 2.x detector checkpoint holding this backbone
        torch.save({"state_dict": {f"backbone.{k}": v for k, v in sd.items()}}, path)
    dtype = getattr(torch, meta.get("dtype", "float64").split()[0])  # the fixtures' compute dtype (see the tool)
    model = _build(family, case, meta, str(path)).to(dtype)
    tol = meta["tolerance"]
    for i, spec in enumerate(meta["inputs"]):
        x = inputs[spec["key"].split(":", 1)[1]]
        with torch.no_grad():
            ys = model(x.to(dtype))
        want = [outs[f"features.{i}.{j}"] for j in range(meta["outputs_per_input"])]
        assert len(ys) == len(want), (case, i)
        for j, (y, w) in enumerate(zip(ys, want)):
            assert y.shape == w.shape, (case, spec["image_hw"], j, tuple(y.shape), tuple(w.shape))
            err = (y.double() - w.double()).abs().max().item()
            assert err <= tol, f"{case} input {spec['image_hw']} (padded_to {spec['padded_to']}) output {j}: {err}"


def test_every_fixture_has_a_test():
    made = {(p.parent.name, p.stem) for p in ROOT.glob("*/*.json")}
    if not made and not REQUIRED:
        pytest.skip("no dense fixtures")
    assert made == set(CASES), made ^ set(CASES)


def test_fixtures_are_small():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total < 16 * 2 ** 20, total


if os.environ.get("VISIONATTN_DENSE_FIXTURES_ONLY"):  # pragma: no cover - a switch for the tool's self-check
    pass
