"""NAT / DiNAT / DiNAT_s / isotropic / ViT-RPB backbones: official parity, manifests, timm API, checkpoints."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from model_checks import (
    check_empty_batch,
    check_features_only,
    check_forward_intermediates,
    check_grad_checkpointing,
    check_manifest,
    check_timm_api,
)
from parity_utils import case_names, load_case, manifest_names, max_abs_diff, official_kwargs
from timm.layers import LayerScale

import visionattn
from visionattn.backbones.nat import NAT, NATIsotropic, _rpb_index, checkpoint_filter_fn
from visionattn.mm.dense import NATDense
from visionattn.official.nat import NATransformerLayer, VisionTransformerLayer

FAMILIES = ("nat", "dinat")
MODEL_CASES = [(f, c) for f in FAMILIES for c in case_names(f) if not c.startswith("na2d")]
MANIFESTS = [(f, m) for f in FAMILIES for m in manifest_names(f)]

# reduced-depth versions of the smallest variants (same code paths, CPU-friendly)
SMALL = {
    "nat_mini": dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
    "dinat_mini": dict(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8)),
    "dinat_s_tiny": dict(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8)),
    "dinat_isotropic_small": dict(embed_dim=32, depth=2, num_heads=2),
    "vitrpb_small": dict(embed_dim=32, depth=2, num_heads=2),
}
HIER = ("nat_mini", "dinat_mini", "dinat_s_tiny")
ODD = (13 * 32 + 5, 7 * 32 + 3)  # non-square, not a multiple of 32


def _run_case(family: str, name: str):
    meta, tensors, sd = load_case(family, name)
    model = visionattn.from_official(meta["family"], meta["official_builder"], official_kwargs(meta), sd).eval()
    with torch.no_grad():
        out = model(tensors["input"])
    return meta, tensors, out


@pytest.mark.parametrize("family,name", MODEL_CASES, ids=[f"{f}/{c}" for f, c in MODEL_CASES])
def test_official_parity(family, name):
    meta, tensors, out = _run_case(family, name)
    if isinstance(out, tuple):
        assert len(out) == len(meta["outputs"])
        for i, o in enumerate(out):
            ref = tensors[f"features.{i}"]
            assert o.shape == ref.shape, (i, o.shape, ref.shape)
            assert max_abs_diff(o, ref) <= meta["tolerance"], (i, max_abs_diff(o, ref))
    else:
        assert meta["outputs"] == ["logits"]
        assert out.shape == tensors["logits"].shape
        assert max_abs_diff(out, tensors["logits"]) <= meta["tolerance"]


@pytest.mark.parametrize("family,name", MANIFESTS, ids=[f"{f}/{m}" for f, m in MANIFESTS])
def test_manifest(family, name):
    check_manifest(family, name)


@pytest.mark.parametrize("name", list(SMALL))
def test_timm_api(name):
    sizes = [96, 224, ODD] if name in HIER else [96, 224]
    for size in sizes:
        check_timm_api(name, size, **SMALL[name])


def test_full_size_forward_backward_small_input():
    model = timm.create_model("dinat_mini", num_classes=3)
    out = model(torch.randn(1, 3, 96, 96))  # every dilated block and the last level are padded here
    out.sum().backward()
    assert out.shape == (1, 3)
    assert model.stages[0].blocks[1].attn.rpb.grad is not None


@pytest.mark.parametrize("name", HIER)
def test_features_only(name):
    feats = check_features_only(name, ODD, **SMALL[name])
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]
    check_features_only(name, 96, out_norms=True, **SMALL[name])


def test_features_only_isotropic():
    check_features_only("dinat_isotropic_small", (96, 128), strides=(16,) * 4, embed_dim=32, depth=12, num_heads=2)


@pytest.mark.parametrize("name", ["dinat_mini", "dinat_s_tiny", "dinat_isotropic_small"])
def test_forward_intermediates(name):
    check_forward_intermediates(name, 96, **SMALL[name])


@pytest.mark.parametrize("name", ["dinat_mini", "dinat_s_tiny", "vitrpb_small"])
def test_grad_checkpointing(name):
    size = 112 if name == "vitrpb_small" else 96
    check_grad_checkpointing(name, size, **SMALL[name])


def test_dense_features_equal_features_only():
    """The dense class and features_only(out_norms=True) give the same maps from the same weights."""
    meta, tensors, sd = load_case("dinat", "dinat_det_features")
    dense = visionattn.from_official("dinat", meta["official_builder"], official_kwargs(meta), sd).eval()
    assert isinstance(dense, NATDense)
    kw = {k: meta["official_kwargs"][k] for k in ("embed_dim", "depths", "num_heads", "dilations", "mlp_ratio")}
    feat = timm.create_model("dinat_mini", features_only=True, out_norms=True, **kw).eval()
    missing, unexpected = feat.model.load_state_dict(checkpoint_filter_fn(sd, feat.model), strict=False)
    assert not unexpected and set(missing) <= {"norm.weight", "norm.bias"}, (missing, unexpected)
    with torch.no_grad():
        for a, b in zip(feat(tensors["input"]), dense(tensors["input"])):
            assert torch.equal(a, b)



def test_dense_pretrained_path_and_frozen_stages(tmp_path):
    """The dense class loads a classification checkpoint (mmcv-style, non-strict) and freezes like Swin."""
    meta, tensors, sd = load_case("nat", "nat_mini")
    path = tmp_path / "cls.pth"
    torch.save(sd, path)
    kw = {k: meta["official_kwargs"][k] for k in ("embed_dim", "depths", "num_heads", "mlp_ratio")}
    dense = NATDense(pretrained=str(path), frozen_stages=2, **kw)
    assert "head.fc.weight" not in dense.state_dict() and "out_norms.0.weight" in dense.state_dict()
    torch.testing.assert_close(dense.stages[1].blocks[0].attn.rpb, sd["levels.1.blocks.0.attn.rpb"])
    torch.testing.assert_close(dense.stages[1].downsample.reduction.weight, sd["levels.0.downsample.reduction.weight"])
    dense.train()
    # official level 0 = our stage 0 and the downsampler that starts stage 1
    frozen = [dense.patch_embed, dense.stages[0], dense.stages[1].downsample]
    assert not any(m.training for m in frozen) and dense.stages[1].blocks.training
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in dense.stages[1].blocks.parameters())
    feats = dense(torch.randn(1, 3, 64, 96))
    assert [f.shape for f in feats] == [(1, 16 * 2 ** i, -(-16 // 2 ** i), -(-24 // 2 ** i)) for i in range(4)]

@pytest.mark.parametrize("fmt", ["pth", "envelope", "mmdet_ckpt"])
def test_pretrained_from_local_file(tmp_path, fmt):
    """timm.create_model(pretrained=True) loads an official-format file (bare / 'model' envelope / mmdet)."""
    meta, tensors, sd = load_case("nat", "nat_mini")
    kw = {k: meta["official_kwargs"][k] for k in ("embed_dim", "depths", "num_heads", "num_classes")}
    if fmt == "pth":
        obj = sd
    elif fmt == "envelope":
        obj = {"model": sd, "epoch": 3}
    else:
        obj = {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}, "meta": {"epoch": 36}}
        obj["state_dict"]["neck.lateral.weight"] = torch.zeros(2)
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    overlay = dict(file=str(path), num_classes=10)  # the file's head size (else timm drops the head)
    model = timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()
    with torch.no_grad():
        out = model(tensors["input"])
    assert max_abs_diff(out, tensors["logits"]) <= meta["tolerance"]
    # another head size: timm drops the classifier, the trunk still loads
    model = timm.create_model("nat_mini", pretrained=True, pretrained_cfg_overlay=overlay, **{**kw, "num_classes": 4})
    torch.testing.assert_close(model.stages[3].blocks[0].attn.rpb, sd["levels.3.blocks.0.attn.rpb"])


def test_rpb_resized_for_other_kernel_size():
    meta, tensors, sd = load_case("nat", "nat_k5")
    kw = {k: meta["official_kwargs"][k] for k in ("embed_dim", "depths", "num_heads", "num_classes")}
    model = NAT(kernel_size=7, **kw)
    out = checkpoint_filter_fn(sd, model)
    model.load_state_dict(out)
    src = sd["levels.2.blocks.1.attn.rpb"]
    assert out["stages.2.blocks.1.attn.rpb"].shape == (4, 13, 13)
    ref = F.interpolate(src[None], size=(13, 13), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(out["stages.2.blocks.1.attn.rpb"], ref)
    model(torch.randn(1, 3, 96, 96))


def test_vitrpb_grid_sizes():
    meta, tensors, sd = load_case("dinat", "vitrpb_isotropic")
    # the official index (stored in the fixture) is our key-minus-query index
    assert torch.equal(sd["layers.0.attn.relative_position_index"], _rpb_index((8, 8), (8, 8)))
    model = visionattn.from_official("dinat", meta["official_builder"], official_kwargs(meta), sd).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, 10)  # smaller grid: centre of the table
        with pytest.raises(ValueError, match="img_size"):
            model(torch.randn(1, 3, 72, 64))
    kw = dict(embed_dim=48, depth=2, num_heads=3, patch_size=8, num_classes=10)
    big = NATIsotropic(img_size=96, block_type="mhsa_rpb", **kw)
    big.load_state_dict(checkpoint_filter_fn(sd, big))
    assert big.blocks[0].attn.rpb.shape == (3, 23, 23)
    assert torch.equal(big.blocks[0].attn.relative_position_index, _rpb_index((12, 12), (12, 12)))
    assert big(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_isotropic_any_input_size():
    model = timm.create_model("dinat_isotropic_small", num_classes=5, **SMALL["dinat_isotropic_small"])
    for hw in [(64, 64), (100, 150), (240, 208)]:
        assert model(torch.randn(1, 3, *hw)).shape == (1, 5)


def test_attn_backend():
    torch.manual_seed(0)
    kw = dict(num_classes=5, **SMALL["dinat_mini"])
    ref = timm.create_model("dinat_mini", attn_backend="reference", **kw).eval()
    fast = timm.create_model("dinat_mini", attn_backend="torch", **kw).eval()
    fast.load_state_dict(ref.state_dict())
    assert all(m.backend == "reference" for m in ref.modules() if hasattr(m, "backend"))
    x = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-4)
        fast.set_attn_backend("reference")
        assert torch.equal(fast(x), ref(x))
    with pytest.raises(ValueError, match="attn_backend"):
        timm.create_model("nat_mini", attn_backend="cuda", **SMALL["nat_mini"])


def test_optimizer_groups_and_bad_args():
    model = timm.create_model("nat_small", **dict(SMALL["nat_mini"], num_heads=(1, 2, 4, 8)))
    nwd = model.no_weight_decay()
    assert nwd and all(n.endswith("attn.rpb") for n in nwd)
    assert len(nwd) == sum(1 for n, _ in model.named_parameters() if n.endswith("rpb"))
    assert isinstance(model.stages[0].blocks[0].ls1, LayerScale)  # NAT-Small has layer scale
    assert not isinstance(timm.create_model("dinat_small", **SMALL["nat_mini"]).stages[0].blocks[0].ls1, LayerScale)
    with pytest.raises(ValueError, match="dilations"):
        NAT(depths=(1, 1, 1, 1), dilations=[[1], [1], [1]])
    with pytest.raises(ValueError, match="global_pool"):
        NAT(global_pool="max")


@pytest.mark.gpu
@pytest.mark.parametrize("family,name", MODEL_CASES, ids=[f"{f}/{c}" for f, c in MODEL_CASES])
def test_gpu_triton_parity_and_grads(family, name):
    """On CUDA the default (triton) backend reproduces the official outputs, and its gradients match 'torch'."""
    meta, tensors, sd = load_case(family, name)
    model = visionattn.from_official(meta["family"], meta["official_builder"], official_kwargs(meta), sd)
    model = model.cuda().eval()
    x = tensors["input"].cuda()
    model.set_attn_backend("triton")
    out = model(x)
    outs = out if isinstance(out, tuple) else (out,)
    names = [f"features.{i}" for i in range(len(outs))] if isinstance(out, tuple) else ["logits"]
    for o, n in zip(outs, names):
        assert max_abs_diff(o.cpu(), tensors[n]) <= meta["tolerance"], (n, max_abs_diff(o.cpu(), tensors[n]))
    sum(o.square().mean() for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_attn_backend("torch")
    out = model(x)
    sum(o.square().mean() for o in (out if isinstance(out, tuple) else (out,))).backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-4, rtol=1e-3, msg=n)


NAT_VARIANTS = ["nat_base", "nat_isotropic_base", "nat_isotropic_small", "nat_mini", "nat_small", "nat_tiny"]
DINAT_VARIANTS = [
    "dinat_base", "dinat_isotropic_base", "dinat_isotropic_small", "dinat_large", "dinat_large_384",
    "dinat_large_384_11x11", "dinat_mini", "dinat_s_base", "dinat_s_large", "dinat_s_large_384", "dinat_s_small",
    "dinat_s_tiny", "dinat_small", "dinat_tiny", "vitrpb_base", "vitrpb_small",
]


def test_registered_names_and_families():
    """Every variant is registered under its family (isotropic NAT is `nat`); a lost registration fails."""
    assert visionattn.list_models("nat") == NAT_VARIANTS
    assert visionattn.list_models("dinat") == DINAT_VARIANTS
    assert {m for _, m in MANIFESTS} <= set(NAT_VARIANTS + DINAT_VARIANTS)
    for name in NAT_VARIANTS + DINAT_VARIANTS:
        cfg = timm.get_pretrained_cfg(name).to_dict()
        assert cfg["url"].startswith("https://shi-labs.com/") and cfg["license"] == "mit", name


def test_timm_module_names():
    """State-dict names follow timm (stages.i.downsample at the start of stage i, ls1.gamma, head.fc); the
    official names map onto them through the filter."""
    sd = timm.create_model("nat_small", **dict(SMALL["nat_mini"], num_heads=(1, 2, 4, 8))).state_dict()
    assert "stages.1.downsample.reduction.weight" in sd and "stages.0.downsample.reduction.weight" not in sd
    assert "stages.0.blocks.0.ls1.gamma" in sd and "head.fc.weight" in sd
    assert not any(k.startswith(("levels.", "layers.")) or "gamma1" in k for k in sd)
    iso = timm.create_model("vitrpb_small", **SMALL["vitrpb_small"]).state_dict()
    assert "blocks.1.attn.rpb" in iso and "head.weight" in iso
    assert not any(k.endswith("relative_position_index") for k in iso)  # non-persistent, rebuilt from img_size
    dense = timm.create_model("dinat_s_tiny", out_norms=(1, 3), **SMALL["dinat_s_tiny"]).state_dict()
    assert "out_norms.1.weight" in dense and "out_norms.3.weight" in dense and "out_norms.0.weight" not in dense
    assert "stages.2.downsample.reduction.weight" in dense


def test_official_isotropic_layer_classes():
    """The official isotropic constructor's `layer` argument takes the two official layer classes (objects);
    each is also a block with the official signature."""
    kw = dict(img_size=64, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5)
    na = visionattn.from_official("dinat", "classification/isotropic.py:NATIsotropic",
                                  dict(kw, layer=NATransformerLayer, kernel_size=5, dilation=2))
    assert na.block_type == "na" and na.blocks[1].attn.dilation == (2, 2)
    rpb = visionattn.from_official("dinat", "classification/isotropic.py:NATIsotropic",
                                   dict(kw, layer=VisionTransformerLayer, kernel_size=None, dilation=None))
    assert rpb.block_type == "mhsa_rpb" and rpb.blocks[0].attn.rpb.shape == (3, 15, 15)
    with pytest.raises(ValueError, match="layer"):
        visionattn.from_official("dinat", "classification/isotropic.py:NATIsotropic",
                                 dict(kw, layer="NATransformerLayer"))
    block = NATransformerLayer(dim=32, num_heads=2, kernel_size=3, dilation=2, input_size=8, drop=0.0)
    assert block(torch.randn(1, 8, 8, 32)).shape == (1, 8, 8, 32)
    layer = VisionTransformerLayer(dim=32, input_size=4, num_heads=2, kernel_size=7, dilation=None)
    assert layer(torch.randn(1, 4, 4, 32)).shape == (1, 4, 4, 32)


def test_dense_pretrained_must_match(tmp_path):
    """The dense backbones' `pretrained=PATH` goes through the filter and refuses a file of another model."""
    meta, tensors, sd = load_case("nat", "nat_mini")
    kw = {k: meta["official_kwargs"][k] for k in ("embed_dim", "depths", "num_heads", "mlp_ratio")}
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(RuntimeError, match="does not match"):
        NATDense(pretrained=str(path), **kw)


@pytest.mark.parametrize("name", list(SMALL))
def test_batch_zero(name):
    """An empty batch gives an empty result, like every torch op (logits and features)."""
    check_empty_batch(name, 96, **SMALL[name])


def test_set_attn_backend_validates():
    model = timm.create_model("dinat_mini", **SMALL["dinat_mini"])
    with pytest.raises(ValueError, match="backend"):
        model.set_attn_backend("cuda")
    assert {m.backend for m in visionattn.utils.attn_modules(model)} == {"auto"}  # nothing changed
    visionattn.set_attn_backend(model, "reference")
    assert {m.backend for m in visionattn.utils.attn_modules(model)} == {"reference"}
    vit = timm.create_model("vitrpb_small", **SMALL["vitrpb_small"])
    with pytest.raises(ValueError, match="no attention module"):
        visionattn.set_attn_backend(vit, "torch")
