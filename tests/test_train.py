"""visionattn.train (tools/train.py, tools/validate.py), configs and the demo: resume, DDP equivalence, errors,
configs, the package layout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_common import ROOT, TINY, make_digits, train_main, validate_main
from train_common import weights as _weights


@pytest.fixture(scope="module")
def train_mod():
    return train_main()


@pytest.fixture(scope="module")
def digits16(tmp_path_factory):
    # 160 images -> 130 train (8 steps of 16) / 30 val
    return make_digits(tmp_path_factory.mktemp("digits16"))


def _last(run: Path, name: str = "model.safetensors") -> Path:
    """A file of the run's newest checkpoint (checkpoints/step-N/)."""
    steps = sorted((run / "checkpoints").glob("step-*"))
    assert steps, f"no checkpoint in {run}"
    return steps[-1] / name


def _assert_same(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def _run(train_mod, *overrides):
    return train_mod([*TINY, *overrides])


def test_digits_folder(digits16):
    train = sorted(p.name for p in (digits16 / "train").iterdir())
    assert train == [str(i) for i in range(10)]
    n_train = sum(1 for _ in (digits16 / "train").rglob("*.png"))
    n_val = sum(1 for _ in (digits16 / "val").rglob("*.png"))
    assert n_train + n_val == 160 and n_val >= 10


def test_resume_equals_uninterrupted(train_mod, digits16, tmp_path):
    # random augmentation and drop path on: the restored RNG states must reproduce them too
    common = [f"data_dir={digits16}", "epochs=2", "drop_path=0.1", "scale=[0.7, 1.0]", "model_ema=true",
              "model_ema_decay=0.9"]
    assert _run(train_mod, *common, f"output_dir={tmp_path / 'full'}") == 0
    assert _run(train_mod, *common, f"output_dir={tmp_path / 'part'}", "max_steps=5") == 0
    state = torch.load(_last(tmp_path / "part", "state.pt"), weights_only=True)
    assert state["step"] == 5 and state["epoch"] == 0 and state["micro_in_epoch"] == 5
    assert not json.loads((tmp_path / "part" / "summary.json").read_text())["completed"]
    assert _run(train_mod, *common, f"output_dir={tmp_path / 'part'}", "resume=auto") == 0
    full, resumed = _weights(_last(tmp_path / "full")), _weights(_last(tmp_path / "part"))
    _assert_same(full, resumed, atol=1e-6)
    _assert_same(_weights(_last(tmp_path / "full", "model_ema.safetensors")),
                 _weights(_last(tmp_path / "part", "model_ema.safetensors")), atol=1e-6)
    # the changed max_steps was applied and recorded
    rec = json.loads((tmp_path / "part" / "run.json").read_text())
    assert [h["event"] for h in rec["history"]] == ["start", "resume"]
    assert rec["history"][1]["config_changes"] == {"max_steps": [5, None], "resume": [None, "auto"]}
    s_full = json.loads((tmp_path / "full" / "summary.json").read_text())
    s_res = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert s_res["completed"] and s_res["steps"] == s_full["steps"] == 16
    assert s_res["final_top1"] == pytest.approx(s_full["final_top1"])
    for key in ("model", "epochs", "best_top1", "final_top1", "wall_s"):
        assert key in s_full
    assert (tmp_path / "full" / "best.safetensors").exists()
    assert len((tmp_path / "full" / "log.jsonl").read_text().splitlines()) == 2


def test_ddp_matches_single_process(train_mod, digits16, tmp_path):
    """2 gloo processes x batch 8 == 1 process x batch 16 after K steps (no BN, no random augmentation)."""
    common = [f"data_dir={digits16}", "epochs=1", "max_steps=4", "no_aug=true", "drop_path=0.0", "opt=sgd",
              "lr=0.05", "warmup_epochs=0", "weight_decay=1e-4"]
    assert _run(train_mod, *common, "batch_size=16", f"output_dir={tmp_path / 'one'}") == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tools" / "train.py"), *TINY, *common, "batch_size=8", f"output_dir={tmp_path / 'two'}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    st = torch.load(_last(tmp_path / "two", "state.pt"), weights_only=True)
    assert st["world_size"] == 2 and st["step"] == 4 and len(st["rng"]) == 2
    _assert_same(_weights(_last(tmp_path / "one")), _weights(_last(tmp_path / "two")), atol=1e-5)


def test_checkpoint_is_weights_only(train_mod, digits16, tmp_path):
    assert _run(train_mod, f"data_dir={digits16}", "epochs=1", "max_steps=2", f"output_dir={tmp_path}") == 0
    state = torch.load(_last(tmp_path, "state.pt"), weights_only=True)
    assert {"optimizer", "scheduler", "rng", "step", "config", "classes"} <= set(state)
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)
    assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name]  # atomic writes leave no temp files


@pytest.mark.parametrize("override, needle", [
    ("lrr=0.1", "unknown config key 'lrr'"),
    ("distill.kind=hard", "unknown config key 'distill.kind'"),
    ("data_dir=/nonexistent/imagenet", "data folder not found"),
    ("model=not_a_model_xyz", "unknown model 'not_a_model_xyz'"),
    ("amp=fp8", "config key 'amp' must be one of"),
])
def test_errors_are_one_line(train_mod, digits16, tmp_path, capsys, override, needle):
    args = [f"data_dir={digits16}", f"output_dir={tmp_path}", override]
    assert train_mod([*TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_missing_config_file(train_mod, capsys):
    assert train_mod(["--config", "/nonexistent.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_checkpoint(train_mod, digits16, tmp_path, capsys, monkeypatch):
    base = [f"data_dir={digits16}", "epochs=2", f"output_dir={tmp_path}"]
    assert _run(train_mod, *base, "max_steps=8") == 0  # one full epoch -> last checkpoint
    last = _last(tmp_path)
    before = last.read_bytes()
    capsys.readouterr()
    # a NaN loss in the first resumed step (the loss module's output, whatever the data)
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", lambda self, x, y: x.sum() * float("nan"))
    assert _run(train_mod, *base, "resume=auto") == 3
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "last good checkpoint kept" in err and "Traceback" not in err
    assert str(last.parent) in err and _last(tmp_path) == last and last.read_bytes() == before
    assert torch.load(_last(tmp_path, "state.pt"), weights_only=True)["step"] == 8


def test_validate_tool(train_mod, digits16, tmp_path, capsys):
    assert _run(train_mod, f"data_dir={digits16}", "epochs=1", f"output_dir={tmp_path}") == 0
    capsys.readouterr()
    val = validate_main()
    assert val(["--checkpoint", str(tmp_path), *TINY, f"data_dir={digits16}"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "summary.json").read_text())
    n_val = sum(1 for _ in (digits16 / "val").rglob("*.png"))
    assert res["count"] == n_val and res["top1"] == pytest.approx(summary["best_top1"], abs=1e-3)
    assert val(["--checkpoint", str(tmp_path / "nope.safetensors"), *TINY, f"data_dir={digits16}"]) == 2


def test_prepbn_step_driven_by_trainer(train_mod, digits16, tmp_path):
    """SLAB: the trainer's step sets the PRepBN blend; the counter is saved in the weights and resumes."""
    args = ["model=slab_deit_t", "model_kwargs={embed_dim: 16, depth: 1, num_heads: 1, patch_size: 4, img_size: 16}",
            "prepbn_steps=10", f"data_dir={digits16}", "epochs=1", "max_steps=3", f"output_dir={tmp_path}"]
    tiny = [a for a in TINY if not a.startswith(("model=", "model_kwargs="))]
    assert train_mod([*tiny, *args]) == 0
    w = _weights(_last(tmp_path))
    iters = {k: int(v) for k, v in w.items() if k.endswith(".iter")}
    totals = {k: int(v) for k, v in w.items() if k.endswith(".total_step")}
    assert iters and set(totals.values()) == {10}
    # the last forward ran at step 2 (0-based): iter = T - 2
    assert set(iters.values()) == {8}


def test_configs_cover_every_zoo_model():
    import timm

    import visionattn
    from visionattn.train import load_config

    missing = []
    for name in visionattn.list_models():
        path = ROOT / "configs" / "imagenet" / f"{name}.yaml"
        if not path.exists():
            missing.append(str(name))
            continue
        cfg = load_config(path)
        assert cfg["model"] == name and timm.is_model(cfg["model"]), path
    assert not missing, f"no config for {missing}: run tools/make_configs.py"
    for path in (ROOT / "configs" / "demo").glob("*.yaml"):
        assert timm.is_model(load_config(path)["model"])


def test_distillation_loss():
    from visionattn.train import DistillationLoss

    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    out, out_dist = torch.randn(5, 3), torch.randn(5, 3)
    base = torch.nn.CrossEntropyLoss()
    hard = DistillationLoss(base, teacher, "hard", 0.5, 1.0)(x, (out, out_dist), y)
    ref = 0.5 * base(out, y) + 0.5 * base(out_dist, teacher(x).argmax(1))
    torch.testing.assert_close(hard, ref)
    soft = DistillationLoss(base, teacher, "soft", 0.3, 2.0)(x, (out, out_dist), y)
    t = teacher(x).detach()
    kl = (torch.softmax(t / 2, 1) * (torch.log_softmax(t / 2, 1) - torch.log_softmax(out_dist / 2, 1))).sum() / 5
    torch.testing.assert_close(soft, 0.7 * base(out, y) + 0.3 * kl * 4)


@pytest.mark.slow
def test_demo_reaches_95(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--output-dir", str(tmp_path / "demo")],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("demo: model=")
    fields = dict(kv.split("=", 1) for kv in last.split()[1:])
    assert float(fields["top1"]) >= 95.0 and float(fields["onnx_max_abs_diff"]) < 1e-3


def test_tools_are_thin_and_edit_no_sys_path():
    """The trainer lives in the package; the tools parse arguments and make one call."""
    for name in ("train", "validate", "demo", "make_configs", "convert_checkpoint"):
        text = (ROOT / "tools" / f"{name}.py").read_text()
        assert "sys.path" not in text, name
    for name in ("train", "validate", "convert_checkpoint"):
        code = [line for line in (ROOT / "tools" / f"{name}.py").read_text().split('"""')[-1].splitlines()
                if line.strip()]
        assert len(code) <= 6, (name, code)
    import visionattn

    assert not (Path(visionattn.__file__).parent / "train_utils.py").exists()


def test_python_m_visionattn_train_reports_errors_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "visionattn.train", "lrr=0.1", f"output_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "unknown config key 'lrr' (did you mean 'lr'?)" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "visionattn.train", "--bogus-flag"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
