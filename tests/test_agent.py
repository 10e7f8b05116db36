"""Agent Attention backbones (Agent-DeiT / PVT / Swin / CSwin): parity with the official code, manifests, timm API."""
from __future__ import annotations

import copy
import sys
import types

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

import visionattn
from visionattn._environment import override
from visionattn.backbones import agent as A

FAMILY = "agent_attention"

# small configs of each family (the official builders' arguments), for the fast API checks
TINY = {
    "agent_deit_s": dict(depth=2, embed_dim=48, num_heads=3),
    "agent_pvt_t": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    "agent_swin_b": dict(depths=(1, 1, 3, 1), embed_dim=16, num_heads=(1, 2, 4, 8)),
    "agent_cswin_t": dict(depth=(1, 1, 2, 1), embed_dim=16, num_heads=(1, 2, 4, 8)),
}


@pytest.mark.parametrize("case", case_names(FAMILY) or ["<no fixtures>"])
def test_parity(case):
    meta, tensors, sd = load_case(FAMILY, case)
    model = visionattn.from_official(FAMILY, meta["official_builder"], official_kwargs(meta), sd).eval()
    x = tensors["input"]
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
    tol = meta["tolerance"]
    assert max_abs_diff(logits, tensors["logits"]) <= tol
    if "tokens" in meta["outputs"]:
        assert max_abs_diff(feats, tensors["tokens"]) <= tol


@pytest.mark.parametrize("name", manifest_names(FAMILY) or ["<no fixtures>"])
def test_manifest(name):
    check_manifest(FAMILY, name)


@pytest.mark.parametrize("name", list(TINY))
def test_forward_backward_224(name):
    # reduced widths / depths: the full-size structures are covered by the manifests, their function by parity
    check_timm_api(name, 224, num_classes=10, **TINY[name])


@pytest.mark.parametrize("name,size", [
    ("agent_deit_s", (160, 224)),
    ("agent_pvt_t", (160, 256)),
    ("agent_swin_b", (160, 224)),
    ("agent_cswin_t", (160, 288)),
])
def test_other_size_forward_backward(name, size):
    check_timm_api(name, size, num_classes=10, **TINY[name])


@pytest.mark.parametrize("name", ["agent_pvt_t", "agent_swin_b", "agent_cswin_t"])
def test_features_only_hierarchical(name):
    check_features_only(name, (128, 160), **TINY[name])


def test_features_only_deit():
    feats = check_features_only("agent_deit_s", 96, strides=(16, 16, 16), **TINY["agent_deit_s"] | dict(depth=3))
    assert all(f.shape[1] == 48 for f in feats)


@pytest.mark.parametrize("name", list(TINY))
def test_forward_intermediates(name):
    check_forward_intermediates(name, 128, **TINY[name])


@pytest.mark.parametrize("name", list(TINY))
def test_grad_checkpointing(name):
    check_grad_checkpointing(name, 96, **TINY[name])


@pytest.mark.parametrize("name,size_a,size_b", [
    ("agent_deit_s", 224, 160),
    ("agent_swin_b", 224, 288),
    ("agent_cswin_t", 224, 448),
    ("agent_pvt_t", 224, 160),
])
def test_agent_bias_interpolation(name, size_a, size_b):
    """A model made at size_a, loaded into one made at size_b: biases resized, runs, and (where both resize the
    same way) equals the size_a model run at size_b."""
    torch.manual_seed(0)
    src = timm.create_model(name, num_classes=5, img_size=size_a, **TINY[name]).eval()
    dst = timm.create_model(name, num_classes=5, img_size=size_b, **TINY[name]).eval()
    sd = A.checkpoint_filter_fn(src.state_dict(), dst)
    dst.load_state_dict(sd, strict=True)
    name_ah = next(k for k in sd if k.endswith("ah_bias"))
    assert sd[name_ah].shape == dst.state_dict()[name_ah].shape != src.state_dict()[name_ah].shape
    x = torch.randn(1, 3, size_b, size_b)
    with torch.no_grad():
        out_dst = dst(x)
        out_src = src(x)  # run-time interpolation of the same tables
    assert torch.isfinite(out_dst).all()
    if name == "agent_pvt_t":
        # run time uses the official PVT forward's bilinear pos-embed resize, loading the fine-tune loader's bicubic
        assert max_abs_diff(out_src, out_dst) < 0.5
    else:
        assert max_abs_diff(out_src, out_dst) < 1e-4
    # the agent biases themselves are resized identically
    m = dst.get_submodule(name_ah.rsplit(".", 1)[0])
    ref = A.resize_agent_bias(src.get_submodule(name_ah.rsplit(".", 1)[0]).ah_bias, "ah_bias", (m.ah_bias.shape[3], 0))
    torch.testing.assert_close(m.ah_bias, ref)


def test_resize_agent_bias_identity_and_axes():
    t = torch.randn(1, 2, 9, 14, 1)
    assert A.resize_agent_bias(t, "ah_bias", (14, 3)) is t
    r = A.resize_agent_bias(t, "ah_bias", (28, 28))
    assert r.shape == (1, 2, 9, 28, 1)
    w = torch.randn(1, 2, 1, 14, 9)
    assert A.resize_agent_bias(w, "wa_bias", (5, 7)).shape == (1, 2, 1, 7, 9)
    const = torch.full((1, 1, 4, 1, 6), 3.0)
    torch.testing.assert_close(A.resize_agent_bias(const, "aw_bias", (1, 11)), torch.full((1, 1, 4, 1, 11), 3.0))


def _fake_yacs():
    """Install a throwaway `yacs.config.CfgNode` so a test can write an official-style trainer checkpoint."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__ = "yacs.config"
    CfgNode.__qualname__ = "CfgNode"
    config.CfgNode = CfgNode
    yacs.config = config
    return {"yacs": yacs, "yacs.config": config}, CfgNode


def test_pretrained_official_trainer_file(tmp_path, monkeypatch):
    """timm.create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...)) on an official-format trainer
    checkpoint (yacs config inside, weights under 'model', EMA copy beside) reproduces the official logits."""
    if not case_names(FAMILY, "agent_swin_t"):
        pytest.skip("parity fixtures not found")
    meta, tensors, sd = load_case(FAMILY, "agent_swin_t")
    mods, cfgnode = _fake_yacs()
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)
    ckpt = {
        "model": sd, "state_dict_ema": {k: torch.zeros_like(v) for k, v in sd.items()}, "epoch": 299,
        "max_accuracy": 82.6, "config": cfgnode({"MODEL": cfgnode({"TYPE": "agent_swin"})}),
    }
    path = tmp_path / "agent_swin_t_max_acc.pth"
    torch.save(ckpt, path)
    for k in mods:
        monkeypatch.delitem(sys.modules, k)
    kw = meta["official_kwargs"]
    model = timm.create_model(
        "agent_swin_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), num_classes=10,
        img_size=kw["img_size"], patch_size=kw["patch_size"], embed_dim=kw["embed_dim"], depths=kw["depths"],
        num_heads=kw["num_heads"], window_size=7,
    ).eval()
    assert model.pretrained_cfg["file"] == str(path)
    with torch.no_grad():
        assert max_abs_diff(model(tensors["input"]), tensors["logits"]) <= meta["tolerance"]


def test_filter_envelopes_and_prefix():
    model = timm.create_model("agent_pvt_t", num_classes=3, **TINY["agent_pvt_t"])
    sd = model.state_dict()
    for wrapped in ({"model": sd}, {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
                    {f"module.{k}": v for k, v in sd.items()}):
        out = A.checkpoint_filter_fn(wrapped, model)
        assert set(out) == set(sd)


def test_official_builders_registered():
    import json

    from parity_utils import parity_dir

    root = parity_dir()
    if root is None:
        pytest.skip("parity fixtures not found")
    builders = {b for _, b in visionattn.official_builders(FAMILY)}
    for p in list((root / FAMILY).glob("*.json")) + list((root / FAMILY / "manifests").glob("*.json")):
        assert json.loads(p.read_text())["official_builder"] in builders, p.name


@pytest.mark.parametrize("name", list(TINY) + ["agent_swin_t"])
def test_empty_batch(name):
    """Batch 0 (issue 15): empty logits and feature maps, as every torch op (failed with a reshape error before)."""
    kw = TINY.get(name, TINY["agent_swin_b"])
    check_empty_batch(name, 224, **kw)


def test_every_parameter_gets_a_gradient_and_fx():
    """All four hosts: a plain forward+backward reaches every parameter; torch.fx traces (shape checks and
    grid-dependent resizes are FX leaves) and the traced model equals eager."""
    for name, kw in TINY.items():
        model = timm.create_model(name, num_classes=3, **kw)
        x = torch.randn(2, 3, 128, 128)
        model(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters()), name
        model.eval()
        traced = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            torch.testing.assert_close(traced(x), model(x))


def test_bias_cache_follows_parameter_changes():
    """Inference reuses the resized bias tables; a changed parameter (in place or replaced) is seen."""
    model = timm.create_model("agent_pvt_t", num_classes=3, **TINY["agent_pvt_t"]).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a = model(x)
        assert torch.equal(model(x), a)
        attn = model.stages[0].blocks[0].attn
        attn.an_bias.add_(1.0)  # in place (version counter)
        b = model(x)
        model.load_state_dict(model.state_dict())  # copy_ into the same storage
        assert torch.equal(model(x), b)
        attn.na_bias = torch.nn.Parameter(attn.na_bias + 0.5)  # replaced
        c = model(x)
    assert not torch.equal(a, b) and not torch.equal(b, c)
    fresh = timm.create_model("agent_pvt_t", num_classes=3, **TINY["agent_pvt_t"]).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), c)


def test_fused_linear_takes_onednn_where_it_is_faster():
    """oneDNN's matmul only on AVX-512 CPUs (on AVX2 MKL's F.linear is faster); F.linear elsewhere."""
    from torch.profiler import ProfilerActivity, profile

    from visionattn.layers import fused

    assert fused.use_onednn() == torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    lin = fused.FusedLinear(8, 4).eval()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        lin(torch.randn(3, 8))
    names = {e.name for e in prof.events()}
    assert ("mkldnn::_linear_pointwise" in names) == (fused.use_onednn() and fused._LINEAR_POINTWISE is not None)


@pytest.fixture
def onednn_forced():
    with override(onednn_linear=True):
        yield


def test_fused_linear_fast_path(onednn_forced):
    """The entrypoint's model runs its Linear layers and MLPs (GELU fused) through oneDNN's matmul in fp32 CPU
    inference (forced on here, whatever the CPU); the result equals the plain modules to fp32 rounding; training,
    autograd, autocast and hooks keep the plain forward; the state dict and every parameter are the plain
    model's."""
    from torch.profiler import ProfilerActivity, profile

    from visionattn.layers import fused
    from visionattn.layers.fused import FusedLinear, FusedMlp, set_fused_linear

    torch.manual_seed(0)
    model = timm.create_model("agent_swin_b", num_classes=5, **TINY["agent_swin_b"]).eval()
    mlp = model.layers[0].blocks[0].mlp
    assert type(mlp) is FusedMlp and type(mlp.fc1) is FusedLinear and type(model.layers[0].blocks[0].attn.qkv) is \
        FusedLinear
    plain_model = set_fused_linear(copy.deepcopy(model), enable=False)
    assert not any(isinstance(m, (FusedLinear, FusedMlp)) for m in plain_model.modules())
    assert list(plain_model.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fast = model(x)
    names = {e.name for e in prof.events()}
    if fused._LINEAR_POINTWISE is not None:
        assert "mkldnn::_linear_pointwise" in names
    with torch.no_grad():
        torch.testing.assert_close(fast, plain_model(x), atol=1e-5, rtol=1e-5)
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(x), plain_model(x), atol=0, rtol=0)  # the plain path, bit for bit
    finally:
        torch.backends.mkldnn.enabled = prev
    # autograd: the modules' plain forward (their backward), same values
    t = torch.randn(3, 7, mlp.fc1.in_features, requires_grad=True)
    out = mlp(t)
    out.sum().backward()
    assert t.grad is not None and mlp.fc1.weight.grad is not None and mlp.fc2.bias.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(mlp(t), out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mlp.fc1(t[:0]), torch.nn.functional.linear(t[:0], mlp.fc1.weight, mlp.fc1.bias))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # autocast: the plain (bf16) path
        assert mlp.fc1(t).dtype == torch.bfloat16 and mlp(t).dtype == torch.bfloat16
    # hooks: the plain forward, and the hook sees the call
    seen = []
    handle = mlp.fc2.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        mlp(t)
    handle.remove()
    assert len(seen) == 1 and "aten::linear" in {e.name for e in prof.events()}
    # a Linear subclass with its own forward is not swapped and runs as itself inside a fused Mlp
    class Shifted(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    shifted_mlp = copy.deepcopy(mlp)
    shifted_mlp.fc2 = Shifted(mlp.fc2.in_features, mlp.fc2.out_features)
    set_fused_linear(shifted_mlp)
    assert type(shifted_mlp.fc2) is Shifted
    with torch.no_grad():
        ref = shifted_mlp.fc2(shifted_mlp.act(shifted_mlp.fc1(t)))
        torch.testing.assert_close(shifted_mlp(t), ref)
    # torch.utils.flop_counter counts the oneDNN op as it counts F.linear (benchmarks' GMACs under no_grad)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fast_count:
        model(x[:1])
    with FlopCounterMode(display=False) as plain_count:
        model(x[:1])
    assert fast_count.get_total_flops() == plain_count.get_total_flops() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="agent_num"):
        A.AgentAttention(16, 2, (7, 7), agent_num=10)
    with pytest.raises(ValueError, match="attn_type"):
        A.AgentSwinTransformer(attn_type="AAXB")
    with pytest.raises(ValueError, match="'M' stage"):
        A.AgentSwinTransformer(attn_type="AAMB")
    with pytest.raises(ValueError, match="la_split_size"):
        A.AgentCSWinTransformer(la_split_size="7-7-7-7", embed_dim=8, depth=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="multiples of patch_size"):
        timm.create_model("agent_pvt_t", **TINY["agent_pvt_t"])(torch.randn(1, 3, 100, 96))
    with pytest.raises(ValueError, match="multiples of patch_size"):
        timm.create_model("agent_deit_s", **TINY["agent_deit_s"])(torch.randn(1, 3, 100, 96))
    with pytest.raises(ValueError, match="agent_layer"):
        A.AgentVisionTransformer(depth=2, agent_layer=3, embed_dim=48, num_heads=3)


@pytest.mark.gpu
@pytest.mark.parametrize("case", case_names(FAMILY) or ["<no fixtures>"])
def test_parity_cuda(case):
    meta, tensors, sd = load_case(FAMILY, case)
    model = visionattn.from_official(FAMILY, meta["official_builder"], official_kwargs(meta), sd).eval().cuda()
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            feats = model.forward_features(tensors["input"].cuda())
            logits = model.forward_head(feats)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    assert max_abs_diff(logits.cpu(), tensors["logits"]) <= meta["tolerance"]
    if "tokens" in meta["outputs"]:
        assert max_abs_diff(feats.cpu(), tensors["tokens"]) <= meta["tolerance"]


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["agent_deit_s", "agent_pvt_s", "agent_swin_t", "agent_cswin_t"])
def test_full_size_amp_cuda(name):
    """Full-size model, bf16 autocast forward + backward on CUDA: finite, close to fp32."""
    torch.manual_seed(0)
    model = timm.create_model(name).cuda().eval()
    x = torch.randn(4, 3, 224, 224, device="cuda")
    with torch.no_grad():
        ref = model(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert (out.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item() + 0.05
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", manifest_names(FAMILY) or ["<no fixtures>"])
def test_official_builder_manifest_params(name):
    """visionattn.from_official with each manifest's exact builder string and kwargs gives the official count."""
    from parity_utils import load_manifest

    man = load_manifest(FAMILY, name)
    with torch.device("meta"):
        model = visionattn.from_official(FAMILY, man["official_builder"], official_kwargs(man))
    assert sum(p.numel() for p in model.parameters()) == man["num_params"]


def test_swin_window_table_resize_and_own_format():
    """A 224 / window-7 checkpoint loads into a 288 / window-9 model (relative-position tables resized); a
    checkpoint in this module's own (timm) layout passes the filter unchanged, with or without a head."""
    src = timm.create_model("agent_swin_b", num_classes=5, **TINY["agent_swin_b"]).eval()
    dst = timm.create_model("agent_swin_b", num_classes=5, img_size=288, window_size=9, **TINY["agent_swin_b"])
    sd = A.checkpoint_filter_fn(src.state_dict(), dst)
    key = next(k for k in sd if k.endswith("relative_position_bias_table"))
    assert sd[key].shape == (17 * 17, src.state_dict()[key].shape[1])
    dst.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.isfinite(dst.eval()(torch.randn(1, 3, 288, 288))).all()
    headless = timm.create_model("agent_swin_b", num_classes=0, **TINY["agent_swin_b"])
    own = headless.state_dict()
    assert A.checkpoint_filter_fn(own, headless).keys() == own.keys()


def test_token_major_inference_path_matches_heads_first(monkeypatch):
    """The per-head token-major inference path (many tokens, no autograd) equals the heads-first path."""
    torch.manual_seed(0)
    model = timm.create_model("agent_pvt_t", depths=(1, 1, 1, 1), num_classes=5).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    x = torch.randn(2, 3, 96, 128)
    calls = []
    orig = A._agent_attention_tokens
    monkeypatch.setattr(A, "_agent_attention_tokens", lambda *a: calls.append(1) or orig(*a))
    with torch.no_grad():
        monkeypatch.setattr(A, "_TOKEN_MAJOR_MIN_TOKENS", 1)
        fast = model(x)
        monkeypatch.setattr(A, "_TOKEN_MAJOR_MIN_TOKENS", 10**9)
        ref = model(x)
    assert calls
    assert max_abs_diff(fast, ref) <= 1e-5
