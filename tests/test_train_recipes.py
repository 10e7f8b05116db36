"""Issue 26: ImageNet recipes traced to the official training code, fine-tunes that start from the right weights.

* every config equals tools/make_configs.py's audited record (values and the source comments), the record names
  the pinned official commits, and the trainer reads the files as the record says;
* fine-tune configs name their starting weights and refuse to start without them;
* `--print-recipe` shows the effective recipe for the processes and batch beside the official run's;
* the trainer features the recipes need: which parameters skip weight decay, lr / warm-up lr / min lr scaled with
  the batch, train-only interpolation, a constant schedule, clipping the head or not, BN recalibration passes each
  validated (the best counts), the generic per-step hook.
"""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from train_common import ROOT, TINY, final_weights, make_digits, one_line_error, train_main, weights

CONFIGS = ROOT / "configs" / "imagenet"


def _make_configs():
    spec = importlib.util.spec_from_file_location("make_configs", ROOT / "tools" / "make_configs.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_configs"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mc():
    return _make_configs()


@pytest.fixture(scope="module")
def train():
    return train_main()


@pytest.fixture(scope="module")
def digits16(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp("digits16"))


# ------------------------------------------------------------------------------------------------ the audit record
def test_configs_equal_the_audit_record(mc):
    import visionattn

    drift = [n for n in visionattn.list_models() if (CONFIGS / f"{n}.yaml").read_text() != mc.render(n)]
    assert not drift, f"configs differ from tools/make_configs.py (run it, or fix the record): {drift}"
    assert (CONFIGS / "README.md").read_text() == mc.readme()
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(map(str, visionattn.list_models()))


def test_every_value_has_a_source(mc):
    import visionattn

    for name in visionattn.list_models():
        for key, v in mc._leaves(mc.recipe(name)):
            if v.src.startswith(mc.NO_SOURCE):
                assert len(v.src) > len(mc.NO_SOURCE) + 10, (name, key, v.src)  # with its reason
            elif not v.src.startswith("zoo:"):
                repo, _, rest = v.src.partition(":")
                assert repo == mc.FAMILY_REPO[name.family] and rest.strip(), (name, key, v.src)
        assert set(mc.recipe(name)) <= set(mc.ORDER)


def test_record_pins_the_commits_of_the_parity_fixtures(mc, parity_root):
    for family, repo in (("nat", "nat"), ("dinat", "nat"), ("biformer", "biformer"), ("agent_attention", "agent"),
                         ("slab", "slab")):
        commits = {json.loads(p.read_text())["official_commit"] for p in (parity_root / family).glob("*.json")
                   if "NATTEN" not in json.loads(p.read_text())["official_repo"]}
        assert commits == {mc.REPOS[repo][1]}, (family, commits)


def test_trainer_reads_the_configs_as_recorded(mc):
    from visionattn.train import load_config
    from visionattn.train.config import flat

    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = flat(load_config(path))
        for key, value in flat(mc.values(path.stem)).items():
            assert cfg[key] == value, (path.name, key, cfg[key], value)


@pytest.mark.parametrize("name, key, value", [
    # the values the first audit (issue 26) found wrong
    ("pvt_m_prepbn", "batch_size", 128), ("slab_cswin_s", "batch_size", 128),
    ("nat_mini", "clip_grad", 5.0), ("dinat_large", "clip_grad", 5.0), ("slab_pvt_m", "clip_grad", 1.0),
    ("slab_pvt_s", "clip_grad", None), ("nat_isotropic_base", "model_ema", True),
    ("nat_isotropic_base", "warmup_epochs", 50), ("agent_swin_t", "scale_warmup_min_lr", True),
    ("slab_swin_t", "scale_warmup_min_lr", True), ("agent_pvt_t", "no_weight_decay", []),
    ("nat_tiny", "no_weight_decay", []), ("nat_tiny", "train_interpolation", "random"),
    ("dinat_large", "sched", "constant"), ("dinat_large", "batch_size", 64), ("slab_cswin_t", "crop_pct", 0.875),
    ("biformer_s", "sched_on_updates", False), ("gcvit_tiny", "epochs", 310), ("shvit_s1", "clip_exclude_head", False),
    ("efficientvim_m1", "amp", "fp16"),
])
def test_audited_values(name, key, value):
    from visionattn.train import load_config

    assert load_config(CONFIGS / f"{name}.yaml")[key] == value


def test_make_configs_check_reports_drift(tmp_path, mc):
    assert mc.main(["--out", str(CONFIGS), "--check"]) == 0
    assert mc.main(["--out", str(tmp_path)]) == 0
    path = tmp_path / "nat_mini.yaml"
    path.write_text(path.read_text().replace("clip_grad: 5.0", "clip_grad: 1.0"))
    assert mc.main(["--out", str(tmp_path), "--check"]) == 1


# -------------------------------------------------------------------------------------------- fine-tune recipes
FINETUNES = {"dinat_large": "dinat_large.in22k", "dinat_large_384": "dinat_large.in22k",
             "dinat_large_384_11x11": "dinat_large_384_11x11.in22k", "dinat_s_large": "dinat_s_large.in22k",
             "dinat_s_large_384": "dinat_s_large.in22k", "agent_swin_b_384": "agent_swin_b.in1k",
             "agent_cswin_b_384": "agent_cswin_b.in1k"}


def test_every_finetune_config_names_its_weights():
    from visionattn.train import load_config

    found = {p.stem: load_config(p)["finetune_from"] for p in CONFIGS.glob("*.yaml")}
    assert {k: v for k, v in found.items() if v} == FINETUNES
    assert load_config(CONFIGS / "agent_cswin_b_384.yaml")["starting_weights_ema"]


@pytest.mark.parametrize("name", sorted(FINETUNES))
def test_finetune_refuses_to_start_without_its_weights(train, digits16, tmp_path, capsys, name):
    out = tmp_path / "run"
    rc = train(["--config", str(CONFIGS / f"{name}.yaml"), f"data_dir={digits16}", f"output_dir={out}"])
    err = one_line_error(capsys.readouterr().err)
    assert rc == 2 and f"starting from {FINETUNES[name]}" in err and "pretrained=true" in err, err
    assert "initial_checkpoint=FILE" in err and not out.exists()


# ----------------------------------------------------------------------------------------------- --print-recipe
def test_print_recipe_sets_the_run_beside_the_official_one(train, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert train(["--config", str(CONFIGS / "slab_cswin_s.yaml"), "--print-recipe"]) == 0
    out = capsys.readouterr().out
    rows = {line[:22].strip(): line[22:].split() for line in out.splitlines()[2:9]}
    assert rows["processes"] == ["4", "8"] and rows["global batch"] == ["512", "1024"]
    assert rows["lr"] == ["0.0005", "0.001"] and rows["warmup_lr"] == ["1e-06", "2e-06"]
    assert rows["min_lr"] == ["1e-05", "2e-05"]
    assert "PRepBN LN->BN" in out and "120000 steps" in out and "random initialisation" in out
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert train(["--config", str(CONFIGS / "dinat_large.yaml"), "--print-recipe", "batch_size=32"]) == 0
    out = capsys.readouterr().out
    assert "MISSING: fine-tune from dinat_large.in22k" in out and "constant, 30 epochs" in out
    assert "lr is absolute" in out and "top-1 86.6" in out
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_effective_lr_scaling():
    from visionattn.train import effective, load_config

    agent = load_config(CONFIGS / "agent_swin_t.yaml")
    e = effective(agent, 8)
    assert e["global_batch"] == 1024 and e["lr"] == pytest.approx(1e-3)
    assert e["warmup_lr"] == pytest.approx(1e-6) and e["min_lr"] == pytest.approx(1e-5)
    nat = load_config(CONFIGS / "nat_tiny.yaml")
    assert effective(nat, 2)["lr"] == 1e-3 and effective(nat, 2)["warmup_lr"] == 1e-6
    biformer = load_config(CONFIGS / "biformer_s.yaml")
    e = effective(biformer, 8)
    assert e["lr"] == pytest.approx(1e-3) and e["min_lr"] == 1e-5


# ------------------------------------------------------------------------------------------- trainer features
def _nat_tiny(**kw):
    import timm

    import visionattn  # noqa: F401

    return timm.create_model("nat_mini", num_classes=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                             kernel_size=3, **kw)


def test_no_weight_decay_key_replaces_the_models_list():
    from timm.optim import create_optimizer_v2

    from visionattn.train import DEFAULTS
    from visionattn.train.loop import param_group_fn

    model = _nat_tiny()
    rpb = model.stages[0].blocks[0].attn.rpb

    def decay_of(no_wd):
        cfg = {**DEFAULTS, "weight_decay": 0.05, "no_weight_decay": no_wd}
        opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, param_group_fn=param_group_fn(cfg))
        return {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}

    assert decay_of(None)[id(rpb)] == 0.0  # the model's no_weight_decay() (timm's default)
    assert decay_of([])[id(rpb)] == 0.05  # as the official NAT trainer: RPB decayed
    assert decay_of(["*rpb"])[id(rpb)] == 0.0
    assert decay_of([])[id(model.stages[0].blocks[0].norm1.weight)] == 0.0  # 1-D params always exempt


def test_train_interpolation_applies_to_the_training_transform_only():
    from visionattn.train import DEFAULTS
    from visionattn.train.data import eval_transform, train_transform

    data_cfg = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
                "crop_pct": 0.875, "crop_mode": "center"}
    crop = train_transform({**DEFAULTS, "train_interpolation": "random"}, data_cfg).transforms[0]
    assert isinstance(crop.interpolation, (tuple, list)) and len(crop.interpolation) == 2  # bilinear or bicubic
    assert "bicubic" in repr(eval_transform(data_cfg)).lower()
    crop = train_transform({**DEFAULTS, "train_interpolation": None}, data_cfg).transforms[0]
    assert "bicubic" in str(crop.interpolation).lower()


def test_trainer_loop_knows_no_model_family():
    """Issue 25: the loop calls a generic per-step hook; each config key is defined once."""
    loop = (ROOT / "visionattn" / "train" / "loop.py").read_text()
    assert "set_prepbn_step" not in loop and "layers.prepbn" not in loop and "set_train_step" in loop
    config = (ROOT / "visionattn" / "train" / "config.py").read_text()
    assert "_SCHEMA" not in config and "assert set(" not in config
    from visionattn.train import DEFAULTS, KEYS
    from visionattn.train.config import flat

    assert set(flat(DEFAULTS)) == set(KEYS) and all(k.doc for k in KEYS.values())
    from visionattn.layers.prepbn import LinearNorm
    from visionattn.train.model import step_hooks

    norm = LinearNorm(4, step=10)
    assert step_hooks(torch.nn.Sequential(torch.nn.Linear(4, 4), norm)) == [norm]
    norm.set_train_step(3)
    assert int(norm.iter) == 7 and not norm.auto_step


SLAB_TINY = ["model=slab_deit_t", "model_kwargs={embed_dim: 16, depth: 1, num_heads: 1, patch_size: 4, img_size: 16}"]


def _slab_args(digits16, out, *extra):
    tiny = [a for a in TINY if not a.startswith(("model=", "model_kwargs="))]
    return [*tiny, *SLAB_TINY, "prepbn_steps=10", f"data_dir={digits16}", f"output_dir={out}", *extra]


def test_bn_recalibration_passes_are_validated_and_resume(train, digits16, tmp_path, monkeypatch):
    full = tmp_path / "full"
    assert train(_slab_args(digits16, full, "epochs=1", "bn_recalib_epochs=2")) == 0
    rows = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert [r.get("bn_recalib") for r in rows] == [None, 1, 2] and all("top1" in r for r in rows)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["completed"] and summary["bn_recalib_passes"] == 2 and summary["steps"] == 8
    assert summary["best_top1"] == max(r["top1"] for r in rows)
    assert len(list((full / "checkpoints").iterdir())) == 1
    # a crash in the second pass: the resumed run ends as the uninterrupted one
    from visionattn.train import Trainer

    real, calls = Trainer.recalibrate_bn, []

    def crash_on_second(self, epoch):
        calls.append(epoch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, epoch)

    part = tmp_path / "part"
    monkeypatch.setattr(Trainer, "recalibrate_bn", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train(_slab_args(digits16, part, "epochs=1", "bn_recalib_epochs=2"))
    monkeypatch.setattr(Trainer, "recalibrate_bn", real)
    assert train(_slab_args(digits16, part, "epochs=1", "bn_recalib_epochs=2", "resume=auto")) == 0
    a, b = weights(final_weights(full)), weights(final_weights(part))
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not differ, differ[:5]
    assert json.loads((part / "summary.json").read_text())["best_top1"] == summary["best_top1"]


def test_constant_schedule_and_head_clipping_choice(train, digits16, tmp_path):
    out = tmp_path / "run"
    assert train([*TINY, f"data_dir={digits16}", "epochs=1", "sched=constant", "warmup_epochs=0", "lr=0.003",
                  "clip_grad=0.02", "clip_mode=agc", "clip_exclude_head=false", f"output_dir={out}"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(0.003)


def test_distillation_needs_the_teachers_weights(train, digits16, tmp_path, capsys):
    rc = train([*TINY, f"data_dir={digits16}", "epochs=1", "distill.type=hard", "distill.teacher=resnet18",
                f"output_dir={tmp_path / 'run'}"])
    err = one_line_error(capsys.readouterr().err)
    assert rc == 2 and "distill.teacher_checkpoint=FILE" in err and "teacher_pretrained=true" in err


def test_configs_readme_tables_every_config(mc):
    text = (CONFIGS / "README.md").read_text()
    for path in CONFIGS.glob("*.yaml"):
        assert f"[{path.stem}.yaml]({path.stem}.yaml)" in text
    assert "| [dinat_large.yaml](dinat_large.yaml) | 86.6 | dinat_large.in22k_ft_in1k |" in text


def test_no_weight_decay_patterns_name_real_parameters():
    """Each family's exemption list (the official trainer's names, in our parameter names) matches parameters."""
    import fnmatch

    import timm

    from visionattn.train import load_config

    lists = {}
    for path in CONFIGS.glob("*.yaml"):
        names = load_config(path)["no_weight_decay"]
        assert names is not None, path.name  # every recipe says which parameters skip weight decay
        if names:
            lists.setdefault(tuple(names), []).append(path.stem)
    assert set(lists) == {("pos_embed", "cls_token"), ("*relative_position_bias_table",)}
    for smallest in ("agent_deit_t", "deit_t_prepbn", "agent_swin_t", "swin_t_prepbn"):
        names = load_config(CONFIGS / f"{smallest}.yaml")["no_weight_decay"]
        params = [n for n, _ in timm.create_model(smallest).named_parameters()]
        hit = [p for p in names if any(fnmatch.fnmatch(n, p) for n in params)]
        assert hit and (hit == names or smallest.startswith(("slab", "deit"))), (smallest, names, hit)
