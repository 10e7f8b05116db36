"""timm's model contract for the zoo: what timm's own model test-suite demands of a timm model, checked here in
our words, plus PyTorch 2 graph capture (FX, torch.compile, torch.export).

Per model: the pretrained cfg is complete and true (pool_size is the real final grid at the default input size,
first_conv / classifier name real modules, ...), `output_fmt` says what `forward_features` returns, the
classifier API (reset_classifier, num_classes=0, global_pool='', forward_head(pre_logits=True)), features_only
and forward_intermediates agree with each other in every format, gradient checkpointing changes nothing, every
parameter gets a gradient, parameter grouping / no_weight_decay name real parameters, and the model traces with
torch.fx (plain `symbolic_trace` and timm's FX feature extraction) with forward and backward equal to eager.

`CI_MODELS` holds one or two small variants per own family (reduced depth / width, same layout and strides, so
every cfg fact still holds) and runs in CI; the `full` marker runs every zoo model at its registered size.
Shared by both model helpers: extend `CI_MODELS`, keep the checks.
"""
from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
from torch import nn

import visionattn

# name -> kwargs that shrink the model for CI without changing its layout, strides or default input size
CI_MODELS: dict[str, dict] = {
    "biformer_t": dict(depths=(1, 1, 2, 1), embed_dims=(32, 48, 64, 96), head_dim=16),
    "biformer_stl_nchw": dict(depths=(1, 1, 1, 1), embed_dims=(32, 48, 64, 96), head_dim=16),
    "nat_mini": dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
    "nat_isotropic_small": dict(embed_dim=32, depth=12, num_heads=2),
    "dinat_mini": dict(embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 4, 8)),
    "vitrpb_small": dict(embed_dim=32, depth=12, num_heads=2),
    "agent_pvt_t": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    "agent_deit_t": dict(depth=4),
    "slab_pvt_t": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    "slab_deit_t": dict(depth=4),
    # the Swin and CSwin hosts are shared by Agent and SLAB: one of each (shifted windows in agent_swin_s)
    "agent_swin_s": dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
    "slab_cswin_t": dict(embed_dim=16, depth=(1, 1, 1, 1)),
}
ADOPTED = ("gcvit", "shvit", "efficientvim")  # timm's own models: timm's test-suite covers them
ALL_OWN = [str(m) for m in visionattn.list_models() if m.family not in ADOPTED]
CASES = [pytest.param(n, kw, id=n) for n, kw in CI_MODELS.items()] + [
    pytest.param(n, {}, id=f"full-{n}", marks=pytest.mark.full) for n in ALL_OWN
]
BATCH = 2


def _create(name: str, kw: dict, **extra) -> nn.Module:
    return timm.create_model(name, pretrained=False, **kw, **extra)


def _input(model: nn.Module, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def _fmt(model: nn.Module) -> str:
    return getattr(model, "output_fmt", "NCHW")


def _spatial(t: torch.Tensor, fmt: str) -> tuple[int, int]:
    return tuple(t.shape[2:4]) if fmt == "NCHW" else tuple(t.shape[1:3])


def _channels(t: torch.Tensor, fmt: str) -> int:
    return t.shape[1] if fmt == "NCHW" else t.shape[-1]


def _num_prefix(model: nn.Module) -> int:
    return int(getattr(model, "num_prefix_tokens", 0) or 0)


def _load_features(fmodel: nn.Module, model: nn.Module) -> None:
    """Give a features_only wrapper (getter: `.model`, fx: `.graph_module`) the weights of `model`."""
    inner = getattr(fmodel, "model", None) or fmodel.graph_module
    missing, _ = inner.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not k.startswith("_tensor_constant")]  # constants the FX trace recorded
    assert not missing, missing


def _check_map(t: torch.Tensor, model: nn.Module, what: str):
    """`t` is an unpooled final map in the model's declared format whose grid is the cfg's pool_size."""
    fmt, pool = _fmt(model), tuple(model.pretrained_cfg["pool_size"])
    if fmt == "NLC":
        assert t.ndim == 3, (what, tuple(t.shape))
        assert t.shape[1] - _num_prefix(model) == math.prod(pool), (what, tuple(t.shape), pool)
        assert t.shape[2] == model.num_features, (what, tuple(t.shape))
        return
    assert t.ndim == 4, (what, tuple(t.shape))
    assert _spatial(t, fmt) == pool, f"{what}: grid {_spatial(t, fmt)} != pool_size {pool} ({fmt})"
    assert _channels(t, fmt) == model.num_features, (what, tuple(t.shape), fmt)


# ---------------------------------------------------------------------------------------------------------------
# pretrained cfg and the classifier API


@pytest.mark.parametrize("name,kw", CASES)
def test_default_cfg(name, kw):
    model = _create(name, kw).eval()
    cfg = model.pretrained_cfg
    assert cfg.get("architecture") == name and cfg.get("tag"), "the cfg needs a weights tag (name.tag)"
    if cfg["tag"] != "untrained":  # timm's tag for an architecture without released weights
        assert cfg.get("url") or cfg.get("hf_hub_id") or cfg.get("file"), "no weights source in the cfg"
    assert isinstance(cfg.get("license"), str) and cfg["license"]
    c, h, w = cfg["input_size"]
    assert c == 3 and h >= 32 and w >= 32
    assert cfg.get("pool_size") is not None and len(cfg["pool_size"]) == 2, "pool_size must be the final grid"
    assert 0.0 < cfg["crop_pct"] <= 1.0 and cfg["interpolation"] in ("bilinear", "bicubic", "nearest")
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3 and all(s > 0 for s in cfg["std"])
    assert cfg["num_classes"] == model.num_classes
    sd = model.state_dict()
    for conv in (cfg["first_conv"],) if isinstance(cfg["first_conv"], str) else cfg["first_conv"]:
        m = model.get_submodule(conv)
        assert isinstance(m, nn.Conv2d) and m.in_channels == 3 and f"{conv}.weight" in sd, conv
    classifier = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else cfg["classifier"]
    for cls in classifier:
        m = model.get_submodule(cls)
        assert isinstance(m, nn.Linear) and m.out_features == model.num_classes, cls
    assert model.get_classifier() is model.get_submodule(classifier[0])

    x = _input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        _check_map(feats, model, "forward_features")
        logits = model(x)
        assert logits.shape == (BATCH, model.num_classes)
        torch.testing.assert_close(model.forward_head(feats), logits)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (BATCH, getattr(model, "head_hidden_size", model.num_features))


@pytest.mark.parametrize("name,kw", CASES)
def test_output_fmt_declared(name, kw):
    """`output_fmt` is set exactly when forward_features is not NCHW (timm reads it to find the axes)."""
    model = _create(name, kw).eval()
    with torch.no_grad():
        feats = model.forward_features(_input(model, 1))
    pool, nf = tuple(model.pretrained_cfg["pool_size"]), model.num_features
    if feats.ndim == 3:
        real = "NLC"
    elif feats.shape[1] == nf and tuple(feats.shape[2:]) == pool:
        real = "NCHW"
    else:
        assert feats.shape[-1] == nf and tuple(feats.shape[1:3]) == pool, tuple(feats.shape)
        real = "NHWC"
    assert _fmt(model) == real


@pytest.mark.parametrize("name,kw", CASES)
def test_classifier_reset_and_no_head(name, kw):
    model = _create(name, kw).eval()
    x = _input(model)
    with torch.no_grad():
        pooled_ref = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        assert model(x).shape == (BATCH, 5) and model.get_classifier().out_features == 5
        model.reset_classifier(0)
        pooled = model(x)
        assert pooled.shape == (BATCH, model.num_features)
        torch.testing.assert_close(pooled, pooled_ref)
        if _fmt(model) != "NLC":
            model.reset_classifier(0, "")
            _check_map(model(x), model, "reset_classifier(0, '')")
            bare = _create(name, kw, num_classes=0, global_pool="").eval()
            _check_map(bare(x), bare, "num_classes=0, global_pool=''")
        headless = _create(name, kw, num_classes=0).eval()
        assert headless(x).shape == (BATCH, headless.num_features)


# ---------------------------------------------------------------------------------------------------------------
# features


@pytest.mark.parametrize("name,kw", CASES)
def test_features_only_and_intermediates_agree(name, kw):
    torch.manual_seed(0)
    model = _create(name, kw).eval()
    fmodel = _create(name, kw, features_only=True).eval()
    _load_features(fmodel, model)
    info = fmodel.feature_info
    x = _input(model)
    h, w = x.shape[-2:]
    with torch.no_grad():
        feats = fmodel(x)
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, indices=info.out_indices, intermediates_only=True)
        nhwc = model.forward_intermediates(x, indices=info.out_indices, output_fmt="NHWC", intermediates_only=True) \
            if _fmt(model) != "NLC" else None
        torch.testing.assert_close(final, model.forward_features(x))
    assert len(feats) == len(info.channels()) == len(only)
    for f, o, c, r in zip(feats, only, info.channels(), info.reduction()):
        assert f.shape[0] == BATCH and f.shape[1] == c, (tuple(f.shape), c)  # features_only maps are NCHW
        assert f.shape[2] <= math.ceil(h / r) + 1 and f.shape[3] <= math.ceil(w / r) + 1, (tuple(f.shape), r)
        torch.testing.assert_close(f, o)
    if nhwc is not None:
        for a, b in zip(only, nhwc):
            torch.testing.assert_close(b, a.permute(0, 2, 3, 1))
    assert len(inter) == len(model.feature_info)
    # indices, stop_early and norm
    last = len(model.feature_info) - 1
    with torch.no_grad():
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], inter[0])
        neg = model.forward_intermediates(x, indices=2, intermediates_only=True)  # the last two
        torch.testing.assert_close(neg[-1], inter[last])
        normed = model.forward_intermediates(x, indices=[last], norm=True, intermediates_only=True)
    assert normed[0].shape == inter[last].shape


@pytest.mark.parametrize("name,kw", CASES)
def test_grad_checkpointing_same_grads(name, kw):
    torch.manual_seed(0)
    model = _create(name, kw, num_classes=4).eval()  # eval: no dropout / BN updates between the two passes
    x = _input(model)
    model(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name,kw", CASES)
def test_param_groups_and_no_weight_decay(name, kw):
    """group_matcher puts every parameter in exactly one group (coarse and fine, and timm's layer decay);
    no_weight_decay feeds timm's optimizer factory (its names exempt; 1-D parameters exempt as well)."""
    from timm.models import group_parameters
    from timm.optim import create_optimizer_v2, param_groups_layer_decay

    model = _create(name, kw)
    names = sorted(n for n, _ in model.named_parameters())
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sorted(n for g in groups.values() for n in g) == names, coarse
    decayed = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g["params"]) for g in decayed) == len(names)
    nwd = model.no_weight_decay()
    assert isinstance(nwd, (set, list, tuple)) and all(isinstance(n, str) for n in nwd)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            if by_id[id(p)] in nwd:
                assert group["weight_decay"] == 0.0, by_id[id(p)]


@pytest.mark.parametrize("name,kw", CASES)
def test_backward_reaches_every_parameter(name, kw):
    model = _create(name, kw, num_classes=42).train()
    out = model(_input(model))
    assert out.shape == (BATCH, 42) and torch.isfinite(out).all()
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters without a gradient (unused official tensors belong in buffers): {no_grad}"


# ---------------------------------------------------------------------------------------------------------------
# graph capture


def _same_grads(a: nn.Module, b: nn.Module, atol=1e-5, rtol=1e-4):
    """Same gradient for every parameter, matched by name (a GraphModule registers them in another order)."""
    pb = dict(b.named_parameters())
    assert set(pb) == {n for n, _ in a.named_parameters()}
    for n, p in a.named_parameters():
        assert (p.grad is None) == (pb[n].grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(pb[n].grad, p.grad, atol=atol, rtol=rtol, msg=n)


@pytest.mark.parametrize("name,kw", CASES)
def test_fx_symbolic_trace(name, kw):
    """Plain torch.fx.symbolic_trace: forward (eval) bit-equal to eager, as timm's FX test demands (the traced graph
    picks the same kernels at run time), and forward+backward (train) equal eager."""
    torch.manual_seed(0)
    model = _create(name, kw, num_classes=7, drop_path_rate=0.0).eval()
    x = _input(model)
    traced = torch.fx.symbolic_trace(model)
    with torch.inference_mode():
        assert torch.equal(traced(x), model(x))
    eager, graph = copy.deepcopy(model).train(), torch.fx.symbolic_trace(copy.deepcopy(model).train())
    eager(x).square().mean().backward()
    graph(x).square().mean().backward()
    _same_grads(eager, graph)


@pytest.mark.parametrize("name,kw", CASES)
def test_fx_feature_extraction(name, kw):
    """timm's FX feature extraction (features_only, feature_cls='fx') gives the forward_intermediates maps."""
    torch.manual_seed(0)
    model = _create(name, kw).eval()
    fx = _create(name, kw, features_only=True, feature_cls="fx").eval()
    _load_features(fx, model)
    x = _input(model)
    fmt = _fmt(model)
    with torch.no_grad():
        got = fx(x)  # the raw outputs of the feature_info modules, in the model's own format
        want = model.forward_intermediates(x, indices=list(fx.feature_info.out_indices), intermediates_only=True,
                                           output_fmt=fmt)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if fmt == "NLC" and g.shape[1] != w.shape[1]:
            g = g[:, _num_prefix(model):]
        torch.testing.assert_close(g, w)
    fx.train()
    sum(f.float().mean() for f in fx(x)).backward()
    assert any(p.grad is not None for p in fx.parameters())


# one model per own family (models-B: add yours here)
COMPILE_MODELS = {
    "biformer_t": CI_MODELS["biformer_t"],
    "nat_mini": CI_MODELS["nat_mini"],
    "dinat_mini": CI_MODELS["dinat_mini"],
    "agent_deit_t": dict(depth=2),
    "slab_swin_t": dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
}


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.full)])
@pytest.mark.parametrize("name", list(COMPILE_MODELS))
def test_compile_fullgraph(name, backend):
    """torch.compile(fullgraph=True): no graph break; forward and backward equal eager (fp32). aot_eager (dynamo +
    AOTAutograd, no code generation) in CI; inductor (minutes per model on a CPU) under `full`."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _create(name, COMPILE_MODELS[name], num_classes=7, drop_path_rate=0.0).eval()
    x = _input(model)
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
    ref = copy.deepcopy(model)
    ref(x).square().mean().backward()
    compiled(x).square().mean().backward()
    _same_grads(ref, compiled._orig_mod, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("name", list(COMPILE_MODELS))
def test_export(name):
    """torch.export.export succeeds and the exported program runs with eager's outputs."""
    torch.manual_seed(0)
    model = _create(name, COMPILE_MODELS[name], num_classes=7).eval()
    x = _input(model)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), atol=1e-5, rtol=1e-5)
        other = torch.randn_like(x)
        torch.testing.assert_close(ep.module()(other), model(other), atol=1e-5, rtol=1e-5)
