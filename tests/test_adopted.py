"""Official checkpoints of the adopted timm families (timm's classes unchanged, the zoo maps the keys).

GC ViT: random tensors under the NVlabs key names and shapes (tests/fixtures/gcvit_xxtiny_official_keys.txt, the
official class's state_dict) saved as the official trainer does (`.pth.tar` with `state_dict` /
`state_dict_ema`), loaded through `visionattn.load_official`, the trainer's starting weights and the official
dense backbone.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

import visionattn
from visionattn.adopted import gcvit_checkpoint_filter_fn, gcvit_official_key

KEYS = Path(__file__).parent / "fixtures" / "gcvit_xxtiny_official_keys.txt"


def _official_gcvit(seed=0, layer_scale=False, head_classes=1000) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split(" ", 1)
        shape = tuple(int(s) for s in re.findall(r"\d+", shape))
        if key.startswith("head."):
            shape = (head_classes, *shape[1:])
        if key.endswith("relative_position_index"):
            sd[key] = torch.randint(0, 169, shape, generator=g)
        else:
            sd[key] = torch.randn(shape, generator=g)
        m = re.match(r"^(levels\.\d+\.blocks\.\d+)\.norm2\.weight$", key)
        if layer_scale and m:
            sd[f"{m[1]}.gamma1"] = torch.randn(shape, generator=g)
            sd[f"{m[1]}.gamma2"] = torch.randn(shape, generator=g)
    return sd


def _save(tmp_path, sd, ema=None, name="gcvit_xxtiny.pth.tar"):
    path = tmp_path / name
    torch.save({"epoch": 309, "arch": "gc_vit_xxtiny", "state_dict": sd, "state_dict_ema": ema or sd,
                "metric": 79.9}, path)
    return path


def _check_mapped(model, sd):
    got = model.state_dict()
    assert torch.equal(got["stem.conv1.weight"], sd["patch_embed.proj.weight"])
    assert torch.equal(got["stem.down.conv_block.se.fc1.weight"][:, :, 0, 0],
                       sd["patch_embed.conv_down.conv.2.fc.0.weight"])
    assert torch.equal(got["stages.1.downsample.reduction.weight"], sd["levels.0.downsample.reduction.weight"])
    assert torch.equal(got["stages.0.global_block.blocks.conv3.conv_pw.weight"],
                       sd["levels.0.q_global_gen.to_q_global.2.conv.3.weight"])
    assert torch.equal(got["stages.2.blocks.5.attn.rel_pos.relative_position_bias_table"],
                       sd["levels.2.blocks.5.attn.relative_position_bias_table"])
    assert torch.equal(got["stages.3.norm.weight"], sd["norm.weight"])


def test_gcvit_official_checkpoint_through_load_official(tmp_path):
    """Every tensor of the timm model comes from the NVlabs file (strict: zero missing / unexpected keys); the
    EMA copy when asked."""
    sd, ema = _official_gcvit(0), _official_gcvit(1)
    path = _save(tmp_path, sd, ema)
    model = visionattn.load_official(timm.create_model("gcvit_xxtiny"), path)
    _check_mapped(model, sd)
    assert torch.equal(model.head.fc.weight, sd["head.weight"])
    model = visionattn.load_official(timm.create_model("gcvit_xxtiny"), path, use_ema=True)
    _check_mapped(model, ema)
    model.eval()(torch.randn(1, 3, 224, 224))


def test_gcvit_layer_scale_and_timm_layout():
    """gamma1 / gamma2 (gcvit_small / base) become timm's ls1 / ls2; a timm-named state dict passes unchanged."""
    sd = _official_gcvit(2, layer_scale=True)
    model = timm.create_model("gcvit_xxtiny", layer_scale=1e-5)
    mapped = gcvit_checkpoint_filter_fn(sd, model)
    missing, unexpected = model.load_state_dict(mapped, strict=True)
    assert not missing and not unexpected
    assert torch.equal(model.stages[2].blocks[3].ls2.gamma, sd["levels.2.blocks.3.gamma2"])
    own = model.state_dict()
    again = gcvit_checkpoint_filter_fn(own, model)
    assert again.keys() == own.keys() and all(again[k] is own[k] for k in own)


@pytest.mark.parametrize("key", ["levels.0.blocks.0.attn.qkv_extra.weight", "levels.0.downsample.conv.9.weight",
                                 "levels.1.q_global_gen.to_q_global.0.conv.1.weight", "pos_embed",
                                 "patch_embed.conv_down.norm3.weight"])
def test_gcvit_unmappable_key_is_an_error_naming_it(tmp_path, key):
    sd = _official_gcvit(0)
    sd[key] = torch.zeros(4)
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        gcvit_official_key(key)
    with pytest.raises(ValueError, match=re.escape(repr(key))):
        visionattn.load_official(timm.create_model("gcvit_xxtiny"), _save(tmp_path, sd))


def test_gcvit_starting_weights_through_the_trainer_filter():
    """tools/train's initial_checkpoint: the family filter found from the model name maps the NVlabs file; a head
    of another size is re-initialised, every other tensor fits."""
    from visionattn.train.weights import filter_fn_for, fit_state_dict

    filt = filter_fn_for("gcvit_xxtiny")
    assert filt is gcvit_checkpoint_filter_fn
    model = timm.create_model("gcvit_xxtiny", num_classes=10)
    sd = _official_gcvit(3, head_classes=21841)
    mapped, report = fit_state_dict(model, sd, filt, "official")
    assert report["tensors"] == report["of"] - 2 and report["classifier_reinitialised"] == ["head.fc"]
    assert torch.equal(mapped["stem.conv1.weight"], sd["patch_embed.proj.weight"])


def test_gcvit_dense_backbone_shares_the_mapping(tmp_path):
    """The official dense backbone (24x24 windows) loads the same classification file through init_cfg's path:
    same trunk tensors, relative-position tables resized, classifier dropped, output norms left at their init."""
    from visionattn.mm.dense import build_dense, filter_for

    sd = _official_gcvit(4)
    path = _save(tmp_path, sd)
    dense = build_dense("gcvit_xxtiny", pretrained=str(path))
    cls = visionattn.load_official(timm.create_model("gcvit_xxtiny"), path)
    d, c = dense.state_dict(), cls.state_dict()
    trunk = [k for k in c if not k.startswith(("head.", "stages.3.norm.")) and "relative_position" not in k]
    assert all(torch.equal(d[k], c[k]) for k in trunk)
    assert d["stages.0.blocks.0.attn.rel_pos.relative_position_bias_table"].shape == (47 * 47, 2)
    bad = dict(sd, **{"levels.3.blocks.0.attn.lepe.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="levels.3.blocks.0.attn.lepe.weight"):
        filter_for(dense)(bad, dense)
