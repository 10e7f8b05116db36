"""Issue 26: starting weights through the family's checkpoint filter, and official checkpoints in timm's hub layout.

The official-format state dicts are the parity fixtures' `state_dict.*` tensors (official key names).
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
from parity_utils import load_case, max_abs_diff, official_kwargs
from train_common import TINY, final_weights, make_digits, one_line_error, train_main, weights

import visionattn

# our arguments for the nat/nat_mini fixture (official kwargs: embed_dim 16, depths 1-2-2-1, kernel 7, 10 classes)
NAT_FIXTURE = ["model=nat_mini", "model_kwargs={embed_dim: 16, depths: [1, 2, 2, 1], num_heads: [1, 2, 4, 8]}"]
FROZEN = ["epochs=1", "max_steps=1", "lr=0", "warmup_lr=0", "min_lr=0", "warmup_epochs=0", "weight_decay=0",
          "drop_path=0.0", "img_size=32"]


@pytest.fixture(scope="module")
def train():
    return train_main()


@pytest.fixture(scope="module")
def digits16(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp("digits16"))


def _args(digits16, out, *extra):
    tiny = [a for a in TINY if not a.startswith(("model=", "model_kwargs=", "img_size="))]
    return [*tiny, *NAT_FIXTURE, *FROZEN, f"data_dir={digits16}", f"output_dir={out}", *extra]


def _nat_fixture_model(num_classes=10):
    return timm.create_model("nat_mini", num_classes=num_classes, embed_dim=16, depths=[1, 2, 2, 1],
                             num_heads=[1, 2, 4, 8])


def _official_nat(tmp_path, head_classes=21841, edit=None):
    """The nat_mini fixture as an official training checkpoint ('model' envelope), with another head size."""
    _, _, sd = load_case("nat", "nat_mini")
    sd = dict(sd)
    if head_classes is not None:
        sd["head.weight"] = torch.randn(head_classes, sd["head.weight"].shape[1])
        sd["head.bias"] = torch.randn(head_classes)
    if edit:
        edit(sd)
    path = tmp_path / "nat_official.pth"
    torch.save({"model": sd, "epoch": 299, "optimizer": {}}, path)
    return path, sd


def test_official_checkpoint_with_a_21841_class_head_starts_the_run(train, digits16, tmp_path, capsys):
    """Measured before the fix: exit 0 with most official tensors skipped (random trunk). Now every trunk tensor
    comes from the checkpoint, the classifier is re-initialised for the 10 classes, and run.json says so."""
    from visionattn.backbones.nat import checkpoint_filter_fn

    path, sd = _official_nat(tmp_path)
    out = tmp_path / "run"
    assert train(_args(digits16, out, f"initial_checkpoint={path}")) == 0
    printed = capsys.readouterr().out
    assert "classifier head.fc re-initialised (21841 -> 10 classes)" in printed, printed
    w = weights(final_weights(out))
    expected = checkpoint_filter_fn({k: v for k, v in sd.items() if not k.startswith("head.")},
                                    _nat_fixture_model())
    trunk = [k for k in expected if not k.startswith("head.")]
    assert len(trunk) == len(sd) - 2
    for k in trunk:
        assert torch.equal(w[k], expected[k]), k  # lr 0: the weights of the step are the loaded ones
    rec = json.loads((out / "run.json").read_text())["history"][0]["starting_weights"]
    assert rec["classifier_reinitialised"] == ["head.fc"] and rec["classes"] == [21841, 10]
    assert rec["tensors"] == len(w) - 2 and str(path) in rec["source"]


@pytest.mark.parametrize("case", ["other_architecture", "missing", "unexpected", "shape"])
def test_weights_that_do_not_fit_stop_the_run_before_step_1(train, digits16, tmp_path, capsys, case):
    if case == "other_architecture":
        _, _, sd = load_case("biformer", "biformer_t")
        path = tmp_path / "biformer.pth"
        torch.save({"model": sd}, path)
        needle = "does not fit"
    else:
        edits = {"missing": lambda sd: sd.pop("levels.1.blocks.0.attn.qkv.weight"),
                 "unexpected": lambda sd: sd.__setitem__("levels.0.blocks.0.attn.extra", torch.ones(3)),
                 "shape": lambda sd: sd.__setitem__("levels.0.blocks.0.mlp.fc1.weight", torch.ones(7, 16))}
        path, _ = _official_nat(tmp_path, head_classes=None, edit=edits[case])
        needle = {"missing": "qkv.weight", "unexpected": "attn.extra", "shape": "mlp.fc1.weight"}[case]
    out = tmp_path / "run"
    rc = train(_args(digits16, out, f"initial_checkpoint={path}"))
    err = one_line_error(capsys.readouterr().err)
    assert rc == 2 and needle in err and str(path) in err, err
    assert not out.exists()  # stopped before anything was written


def test_pretrained_name_with_a_local_file_and_finetune_from(train, digits16, tmp_path, capsys):
    path, _ = _official_nat(tmp_path, head_classes=None)
    out = tmp_path / "a"
    assert train(_args(digits16, out, "pretrained=nat_mini.in1k", f"pretrained_path={path}")) == 0
    rec = json.loads((out / "run.json").read_text())["history"][0]["starting_weights"]
    assert "classifier_reinitialised" not in rec and rec["source"].startswith("pretrained=nat_mini.in1k")
    # a fine-tune recipe: pretrained=true means its finetune_from weights
    out = tmp_path / "b"
    assert train(_args(digits16, out, "finetune_from=nat_mini.in1k", "pretrained=true",
                       f"pretrained_path={path}")) == 0
    rec = json.loads((out / "run.json").read_text())["history"][0]["starting_weights"]
    assert rec["source"].startswith("pretrained=nat_mini.in1k")
    capsys.readouterr()
    rc = train(_args(digits16, tmp_path / "c", "finetune_from=nat_mini.in1k"))
    err = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "fine-tune recipe starting from nat_mini.in1k" in err
    rc = train(_args(digits16, tmp_path / "d", "pretrained=nat_mini.bogus_tag"))
    err = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "nat_mini.bogus_tag" in err


def test_run_weights_as_initial_checkpoint(train, digits16, tmp_path):
    """Our own run directory / weights file starts a run too (the filters pass our layout through)."""
    first = tmp_path / "first"
    assert train([*TINY, f"data_dir={digits16}", "epochs=1", "max_steps=2", f"output_dir={first}"]) == 0
    second = tmp_path / "second"
    frozen = ["lr=0", "warmup_lr=0", "min_lr=0", "warmup_epochs=0", "weight_decay=0", "drop_path=0.0"]
    assert train([*TINY, *frozen, f"data_dir={digits16}", "epochs=1", "max_steps=1",
                  f"initial_checkpoint={first}", f"output_dir={second}"]) == 0
    a, b = weights(final_weights(first)), weights(final_weights(second))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _own_families():
    return [("nat", "nat_mini"), ("dinat", "dinat_s_tiny"), ("dinat", "dinat_isotropic"), ("biformer", "biformer_t"),
            ("biformer", "biformer_stl_nchw"), ("agent_attention", "agent_pvt_t"), ("agent_attention", "agent_deit_s"),
            ("agent_attention", "agent_cswin_t"), ("slab", "slab_swin"), ("slab", "slab_pvt")]


@pytest.mark.parametrize("family,case", _own_families())
def test_filters_fit_official_and_own_layouts(family, case):
    """Official fixtures fit their model exactly through the family filter found from the model name; the
    model's own state dict fits again (a run's weights as starting weights)."""
    from visionattn.train.weights import filter_fn_for, fit_state_dict

    meta, _, sd = load_case(family, case)
    model = visionattn.from_official(meta["family"], meta["official_builder"], official_kwargs(meta))
    name = meta["modelled_on"]
    assert filter_fn_for(name) is not None
    mapped, report = fit_state_dict(model, sd, filter_fn_for(name), "fixture")
    assert "classifier_reinitialised" not in report and report["tensors"] == report["of"]
    again, report = fit_state_dict(model, model.state_dict(), filter_fn_for(name), "own")
    assert report["tensors"] == report["of"] and "classifier_reinitialised" not in report


def test_agent_finetune_resizes_tables_as_the_official_code():
    """agent_swin_b -> a 384-style model (image and window x 12/7): agent biases resized linearly, relative
    position tables bicubically, as the official utils.load_pretrained."""
    import torch.nn.functional as F

    from visionattn.train.weights import filter_fn_for, fit_state_dict

    meta, _, sd = load_case("agent_attention", "agent_swin_b")
    kw = {**official_kwargs(meta), "img_size": 192, "window_size": 96}
    model = visionattn.from_official(meta["family"], meta["official_builder"], kw)
    mapped, report = fit_state_dict(model, sd, filter_fn_for("agent_swin_b_384"), "agent_swin_b")
    assert report["tensors"] == report["of"]
    key = "layers.0.blocks.0.attn.ah_bias"  # (1, heads, agents, window, 1)
    src = sd[key].squeeze(0).squeeze(-1)
    want = F.interpolate(src, size=96, mode="linear").unsqueeze(0).unsqueeze(-1)
    torch.testing.assert_close(mapped[key], want)
    rpb = [k for k in sd if k.endswith("relative_position_bias_table")][0]
    n1, heads = sd[rpb].shape
    s1, s2 = int(n1 ** 0.5), int(mapped[rpb].shape[0] ** 0.5)
    want = F.interpolate(sd[rpb].permute(1, 0).view(1, heads, s1, s1), size=(s2, s2), mode="bicubic")
    torch.testing.assert_close(mapped[rpb], want.view(heads, s2 * s2).permute(1, 0))


# --------------------------------------------------------------------------------------------------- hub layout
def _convert():
    from visionattn.train.hub import convert_main

    return convert_main


NAT_KW = ["num_classes=10", "embed_dim=16", "depths=[1, 2, 2, 1]", "num_heads=[1, 2, 4, 8]"]


def test_official_checkpoint_to_timm_hub_layout(tmp_path, capsys):
    meta, tensors, _ = load_case("nat", "nat_mini")
    path, _ = _official_nat(tmp_path, head_classes=None)
    out = tmp_path / "hub" / "nat_mini"
    assert _convert()(["nat_mini", str(path), str(out), *NAT_KW]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "nat_mini" and cfg["num_classes"] == 10 and cfg["model_args"]["embed_dim"] == 16
    assert cfg["pretrained_cfg"]["crop_pct"] == 0.875
    for model in (timm.create_model(f"local-dir:{out}", pretrained=True),
                  timm.create_model("nat_mini", pretrained=True, embed_dim=16, depths=[1, 2, 2, 1],
                                    num_heads=[1, 2, 4, 8], num_classes=10,
                                    pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=10))):
        with torch.no_grad():
            assert max_abs_diff(model.eval()(tensors["input"]), tensors["logits"]) <= meta["tolerance"]
    # again: its own output is replaced
    before = (out / "model.safetensors").stat().st_mtime_ns
    assert _convert()(["nat_mini", str(path), str(out), *NAT_KW]) == 0
    assert (out / "model.safetensors").stat().st_mtime_ns >= before
    assert not [p for p in out.parent.iterdir() if p.name != "nat_mini"]  # no temporary folder left


def test_converter_user_errors_are_one_line_and_touch_nothing(tmp_path, capsys):
    path, _ = _official_nat(tmp_path, head_classes=None)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    cases = [
        (["nat_mini", str(path), str(mine), *NAT_KW], "not written by this tool"),
        (["nat_mini", str(path), str(tmp_path / "o1"), *NAT_KW[1:]], "num_classes=10"),  # head 10 vs 1000
        (["nat_mini", str(tmp_path / "nope.pth"), str(tmp_path / "o2"), *NAT_KW], "not found"),
        (["not_a_model", str(path), str(tmp_path / "o3")], "unknown model"),
        (["nat_mini", str(path), str(tmp_path / "o4"), "bogus"], "key=value"),
    ]
    for argv, needle in cases:
        assert _convert()(argv) == 2
        err = one_line_error(capsys.readouterr().err)
        assert needle in err, (argv, err)
    assert (mine / "notes.txt").read_text() == "keep" and [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "nat_official.pth"]


FINETUNE_SOURCES = [  # (fine-tune config, the manifest of its starting weights' architecture, their class count)
    ("dinat_large", "dinat", "dinat_large", 21841), ("dinat_large_384", "dinat", "dinat_large", 21841),
    ("dinat_large_384_11x11", "dinat", "dinat_large_384_11x11", 21841),
    ("dinat_s_large", "dinat", "dinat_s_large", 21841), ("dinat_s_large_384", "dinat", "dinat_s_large", 21841),
    ("agent_swin_b_384", "agent_attention", "agent_swin_b", 1000),
    ("agent_cswin_b_384", "agent_attention", "agent_cswin_b", 1000),
]


@pytest.mark.full
@pytest.mark.parametrize("name,family,source,classes", FINETUNE_SOURCES, ids=[f[0] for f in FINETUNE_SOURCES])
def test_full_size_finetune_weights_fit(name, family, source, classes):
    """The official starting checkpoint of every fine-tune recipe (full size, official keys and shapes from the
    parity manifests) fits the recipe's model through its filter; only a 21841-class head is re-initialised."""
    from parity_utils import load_manifest, manifest_state_dict

    from visionattn.train.weights import filter_fn_for, fit_state_dict

    sd = manifest_state_dict(load_manifest(family, source))
    heads = [k for k in sd if k.startswith("head.")]
    for k in heads:
        sd[k] = torch.zeros((classes, *sd[k].shape[1:]))
    model = timm.create_model(name, num_classes=1000)
    _, report = fit_state_dict(model, sd, filter_fn_for(name), source)
    assert report["tensors"] + (2 if classes != 1000 else 0) == report["of"], report
    assert ("classifier_reinitialised" in report) == (classes != 1000)


def test_adopted_family_official_checkpoint_to_hub(tmp_path):
    """SHViT (a timm family whose official release uses other key names): an official-layout checkpoint (the keys
    and shapes the official code dumps, random values) converts through the zoo's filter and loads in timm."""
    from parity_utils import REPO_ROOT

    from visionattn.adopted import shvit_checkpoint_filter_fn

    dump = REPO_ROOT.parent / "shared" / "specs" / "shvit_keys.txt"
    if not dump.is_file():
        pytest.skip("official SHViT key dump not available")
    body = dump.read_text().split("=== official")[1]
    body = body[body.index("\n") + 1:].split("===")[0]
    g = torch.Generator().manual_seed(0)
    sd = {}
    for line in body.strip().splitlines():
        key, shape = line.split("\t")
        shape = json.loads(shape)
        sd[key] = torch.tensor(7) if key.endswith("num_batches_tracked") else \
            torch.rand(shape, generator=g) + (1.0 if key.endswith("running_var") else 0.0)
    path = tmp_path / "shvit_s1.pth"
    torch.save({"model": sd}, path)
    out = tmp_path / "hub"
    assert _convert()(["shvit_s1", str(path), str(out)]) == 0
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    want = shvit_checkpoint_filter_fn(sd)
    got = model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in got)
