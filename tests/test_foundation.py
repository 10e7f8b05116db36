import importlib

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
    own = {m.family for m in list_models()} & set(visionattn._registry.OWN_FAMILIES)
    # Each backbone module registers its family on import; the set grows as families land.
    for fam in own:
        assert list_models(fam)


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


def test_import_is_idempotent():
    importlib.import_module("visionattn")
    importlib.import_module("visionattn.backbones")
