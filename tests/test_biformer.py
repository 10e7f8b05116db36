"""BiFormer backbones (backbones/biformer.py): official parity, checkpoints, the timm API, input sizes."""
from __future__ import annotations

import argparse

import pytest
import timm
import torch
from model_checks import (
    check_empty_batch,
    check_features_only,
    check_forward_intermediates,
    check_grad_checkpointing,
    check_manifest,
    check_timm_api,
    count_params,
)
from parity_utils import (
    case_names,
    load_case,
    load_manifest,
    manifest_names,
    manifest_state_dict,
    max_abs_diff,
    official_kwargs,
)
from timm.layers import LayerNorm2d
from torch import nn

import visionattn
from visionattn.backbones.biformer import BiFormer, checkpoint_filter_fn
from visionattn.mm.dense import BiFormerDense

FAMILY = "biformer"
# the fixtures' small BiFormer-T-like configuration (official names -> ours)
TINY = dict(depths=(1, 1, 2, 1), embed_dims=(32, 48, 64, 96), head_dim=16)
MODEL_CASES = [c for c in case_names(FAMILY) if not c.startswith("bra_")]


def _run(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_official_parity(case):
    meta, tensors, sd = load_case(FAMILY, case)
    model = visionattn.from_official(FAMILY, meta["official_builder"], official_kwargs(meta), sd)
    out = _run(model, tensors["input"])
    outs = out if isinstance(out, tuple) else (out,)
    for name, o in zip(meta["outputs"], outs, strict=True):
        assert o.shape == tensors[name].shape, (name, o.shape)
        diff = max_abs_diff(o, tensors[name])
        assert diff <= meta["tolerance"], (case, name, diff)


@pytest.mark.parametrize("name", manifest_names(FAMILY))
def test_manifest(name):
    check_manifest(FAMILY, name)
    if name not in ("biformer_t", "biformer_stl_nchw"):
        return  # building the large ones for real only costs time; their builders share the code paths
    man = load_manifest(FAMILY, name)
    # the official registered builder loads the same state dict strictly
    model = visionattn.from_official(FAMILY, man["official_builder"], official_kwargs(man), manifest_state_dict(man))
    assert count_params(model) == man["num_params"]


VARIANTS = ["biformer_b", "biformer_s", "biformer_stl", "biformer_stl_nchw", "biformer_t"]


def test_registered_names_and_cfgs():
    names = visionattn.list_models(FAMILY)
    assert names == VARIANTS  # a lost (or an unexpected) registration fails here
    assert set(manifest_names(FAMILY)) <= set(VARIANTS)
    for n in names:
        cfg = timm.get_pretrained_cfg(f"{n}.in1k").to_dict()
        assert cfg["url"].startswith("https://api.onedrive.com/") and cfg["license"] == "mit"
        assert cfg["crop_pct"] == 0.875 and cfg["input_size"] == (3, 224, 224)
        assert cfg["classifier"] == "head.fc" and cfg["first_conv"] == "stem.0"
    builders = {b for _, b in visionattn.official_builders(FAMILY)}
    for b in (
        "models/biformer.py:BiFormer", "models/biformer_stl.py:BiFormerSTL",
        "models/biformer_stl_nchw.py:nchwBiFormerSTL", "semantic_segmentation/models_mm/biformer_mm.py:BiFormer_mm",
        "object_detection/models_mm/biformer_mm.py:BiFormer_mm",
        *(load_manifest(FAMILY, n)["official_builder"] for n in manifest_names(FAMILY)),
        *(load_case(FAMILY, c)[0]["official_builder"] for c in MODEL_CASES),
    ):
        assert b in builders, b


@pytest.mark.parametrize("img_size", [96, 224, (13 * 32 + 5, 3 * 32)])
def test_timm_api_any_size(img_size):
    # biformer_t: auto_pad makes every size work (96 and 421x96 do not divide by n_win at some stage)
    check_timm_api("biformer_t", img_size)


def test_timm_api_stl_variants():
    check_timm_api("biformer_stl", 96, **TINY)
    check_timm_api("biformer_stl_nchw", 112, **TINY)


def test_features_only():
    feats = check_features_only("biformer_t", (160, 100))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    check_features_only("biformer_stl", 224, **TINY)
    check_features_only("biformer_stl_nchw", 224, **TINY)


def test_forward_intermediates():
    check_forward_intermediates("biformer_t", 112)
    model = timm.create_model("biformer_t", **TINY).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        nchw = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        nhwc = model.forward_intermediates(x, indices=2, output_fmt="NHWC", intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert [t.shape for t in nchw] == [(1, 48, 12, 8), (1, 96, 3, 2)]
    assert torch.equal(nhwc[1], nchw[1].permute(0, 2, 3, 1))
    assert torch.equal(early[0], nchw[0])


def test_grad_checkpointing():
    check_grad_checkpointing("biformer_t", 96)
    check_grad_checkpointing("biformer_stl_nchw", 112, **TINY)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_attn_backend_switch(backend):
    meta, tensors, sd = load_case(FAMILY, "biformer_autopad")
    kw = dict(TINY, embed_dims=(32, 48, 64, 96), n_win=5, num_classes=12)
    ref = timm.create_model("biformer_t", **kw).eval()
    ref.load_state_dict(checkpoint_filter_fn(sd, ref))
    model = timm.create_model("biformer_t", attn_backend=backend, **kw).eval()
    model.load_state_dict(checkpoint_filter_fn(sd, model))
    backends = {m.backend for m in model.modules() if hasattr(m, "backend")}
    assert backends == {backend}
    x = tensors["input"]
    torch.testing.assert_close(_run(model, x), tensors["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(_run(model, x), _run(ref, x), atol=2e-5, rtol=0)
    model.set_attn_backend("auto")
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"auto"}
    with pytest.raises(ValueError, match="backend"):
        model.set_attn_backend("cuda")


def test_attn_backend_grads_match():
    torch.manual_seed(0)
    a = timm.create_model("biformer_t", attn_backend="torch", num_classes=3, **TINY).eval()
    b = timm.create_model("biformer_t", attn_backend="reference", num_classes=3, **TINY).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 100, 84)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4, msg=n)


def test_auto_pad_identical_at_divisible_sizes():
    meta, tensors, sd = load_case(FAMILY, "biformer_t")
    strict = visionattn.from_official(FAMILY, meta["official_builder"], official_kwargs(meta), sd)
    assert not strict.stages[0].blocks[0].attn.auto_pad  # official classification setting
    padded = timm.create_model("biformer_t", num_classes=10, **TINY).eval()
    padded.load_state_dict(checkpoint_filter_fn(sd, padded))
    x = tensors["input"]
    assert torch.equal(_run(padded, x), _run(strict, x))
    with pytest.raises(ValueError, match="n_win"):
        _run(strict, torch.randn(1, 3, 96, 96))  # the official model rejects sizes that do not divide
    assert _run(padded, torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_stl_nchw_input_size():
    model = timm.create_model("biformer_stl_nchw", num_classes=5, **TINY).eval()
    assert _run(model, torch.randn(1, 3, 112, 144)).shape == (1, 5)
    with pytest.raises(ValueError, match="n_win=7"):
        _run(model, torch.randn(1, 3, 96, 96))
    small = timm.create_model("biformer_stl_nchw", num_classes=5, n_win=(7, 7, 6, 7), **TINY).eval()
    assert _run(small, torch.randn(1, 3, 96, 96)).shape == (1, 5)


def _official_file(tmp_path, sd, **extra):
    ckpt = {"model": sd, "epoch": 299, "max_accuracy": 81.4, "args": argparse.Namespace(model="biformer_tiny"), **extra}
    path = tmp_path / "biformer_official.pth"
    torch.save(ckpt, path)
    return str(path)


def test_pretrained_from_local_official_file(tmp_path):
    meta, tensors, sd = load_case(FAMILY, "biformer_t")
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = _official_file(tmp_path, sd, model_ema=ema)
    model = timm.create_model(
        "biformer_t", pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=10), num_classes=10, **TINY
    )
    # the official loader reads 'model' (not 'model_ema'); the checkpoint is not kept in pretrained_cfg
    torch.testing.assert_close(_run(model, tensors["input"]), tensors["logits"], atol=1e-4, rtol=0)
    assert "state_dict" not in model.pretrained_cfg and model.pretrained_cfg["file"] == path
    # a different class count keeps the backbone and re-initialises the classifier
    other = timm.create_model(
        "biformer_t", pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=10), num_classes=3, **TINY
    )
    assert other.get_classifier().out_features == 3
    torch.testing.assert_close(other.stem[0].weight, sd["downsample_layers.0.0.weight"])
    gray = timm.create_model(
        "biformer_t", pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=10), num_classes=10,
        in_chans=1, **TINY,
    )
    torch.testing.assert_close(gray.stem[0].weight, sd["downsample_layers.0.0.weight"].sum(1, keepdim=True))
    # the filter alone: an EMA-only checkpoint, and a classifier of another size keeps the model's own
    plain = BiFormer(num_classes=3, auto_pad=False, **TINY)
    filtered = checkpoint_filter_fn({"model_ema": ema, "epoch": 1}, plain)
    plain.load_state_dict(filtered)
    torch.testing.assert_close(plain.stem[0].bias, ema["downsample_layers.0.0.bias"])
    assert plain.head.fc.weight.shape == (3, 96)


def test_dense_backbone_from_mm_checkpoint(tmp_path):
    # the segmentation backbone's maps through timm features_only, from an mmseg-style checkpoint
    meta, tensors, sd = load_case(FAMILY, "biformer_mm_features")
    mm_ckpt = {"meta": {}, "state_dict": {f"backbone.{k}": v for k, v in sd.items()} | {"decode_head.w": torch.ones(1)}}
    torch.save(mm_ckpt, tmp_path / "mm.pth")
    feats = timm.create_model(
        "biformer_s", features_only=True, out_norms=True, pretrained=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "mm.pth")), **TINY,
    ).eval()
    with torch.no_grad():
        out = feats(tensors["input"])
    for i, o in enumerate(out):
        assert max_abs_diff(o, tensors[f"features.{i}"]) <= meta["tolerance"]
    assert not any("state_dict" in getattr(m, "pretrained_cfg", {}) for m in feats.modules())
    # the classification checkpoint loads into the dense backbone (extra norms keep their init), and back
    dense = BiFormerDense(**TINY)
    dense.load_state_dict(checkpoint_filter_fn(load_case(FAMILY, "biformer_t")[2], dense))
    cls = BiFormer(num_classes=10, **TINY)
    cls.load_state_dict(checkpoint_filter_fn(mm_ckpt, cls))


def test_dense_norm_eval():
    model = visionattn.from_official(
        FAMILY, "object_detection/models_mm/biformer_mm.py:BiFormer_mm",
        dict(depth=[1, 1, 1, 1], embed_dim=[32, 48, 64, 96], head_dim=16, qk_dims=[32, 48, 64, 96],
             topks=[1, 4, 16, -2], kv_downsample_mode="identity", n_win=4, auto_pad=True, disable_bn_grad=True),
    ).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad for m in bns)
    outs = model(torch.randn(1, 3, 64, 80))
    assert [o.shape[1:] for o in outs] == [(32, 16, 20), (48, 8, 10), (64, 4, 5), (96, 2, 3)]


def test_bad_arguments():
    for kw, match in (
        (dict(stem_type="conv"), "stem_type"),
        (dict(layout="nhwd"), "layout"),
        (dict(topks=(1, 4, 64, -2)), "topks"),
        (dict(n_win=(7, 7, 7)), "n_win"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
        (dict(topks=(1, 4, 16, -3)), "topk"),
        (dict(attn_backend="cuda"), "backend"),
    ):
        with pytest.raises(ValueError, match=match):
            BiFormer(**TINY, **kw)
    with pytest.raises(ValueError, match="kv_downsample_mode"):
        visionattn.from_official(FAMILY, "models/biformer.py:BiFormer", dict(depth=[1, 1, 1, 1]))


def test_official_registered_function_pretrained(tmp_path):
    """The official `biformer_tiny(pretrained=True, ...)` loads weights, through the same path as timm's
    `pretrained=True` (the official functions load their checkpoint; before, from_official refused)."""
    meta, tensors, sd = load_case(FAMILY, "biformer_t")
    path = _official_file(tmp_path, sd)
    model = visionattn.from_official(
        FAMILY, "models/biformer.py:biformer_tiny",
        dict(pretrained=True, pretrained_cfg_overlay=dict(file=path, num_classes=10), num_classes=10, **TINY),
    )
    assert not model.stages[0].blocks[0].attn.auto_pad  # the official classification setting
    torch.testing.assert_close(_run(model, tensors["input"]), tensors["logits"], atol=1e-4, rtol=0)


def test_official_stl_norm_layer_objects():
    """from_official takes what the official constructor takes: norm classes, not the fixtures' strings."""
    kw = dict(depth=[1, 1, 1, 1], embed_dim=[32, 48, 64, 96], head_dim=16, num_classes=4)
    bn = visionattn.from_official(FAMILY, "models/biformer_stl.py:BiFormerSTL", dict(kw, norm_layer=nn.BatchNorm2d))
    assert isinstance(bn.stem[1], nn.BatchNorm2d) and isinstance(bn.norm, nn.BatchNorm2d)
    ln = visionattn.from_official(FAMILY, "models/biformer_stl.py:BiFormerSTL",
                                  dict(kw, pre_head_norm_layer=nn.BatchNorm2d))
    assert isinstance(ln.stem[1], LayerNorm2d) and ln.stem[1].eps == 1e-6  # the official default
    assert isinstance(ln.norm, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="norm_layer"):
        visionattn.from_official(FAMILY, "models/biformer_stl.py:BiFormerSTL", dict(kw, norm_layer="nn.BatchNorm2d"))


def test_official_mm_pretrained_must_match(tmp_path):
    """BiFormer_mm(pretrained=PATH) loads through the filter; another architecture's file raises."""
    meta, tensors, sd = load_case(FAMILY, "biformer_mm_features")
    kw = official_kwargs(meta)
    good = tmp_path / "cls.pth"
    torch.save({"model": sd}, good)
    model = visionattn.from_official(FAMILY, meta["official_builder"], dict(kw, pretrained=str(good))).eval()
    for i, o in enumerate(_run(model, tensors["input"])):
        assert max_abs_diff(o, tensors[f"features.{i}"]) <= meta["tolerance"]
    bad = tmp_path / "other.pth"
    torch.save({"model": timm.create_model("resnet18").state_dict()}, bad)
    with pytest.raises(RuntimeError, match="does not match"):
        visionattn.from_official(FAMILY, meta["official_builder"], dict(kw, pretrained=str(bad)))


@pytest.mark.parametrize("name", VARIANTS)
def test_batch_zero(name):
    """An empty batch gives an empty result, like every torch op (features and logits)."""
    check_empty_batch(name, 224, **(TINY if name != "biformer_t" else {}))
