"""SLAB backbones (backbones/slab.py) and PRepBN (visionattn/layers/prepbn.py)."""
from __future__ import annotations

import copy
import math
import pickle
import re

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
)
from parity_utils import case_names, load_case, manifest_names, max_abs_diff, official_kwargs
from timm.utils.model import reparameterize_model

import visionattn
from visionattn.backbones import slab
from visionattn.checkpoint import load_state_dict_file
from visionattn.layers.prepbn import (
    ChannelAffine,
    LinearNorm,
    PRepBNScheduler,
    RepBN,
    bn_recalibration_mode,
    fold_affine_after_conv,
    prepbn_modules,
    set_prepbn_step,
)

FAMILY = "slab"
EVAL_CASES = [c for c in case_names(FAMILY) if not c.endswith("_train")]
TRAIN_CASES = [c for c in case_names(FAMILY) if c.endswith("_train")]
SKIP_OUTPUTS = {"logits_merged_official"}  # the official (buggy) fold: checked separately


def _build(name):
    meta, t, sd = load_case(FAMILY, name)
    model = visionattn.from_official(FAMILY, meta["official_builder"], official_kwargs(meta), sd)
    return meta, t, sd, model


# ------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", EVAL_CASES)
def test_parity_eval(name):
    meta, t, _, model = _build(name)
    model.eval()
    with torch.no_grad():
        y = model(t["input"])
    for out in meta["outputs"]:
        if out in SKIP_OUTPUTS:
            continue
        assert out == "logits", out
        assert max_abs_diff(y, t[out]) <= meta["tolerance"], (out, max_abs_diff(y, t[out]))
    # inference re-parameterisation keeps the function (within 1e-4) for every sub-family
    fused = copy.deepcopy(model).fuse()
    assert not any(isinstance(m, (RepBN, LinearNorm)) for m in fused.modules())
    with torch.no_grad():
        yf = fused(t["input"])
    assert max_abs_diff(yf, t["logits"]) <= 1e-4, max_abs_diff(yf, t["logits"])


def test_swin_prepbn_merge_fixes_official_bias_bug():
    meta, t, _, model = _build("swin_prepbn_merge")
    fused = reparameterize_model(model.eval())  # timm's entry point, on a copy
    with torch.no_grad():
        yf = fused(t["input"])
    assert max_abs_diff(yf, t["logits"]) <= meta["tolerance"]
    # the official merge (drops alpha * conv bias in the patch embedding) is measurably different
    assert max_abs_diff(t["logits_merged_official"], t["logits"]) > 1e-2
    # fused layout: downsample reductions gained a bias, as in the official merged state dict
    assert any(k.endswith("downsample.reduction.bias") for k in fused.state_dict())


@pytest.mark.parametrize("name", TRAIN_CASES)
def test_parity_train_step_and_bn_recalibration(name):
    meta, t, sd, model = _build(name)
    tol = meta["tolerance"]
    x = t["input"]
    start = copy.deepcopy(model.state_dict())
    # (a) one train-mode forward: lambda = iter / total_step before decrementing
    model.train()
    with torch.no_grad():
        y = model(x)
    assert max_abs_diff(y, t["logits"]) <= tol
    ours = model.state_dict()
    for out in meta["outputs"]:
        if out.startswith("state_after."):
            key = out[len("state_after."):]
            if t[out].dtype == torch.int64:
                assert torch.equal(ours[key].cpu(), t[out]), key
            else:
                assert max_abs_diff(ours[key], t[out]) <= tol, key
    model.eval()
    with torch.no_grad():
        assert max_abs_diff(model(x), t["logits_eval_after"]) <= tol
    # (b) BN recalibration (official update_model): eval model, BNs in train mode, counters untouched
    model.load_state_dict(start)
    bn_recalibration_mode(model)
    with torch.no_grad():
        y = model(x)
    assert max_abs_diff(y, t["logits_bn_recalib"]) <= tol
    ours = model.state_dict()
    for out in meta["outputs"]:
        if out.startswith("state_after_bn_recalib."):
            key = out[len("state_after_bn_recalib."):]
            if t[out].dtype == torch.int64:
                assert torch.equal(ours[key].cpu(), t[out]), key
            else:
                assert max_abs_diff(ours[key], t[out]) <= tol, key
    # (c) plain eval of the starting state
    model.load_state_dict(start)
    model.eval()
    with torch.no_grad():
        assert max_abs_diff(model(x), t["logits_eval"]) <= tol


@pytest.mark.parametrize("name", manifest_names(FAMILY))
def test_manifest(name):
    from parity_utils import load_manifest

    check_manifest(FAMILY, name, unused_official=_unused_official(name, load_manifest(FAMILY, name)))


def _unused_official(name: str, man: dict) -> list[str]:
    """Official parameters the official forward never reads: SLAB-DeiT's class token, CSwin-SLA's `scale`."""
    keys = [k for k, _, _ in man["state_dict"]]
    if name.startswith("slab_deit"):
        return ["cls_token"]
    return [k for k in keys if re.search(r"\.attns\.\d+\.scale$", k)]


@pytest.mark.parametrize("name", ["slab_deit_t", "slab_cswin_t"])
def test_unused_official_parameters_dropped(name):
    """The official tensors nobody reads are not parameters here (every parameter gets a gradient), the filter
    drops them, and the zoo model still equals the official one on everything else (see test_manifest)."""
    from parity_utils import load_manifest, manifest_state_dict

    man = load_manifest(FAMILY, name)
    unused = _unused_official(name, man)
    assert unused
    with torch.device("meta"):
        model = timm.create_model(name)
    own = model.state_dict()
    assert not any(k in own for k in unused)
    model = model.to_empty(device="cpu")
    sd = slab.checkpoint_filter_fn(manifest_state_dict(man), model)
    assert not set(unused) & set(sd) and set(sd) == set(own)


def test_every_manifest_builder_is_registered():
    from parity_utils import load_manifest

    builders = {b for _, b in visionattn.official_builders(FAMILY)}
    for name in manifest_names(FAMILY):
        assert load_manifest(FAMILY, name)["official_builder"] in builders, name
    for name in case_names(FAMILY):
        assert load_case(FAMILY, name)[0]["official_builder"] in builders, name


def test_manifest_builder_kwargs_build_the_variant():
    """from_official with a manifest's kwargs builds the registered variant (meta device, param count)."""
    from parity_utils import load_manifest

    for name in ("pvt_t_prepbn", "slab_deit_t", "slab_cswin_t", "swin_t_prepbn"):
        man = load_manifest(FAMILY, name)
        with torch.device("meta"):
            m = visionattn.from_official(FAMILY, man["official_builder"], official_kwargs(man))
        dropped = sum(math.prod(shape) for k, shape, _ in man["state_dict"] if k in _unused_official(name, man))
        assert sum(p.numel() for p in m.parameters()) + dropped == man["num_params"], name


# ------------------------------------------------------------------------------------------------- timm API

SMALL = {
    "slab_deit_t": dict(depth=2),
    "deit_t_prepbn": dict(depth=2),
    "slab_pvt_t": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    "pvt_t_prepbn": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    "slab_swin_t": dict(depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 2, 4, 8)),
    "swin_t_prepbn": dict(depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 2, 4, 8)),
    "slab_cswin_t": dict(depth=(1, 1, 1, 1), embed_dim=16),
}
OTHER_SIZE = {
    "slab_deit_t": dict(img_size=160),
    "deit_t_prepbn": dict(img_size=160),
    "slab_pvt_t": dict(img_size=160),
    "pvt_t_prepbn": dict(img_size=160),
    "slab_swin_t": dict(img_size=192),
    "swin_t_prepbn": dict(img_size=192),
    "slab_cswin_t": dict(img_size=448, la_split_size="112-56-14-7"),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_timm_api_224(name):
    check_timm_api(name, 224, **SMALL[name])


@pytest.mark.parametrize("name", list(SMALL))
def test_timm_api_other_size(name):
    kw = dict(SMALL[name], **OTHER_SIZE[name])
    if name == "slab_cswin_t":
        kw["embed_dim"] = 8
    # SLA encodings are sized at construction: the model is built at the input size
    model = check_timm_api(name, kw["img_size"], num_classes=10, **kw)
    first_conv = model.get_submodule(model.pretrained_cfg["first_conv"])
    assert first_conv.weight.grad is not None and torch.isfinite(first_conv.weight.grad).all()


@pytest.mark.parametrize("name", ["slab_pvt_t", "slab_swin_t", "slab_cswin_t"])
def test_features_and_intermediates(name):
    check_features_only(name, 224, **SMALL[name])
    check_forward_intermediates(name, 224, **SMALL[name])


def test_vit_intermediates():
    check_forward_intermediates("slab_deit_t", 224, **SMALL["slab_deit_t"])


@pytest.mark.parametrize("name", ["slab_deit_t", "slab_pvt_t", "slab_swin_t", "slab_cswin_t"])
def test_grad_checkpointing(name):
    kw = dict(SMALL[name])
    if name == "slab_cswin_t":
        kw["embed_dim"] = 8
    check_grad_checkpointing(name, 224, **kw)


def test_pvt_prepbn_runs_at_other_sizes_sla_raises():
    m = timm.create_model("pvt_t_prepbn", **SMALL["pvt_t_prepbn"], num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 256, 256)).shape == (1, 3)  # bilinear pos-embed resize, as the official PVT
    m = timm.create_model("slab_pvt_t", **SMALL["slab_pvt_t"], num_classes=3).eval()
    with pytest.raises(ValueError, match="img_size"):
        m(torch.randn(1, 3, 256, 256))


@pytest.mark.parametrize("name", list(SMALL))
def test_empty_batch(name):
    """Batch 0 (issue 15): empty logits and feature maps (failed with a reshape error before)."""
    kw = dict(SMALL[name])
    if name == "slab_cswin_t":
        kw["embed_dim"] = 8
    check_empty_batch(name, 224, **kw)


def test_every_parameter_gets_a_gradient_and_fx():
    """A plain forward+backward reaches every parameter (no frozen official leftovers); torch.fx traces."""
    for name, kw in SMALL.items():
        kw = dict(kw, embed_dim=8) if name == "slab_cswin_t" else kw
        model = timm.create_model(name, num_classes=3, **kw)
        x = torch.randn(2, 3, 224, 224)
        model(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters()), name
        model.eval()
        traced = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), model(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="attn_type"):
        timm.create_model("slab_swin_t", attn_type="LLXS")
    with pytest.raises(ValueError, match="norm_layer"):
        visionattn.from_official(FAMILY, "classification/models/slab_deit.py:VisionTransformer",
                                 {"norm_layer": torch.nn.GroupNorm, "depth": 1})
    with pytest.raises(ValueError, match="kernel_size"):
        slab.SimplifiedLinearAttention(32, 2, (4, 4), kernel_size=4)
    with pytest.raises(ValueError, match="step"):
        LinearNorm(8, step=0)
    with pytest.raises(ValueError, match="la_sr_ratios"):
        visionattn.from_official(FAMILY, "classification/models/slab_pvt.py:slab_pvt_tiny", {"la_sr_ratios": "8421"})


# ------------------------------------------------------------------------------------------------- checkpoints


def _official_deit_sd(model):
    """The official SLAB-DeiT layout: our keys plus the class token the official model keeps unused."""
    return {"cls_token": torch.zeros(1, 1, model.embed_dim), **model.state_dict()}


def _save_trainer_checkpoint(path, model_sd):
    """A file shaped like the official trainer's: model + optimizer state + a pickled yacs CfgNode config."""
    import sys
    import types

    yacs, cfgmod = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.__dict__.update(__immutable__=False, __deprecated_keys__=set(), __renamed_keys__={},
                                 __new_allowed__=False)  # as yacs does

    CfgNode.__module__ = "yacs.config"
    CfgNode.__qualname__ = "CfgNode"
    cfgmod.CfgNode = CfgNode
    sys.modules.update({"yacs": yacs, "yacs.config": cfgmod})
    try:
        cfg = CfgNode(MODEL=CfgNode(NAME="slab_deit_tiny", LA=CfgNode(KERNEL_SIZE=5)), SEED=0)
        torch.save({"model": model_sd, "optimizer": {"state": {}, "param_groups": []}, "max_accuracy": 74.3,
                    "epoch": 309, "config": cfg}, path)
    finally:
        del sys.modules["yacs"], sys.modules["yacs.config"]


def test_pretrained_file_official_envelope(tmp_path):
    """timm.create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...)) with a trainer-style file
    (pickled yacs config: loaded weights_only through a scoped inert stand-in, yacs not installed)."""
    torch.manual_seed(1)
    src = timm.create_model("slab_deit_t", depth=2)
    path = tmp_path / "slab_deit_tiny.pth"
    _save_trainer_checkpoint(path, _official_deit_sd(src))
    with pytest.raises(pickle.UnpicklingError):  # nothing is allow-listed process-wide
        torch.load(path, weights_only=True)
    cfg = load_state_dict_file(path)["config"]  # the shared loader's inert stand-in: a plain mapping
    assert cfg["MODEL"]["LA"]["KERNEL_SIZE"] == 5 and type(cfg).__module__ == "collections"
    dst = timm.create_model("slab_deit_t", depth=2, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # another number of classes: everything but the head is loaded
    dst = timm.create_model("slab_deit_t", depth=2, num_classes=7, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(dst.blocks[1].attn.positional_encoding, src.blocks[1].attn.positional_encoding)
    assert dst.head.weight.shape == (7, 192)
    other = timm.create_model("slab_deit_t", depth=2)
    visionattn.load_official(other, path)
    assert torch.equal(other.head.weight, src.head.weight)


def test_filter_resizes_positional_encodings():
    torch.manual_seed(2)
    src = timm.create_model("slab_deit_t", depth=1)
    dst = timm.create_model("slab_deit_t", depth=1, img_size=160)
    sd = slab.checkpoint_filter_fn(_official_deit_sd(src), dst)
    dst.load_state_dict(sd, strict=True)
    assert dst.blocks[0].attn.positional_encoding.shape == (1, 100, 192)
    # official Swin layout: downsample moves one stage on, masks / indices dropped
    swin = timm.create_model("slab_swin_t", depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 2, 4, 8))
    off = {}
    for k, v in swin.state_dict().items():
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        off[k] = v
    off["layers.2.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    small = timm.create_model("slab_swin_t", depths=(1, 1, 2, 1), embed_dim=32, num_heads=(1, 2, 4, 8),
                              img_size=192)
    small.load_state_dict(slab.checkpoint_filter_fn({"model": off}, small), strict=True)
    bad = {"blocks.0.attn.positional_encoding": torch.zeros(1, 195, 192)}
    with pytest.raises(ValueError, match="square"):
        slab.checkpoint_filter_fn(bad, dst)


# ------------------------------------------------------------------------------------------------- PRepBN


def test_linearnorm_schedule_and_state_dict_roundtrip():
    torch.manual_seed(0)
    m = LinearNorm(8, step=4)
    x = torch.randn(2, 5, 8)
    m.train()
    lams = []
    for _ in range(6):
        lams.append(m.ratio)
        m(x)
    assert lams == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert int(m.iter) == 0
    # counters are state: a fresh module resumes from the saved step
    m2 = LinearNorm(8, step=4)
    m2.iter.fill_(3)
    sd = m2.state_dict()
    assert {"warm", "iter", "total_step"} <= set(sd)
    m3 = LinearNorm(8, step=4)
    m3.load_state_dict(sd)
    assert m3.ratio == 0.75
    # blend value: lambda * LN + (1 - lambda) * RepBN with batch statistics
    m3.train()
    ref_ln = m3.norm1(x)
    ref_bn = m3.norm2.bn(x.reshape(-1, 8)).reshape(x.shape) + m3.norm2.alpha * x
    m3.norm2.bn.reset_running_stats()
    y = m3(x)
    torch.testing.assert_close(y, 0.75 * ref_ln + 0.25 * ref_bn)


def test_model_counters_survive_checkpoint_and_scheduler():
    model = timm.create_model("slab_deit_t", depth=1, img_size=64, patch_size=16)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    model(x)
    model(x)
    sd = model.state_dict()
    fresh = timm.create_model("slab_deit_t", depth=1, img_size=64, patch_size=16)
    fresh.load_state_dict(sd)
    for m in prepbn_modules(fresh):
        assert int(m.iter) == 60000 - 2
    sched = PRepBNScheduler(fresh)
    sched.step(30000)
    fresh(x)
    fresh(x)  # forwards no longer decrement: the scheduler owns the counter
    assert all(int(m.iter) == 30000 for m in prepbn_modules(fresh))
    sched.step()
    assert all(int(m.iter) == 29999 for m in prepbn_modules(fresh))
    assert set_prepbn_step(fresh, 10**9) == len(prepbn_modules(fresh))
    assert all(m.ratio == 0.0 for m in prepbn_modules(fresh))
    with pytest.raises(ValueError, match="step"):
        set_prepbn_step(fresh, -1)


def test_fold_after_conv_keeps_alpha_times_bias():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 2, stride=2)
    norm = RepBN(6).eval()
    norm.bn.running_mean.normal_()
    norm.bn.running_var.uniform_(0.5, 2)
    norm.alpha.data.fill_(1.7)
    x = torch.randn(2, 3, 8, 8)
    ref = norm(conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    a, b = norm.affine()
    torch.testing.assert_close(fold_affine_after_conv(conv, a, b)(x), ref, atol=1e-5, rtol=1e-5)
    assert isinstance(norm.fuse(), ChannelAffine)


def test_sla_core_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    q, k, v = (torch.rand(4, 49, 16).to(torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = slab.sla_core(q, k, v)
    assert out.dtype == torch.float32
    ref = slab.sla_core(q.float(), k.float(), v.float())
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    # both product orders agree (N small -> (QK^T)V, N large -> Q(K^T V))
    qq, kk, vv = (torch.rand(2, 300, 8, dtype=torch.float64) for _ in range(3))
    full = (qq @ kk.transpose(1, 2)) @ vv / ((qq @ kk.transpose(1, 2)).sum(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(slab.sla_core(qq, kk, vv).double(), full, atol=1e-5, rtol=1e-5)
    model = timm.create_model("slab_swin_t", **SMALL["slab_swin_t"], num_classes=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(torch.randn(1, 3, 224, 224)).float()).all()


def test_linearnorm_warmup_and_skip_flag():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    m = LinearNorm(8, warm=2, step=2).train()
    y = m(x)
    torch.testing.assert_close(y, m.norm1(x))  # LN-only warm-up, BN statistics untouched
    assert int(m.warm) == 1 and int(m.iter) == 2 and int(m.norm2.bn.num_batches_tracked) == 0
    m(x)
    assert m.ratio == 1.0 and int(m.warm) == 0
    m(x)
    m(x)
    assert int(m.iter) == 0 and int(m.norm2.bn.num_batches_tracked) == 2
    m.skip_finished_ln = True
    y = m(x)
    y.sum().backward()
    assert m.norm1.weight.grad is None  # skipped branch
    set_prepbn_step(m, 1, warm_steps=2)
    assert int(m.warm) == 1 and int(m.iter) == 2
    set_prepbn_step(m, 3, warm_steps=2)
    assert int(m.warm) == 0 and m.ratio == 0.5


def test_swin_fuse_with_padded_windows_and_sla_windows():
    """Swin at 192 px (stage-3 windows padded) and SLA stages narrower than the map (windows + shift)."""
    torch.manual_seed(0)
    for kw in (dict(img_size=192), dict(img_size=224, window_size=28)):
        model = timm.create_model("slab_swin_t", **dict(SMALL["slab_swin_t"], depths=(2, 1, 2, 1)), num_classes=5,
                                  **kw)
        for m in model.modules():
            if isinstance(m, RepBN):
                m.bn.running_mean.normal_(0, 0.1)
                m.bn.running_var.uniform_(0.8, 1.5)
                m.alpha.data.normal_(1, 0.2)
        model.eval()
        x = torch.randn(1, 3, kw["img_size"], kw["img_size"])
        with torch.no_grad():
            ref = model(x)
            out = copy.deepcopy(model).fuse()(x)
        assert max_abs_diff(out, ref) <= 1e-4


@pytest.mark.gpu
def test_sla_fp32_under_cuda_autocast_and_fused_model_on_gpu():
    torch.manual_seed(0)
    model = timm.create_model("slab_swin_t", **SMALL["slab_swin_t"], num_classes=5).cuda().eval()
    x = torch.randn(2, 3, 224, 224, device="cuda")
    seen = []
    orig = slab.sla_core

    def spy(q, k, v):
        out = orig(q, k, v)
        seen.append(out.dtype)
        return out

    slab.sla_core = spy
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            y16 = model(x).float()
    finally:
        slab.sla_core = orig
    assert seen and all(d == torch.float32 for d in seen)
    with torch.no_grad():
        y = model(x)
        yf = copy.deepcopy(model).fuse()(x)
    assert max_abs_diff(y, yf) <= 1e-3 and max_abs_diff(y, y16) <= 5e-2


def test_recalibrate_bn_only_touches_bn_statistics():
    from visionattn.layers.prepbn import recalibrate_bn

    torch.manual_seed(0)
    model = timm.create_model("slab_deit_t", depth=1, img_size=64, num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_bn(model, [torch.randn(2, 3, 64, 64) for _ in range(2)])
    after = model.state_dict()
    assert not model.training
    for k, v in before.items():
        changed = not torch.equal(v, after[k])
        assert changed == (k.endswith(("running_mean", "running_var", "num_batches_tracked"))), k


def test_repbn_eval_affine_cache_follows_parameters():
    """Eval RepBN runs a cached a*x+b: equal to BN + alpha*x, refreshed after in-place changes, loads and dtype
    moves, bypassed when a gradient can reach the parameters and in BN recalibration; no state-dict entry."""
    torch.manual_seed(0)
    m = RepBN(8)
    with torch.no_grad():
        m.bn.running_mean.normal_()
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.normal_()
        m.alpha.fill_(0.7)
    m.eval()
    x = torch.randn(2, 5, 8)

    def ref(mod, t):
        return mod.bn(t.reshape(-1, 8)).reshape(t.shape) + mod.alpha * t

    keys = set(m.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(m, x))
        m.alpha.fill_(0.2)  # in place: the version counter invalidates the cache
        torch.testing.assert_close(m(x), ref(m, x))
    m.load_state_dict({k: v * 2 if v.is_floating_point() else v for k, v in m.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(m, x))
    y = m(x).sum()  # grad enabled: the gradient reaches alpha and the BN affine
    y.backward()
    assert m.alpha.grad is not None and m.bn.weight.grad is not None
    m.double()
    with torch.no_grad():
        torch.testing.assert_close(m(x.double()), ref(m, x.double()))
    assert set(m.state_dict()) == keys
    bn_recalibration_mode(m)  # eval RepBN, training BatchNorm: statistics must still update
    before = m.bn.running_mean.clone()
    with torch.no_grad():
        m(x.double() + 3)
    assert not torch.equal(before, m.bn.running_mean)
