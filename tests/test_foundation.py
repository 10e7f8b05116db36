import ast
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import visionattn
from visionattn import ModelNameClashError, list_models, register_zoo_model
from visionattn.checkpoint import load_state_dict_file, unwrap_state_dict


def test_subpackages_map_to_top_level_folders():
    import visionattn.backbones
    import visionattn.kernels

    assert visionattn.backbones.__file__.replace("\\", "/").endswith("backbones/__init__.py")
    assert "/visionattn/" not in visionattn.backbones.__file__.replace("\\", "/")
    assert visionattn.kernels.__file__.replace("\\", "/").endswith("kernels/__init__.py")


def test_clash_guard_refuses_timm_names():
    from timm.models._registry import _model_entrypoints

    original = _model_entrypoints["resnet18"]

    def resnet18(pretrained=False, **kwargs):  # deliberately clashes with timm's resnet18
        raise AssertionError("must never be registered")

    with pytest.raises(ModelNameClashError, match="resnet18"):
        register_zoo_model("nat")(resnet18)
    assert _model_entrypoints["resnet18"] is original
    assert "resnet18" not in {str(m) for m in list_models()}


def test_register_rejects_unknown_family():
    with pytest.raises(ValueError, match="family"):
        register_zoo_model("not_a_family")


def test_list_models_families():
    models = list_models()
    assert models == sorted(models)
    fams = {m.family for m in models}
    assert {"gcvit", "shvit", "efficientvim"} <= fams
    for fam in ("gcvit", "shvit", "efficientvim"):
        sub = list_models(fam)
        assert sub and all(m.family == fam and m.startswith(fam) for m in sub)
        for m in sub:
            assert visionattn.get_family(m) == fam
    with pytest.raises(ValueError, match="family"):
        list_models("nope")


def test_every_zoo_model_is_a_timm_model():
    for m in list_models():
        assert timm.is_model(m), m


def test_own_families_registered():
    """Every own family has registered models (a family whose registration is lost fails here)."""
    for fam in ("biformer", "nat", "dinat", "agent_attention", "slab"):
        assert list_models(fam), fam
    assert {"nat_isotropic_small", "nat_isotropic_base"} <= set(list_models("nat"))
    assert not {"nat_isotropic_small", "nat_isotropic_base"} & set(list_models("dinat"))


def test_from_official_knows_every_fixture_builder():
    """Every builder named by a parity case or manifest is registered for its family (shvit included)."""
    import json

    from parity_utils import parity_dir

    assert visionattn.official_builders("shvit")
    root = parity_dir()
    if root is None:
        pytest.skip("parity fixtures not found (set VISIONATTN_PARITY_DIR)")
    named = {(p.parent.name if p.parent.name != "manifests" else p.parent.parent.name,
              json.loads(p.read_text())["official_builder"]) for p in root.glob("*/**/*.json")}
    assert named and named <= set(visionattn.official_builders()), sorted(named - set(visionattn.official_builders()))


def test_set_attn_backend_validates():
    from visionattn.utils import attn_modules, check_backend

    model = timm.create_model("biformer_t", depths=(1, 1, 1, 1), embed_dims=(32, 48, 64, 96), head_dim=16)
    assert attn_modules(model) and visionattn.set_attn_backend(model, "reference") is model
    with pytest.raises(ValueError, match="backend must be one of"):
        visionattn.set_attn_backend(model, "fast")
    assert {m.backend for m in attn_modules(model)} == {"reference"}  # unchanged by the refused call
    with pytest.raises(ValueError, match="no attention module"):
        visionattn.set_attn_backend(timm.create_model("resnet18"), "torch")
    assert check_backend(None, ("auto", "torch")) == "auto"
    with pytest.raises(ValueError, match="attn_backend"):
        check_backend("cuda", ("auto", "torch"))


def test_from_official_unknown_builder():
    with pytest.raises(ValueError, match="builder"):
        visionattn.from_official("nat", "nowhere.py:Nothing", {})


def test_unwrap_envelopes(tmp_path):
    sd = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    assert unwrap_state_dict({"model": sd}).keys() == sd.keys()
    assert unwrap_state_dict({"state_dict": {f"module.{k}": v for k, v in sd.items()}}).keys() == sd.keys()
    got = unwrap_state_dict({"model": {"a.weight": torch.zeros(2)}, "model_ema": sd}, use_ema=True)
    assert torch.equal(got["a.weight"], sd["a.weight"])
    torch.save({"model": sd, "epoch": 3}, tmp_path / "c.pth")
    assert unwrap_state_dict(load_state_dict_file(tmp_path / "c.pth")).keys() == sd.keys()


def test_no_import_cycle_through_the_package():
    """Model, layer and adapter files never import the top-level package (which imports them), so any of them can
    be imported first; the zoo is then complete, and importing again registers nothing twice."""
    root = Path(visionattn.__file__).parents[1]
    offenders = []
    dirs = ("backbones", "visionattn/layers", "visionattn/official", "visionattn/mm/dense")
    for f in [p for d in dirs for p in root.glob(f"{d}/*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module == "visionattn" and not node.level) or (
                    isinstance(node, ast.Import) and any(a.name == "visionattn" for a in node.names)):
                offenders.append(f"{f.relative_to(root)}:{node.lineno}")
    assert not offenders, f"import the leaf module instead of the package: {offenders}"
    for first in ("visionattn.backbones.agent", "visionattn.official.nat", "visionattn.layers.fused"):
        code = (f"import importlib, timm; import {first}; import visionattn; n = len(visionattn.list_models()); "
                f"importlib.import_module({first!r}); importlib.import_module('visionattn.backbones'); "
                "assert n == len(visionattn.list_models()) > 60, n; "
                "assert timm.is_model('agent_swin_t') and timm.is_model('nat_mini') and timm.is_model('slab_deit_t')")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"importing {first} first: {res.stderr[-2000:]}"


def _save_with_fake_module(path, module: str, qualname: str, obj_factory):
    """torch.save an object whose class lives in a throwaway module (absent again when loading)."""
    import sys
    import types

    parent, child = module.split(".")
    pkg, mod = types.ModuleType(parent), types.ModuleType(module)
    cls = obj_factory()
    cls.__module__, cls.__qualname__ = module, qualname
    setattr(mod, qualname, cls)
    setattr(pkg, child, mod)
    sys.modules.update({parent: pkg, module: mod})
    try:
        torch.save({"model": {"w": torch.ones(3)}, "config": cls(A=cls(B=5))}, path)
    finally:
        del sys.modules[parent], sys.modules[module]


def _yacs_like():
    class CfgNode(dict):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.__dict__.update(__immutable__=False, __new_allowed__=False)  # as yacs does

    return CfgNode


def test_load_state_dict_file_config_objects(tmp_path):
    import argparse
    import pickle

    before = set(torch.serialization.get_safe_globals())  # torch keeps a set: order is not stable
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(model="x", lr=0.1)}, tmp_path / "ns.pth")
    ckpt = load_state_dict_file(tmp_path / "ns.pth")
    assert ckpt["args"].model == "x" and torch.equal(unwrap_state_dict(ckpt)["w"], torch.ones(2))

    _save_with_fake_module(tmp_path / "yacs.pth", "yacs.config", "CfgNode", _yacs_like)
    ckpt = load_state_dict_file(tmp_path / "yacs.pth")
    assert ckpt["config"]["A"]["B"] == 5 and type(ckpt["config"]).__module__ == "collections"
    assert unwrap_state_dict(ckpt).keys() == {"w"}

    # any other class is refused, even one that looks like a config
    _save_with_fake_module(tmp_path / "evil.pth", "evil_pkg.cfg", "CfgNode", _yacs_like)
    with pytest.raises(pickle.UnpicklingError, match="evil_pkg"):
        load_state_dict_file(tmp_path / "evil.pth")

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, tmp_path / "reduce.pth")
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict_file(tmp_path / "reduce.pth")
    # the allow-list was only scoped: plain weights_only loads still refuse the config files
    assert set(torch.serialization.get_safe_globals()) == before
    for name in ("ns.pth", "yacs.pth"):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / name, weights_only=True)


def test_load_state_dict_file_safetensors(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.arange(4.0)}, str(tmp_path / "w.safetensors"))
    assert torch.equal(load_state_dict_file(tmp_path / "w.safetensors")["a"], torch.arange(4.0))


def test_unwrap_ema_only_and_mm_backbone():
    sd = {"a.weight": torch.ones(2)}
    assert unwrap_state_dict({"model_ema": sd, "epoch": 1}).keys() == sd.keys()
    got = unwrap_state_dict({"model": sd, "model_ema": {"a.weight": torch.zeros(2)}})
    assert torch.equal(got["a.weight"], sd["a.weight"])  # 'model' over the EMA copy unless asked
    mm = {"state_dict": {"backbone.a.weight": torch.ones(2), "decode_head.w": torch.ones(1)}, "meta": {}}
    assert unwrap_state_dict(mm).keys() == sd.keys()
    assert unwrap_state_dict(sd).keys() == sd.keys()


_ONE_PER_FAMILY = {
    "agent_pvt_t": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
    "biformer_t": dict(depths=(1, 1, 2, 1), embed_dims=(32, 48, 64, 96), head_dim=16),
    "nat_mini": dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8)),
    "slab_pvt_t": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4)),
}


@pytest.mark.parametrize("name", list(_ONE_PER_FAMILY))
def test_pretrained_file_same_for_every_family(tmp_path, name):
    """pretrained=True with pretrained_cfg_overlay=dict(file=...) on a trainer-style file (pickled args, an EMA
    copy beside 'model') loads 'model' the same way for every family; another class count keeps the trunk."""
    import argparse

    kw = _ONE_PER_FAMILY[name]
    torch.manual_seed(0)
    sd = timm.create_model(name, num_classes=10, **kw).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    path = str(tmp_path / f"{name}.pth")
    torch.save({"model": sd, "model_ema": ema, "epoch": 3, "args": argparse.Namespace(model=name)}, path)
    overlay = dict(file=path, num_classes=10)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10, **kw)
    got = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    assert model.pretrained_cfg["file"] == path and "state_dict" not in model.pretrained_cfg
    other = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3, **kw)
    assert other.get_classifier().out_features == 3
    conv = model.pretrained_cfg["first_conv"] + ".weight"
    assert torch.equal(other.state_dict()[conv], sd[conv])


@pytest.mark.parametrize("name", [str(m) for m in visionattn.list_models() if m.family not in
                                  ("gcvit", "shvit", "efficientvim")])
def test_group_matcher_works_with_timm(name):
    """timm's parameter grouping (coarse and fine) and layer-wise lr decay accept every zoo model: each parameter
    lands in exactly one group."""
    from timm.models import group_parameters
    from timm.optim import param_groups_layer_decay

    with torch.device("meta"):
        model = timm.create_model(name)
    names = [n for n, _ in model.named_parameters()]
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sorted(n for g in groups.values() for n in g) == sorted(names), coarse
    decayed = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g["params"]) for g in decayed) == sum(p.requires_grad for p in model.parameters())


_OFFICIAL_DROP_CASES = [  # (family, official builder, its small kwargs, zoo model, our small kwargs)
    ("nat", "classification/nat.py:NAT", dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], kernel_size=3),
     "nat_mini", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), kernel_size=3)),
    ("agent_attention", "agent_transformer/models/agent_pvt.py:PyramidVisionTransformer",
     dict(patch_size=4, embed_dims=[16, 32, 80, 128], num_heads=[1, 2, 5, 8], depths=[1, 1, 1, 1]),
     "agent_pvt_t", dict(embed_dims=(16, 32, 80, 128), depths=(1, 1, 1, 1))),
    ("agent_attention", "agent_transformer/models/agent_swin.py:AgentSwinTransformer",
     dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8]),
     "agent_swin_t", dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))),
    ("slab", "classification/models/slab_cswin.py:CSWinTransformer",
     dict(patch_size=4, embed_dim=16, depth=[1, 1, 1, 1], num_heads=[2, 2, 4, 8], attn_type="SSSS"),
     "slab_cswin_t", dict(embed_dim=16, depth=(1, 1, 1, 1), num_heads=(2, 2, 4, 8))),
    ("slab", "classification/models/slab_deit.py:VisionTransformer", dict(embed_dim=48, depth=1, num_heads=3),
     "slab_deit_t", dict(embed_dim=48, depth=1, num_heads=3)),
]


def _dropouts(model) -> dict:
    return {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}


@pytest.mark.parametrize("family,builder,official,name,ours", _OFFICIAL_DROP_CASES,
                         ids=[c[3] for c in _OFFICIAL_DROP_CASES])
def test_drop_rate_has_timms_meaning(family, builder, official, name, ours):
    """timm's `drop_rate` is the dropout before the classifier; the official `drop_rate` (after the embedding and
    in the blocks, none before the head) is mapped by the official adapters."""
    head = {"head.drop", "head_drop"}
    drops = _dropouts(timm.create_model(name, drop_rate=0.25, **ours))
    assert set(drops) <= head and list(drops.values()) == [0.25], drops
    drops = _dropouts(visionattn.from_official(family, builder, dict(official, drop_rate=0.25)))
    assert drops and not set(drops) & head and set(drops.values()) == {0.25}, drops
    assert any("mlp" in n for n in drops)


def test_pad_right_bottom_plain_and_symbolic():
    from visionattn.utils import pad_right_bottom

    x = torch.randn(2, 3, 7, 10)
    y = pad_right_bottom(x, (4, 5))
    assert y.shape == (2, 3, 8, 10) and torch.equal(y[..., :7, :], x) and not y[..., 7:, :].any()
    assert pad_right_bottom(x, (7, 5)) is x  # nothing to pad: no copy
    nhwc = pad_right_bottom(x.permute(0, 2, 3, 1), 3, channels_last=True)
    assert nhwc.shape == (2, 9, 12, 3) and torch.equal(nhwc[:, :7, :10], x.permute(0, 2, 3, 1))

    class Pad(torch.nn.Module):
        def forward(self, t):
            return pad_right_bottom(t, 4)

    # dynamic height / width: the padding is computed from symbolic sizes (no branch, no remainder)
    hw = torch.export.Dim("h", min=1, max=64), torch.export.Dim("w", min=1, max=64)
    ep = torch.export.export(Pad(), (torch.randn(1, 2, 8, 8),), dynamic_shapes={"t": {2: hw[0], 3: hw[1]}})
    for h, w in ((8, 8), (5, 9), (1, 1), (13, 4)):
        t = torch.randn(1, 2, h, w)
        assert torch.equal(ep.module()(t), pad_right_bottom(t, 4))
