"""tools/train.py, tools/validate.py, configs and the demo: resume, DDP equivalence, errors, configs."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Tiny NAT (no BatchNorm) on 16x16 digits: fast and deterministic on CPU.
TINY = [
    "model=nat_mini", "model_kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8], kernel_size: 3}",
    "img_size=16", "crop_pct=1.0", "interpolation=bilinear", "batch_size=16", "workers=0", "pin_memory=false",
    "warmup_epochs=1", "warmup_lr=1e-4", "lr=2e-3", "min_lr=1e-5", "hflip=0.0", "color_jitter=0.0", "threads=1",
    "seed=3", "deterministic=true", "log_interval=1",
]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_test_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def train_mod():
    return _tool("train")


@pytest.fixture(scope="module")
def digits16(tmp_path_factory):
    from visionattn.data import digits_to_folder

    # 160 images -> 130 train (8 steps of 16) / 30 val
    return digits_to_folder(tmp_path_factory.mktemp("digits16"), size=16, limit=160, val_fraction=0.2)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


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
    return train_mod.main([*TINY, *overrides])


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
    assert train_mod.main([*TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_missing_config_file(train_mod, capsys):
    assert train_mod.main(["--config", "/nonexistent.yaml"]) == 2
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
    val = _tool("validate")
    assert val.main(["--checkpoint", str(tmp_path), *TINY, f"data_dir={digits16}"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((tmp_path / "summary.json").read_text())
    n_val = sum(1 for _ in (digits16 / "val").rglob("*.png"))
    assert res["count"] == n_val and res["top1"] == pytest.approx(summary["best_top1"], abs=1e-3)
    assert val.main(["--checkpoint", str(tmp_path / "nope.safetensors"), *TINY, f"data_dir={digits16}"]) == 2


def test_prepbn_step_driven_by_trainer(train_mod, digits16, tmp_path):
    """SLAB: the trainer's step sets the PRepBN blend; the counter is saved in the weights and resumes."""
    args = ["model=slab_deit_t", "model_kwargs={embed_dim: 16, depth: 1, num_heads: 1, patch_size: 4, img_size: 16}",
            "prepbn_steps=10", f"data_dir={digits16}", "epochs=1", "max_steps=3", f"output_dir={tmp_path}"]
    tiny = [a for a in TINY if not a.startswith(("model=", "model_kwargs="))]
    assert train_mod.main([*tiny, *args]) == 0
    w = _weights(_last(tmp_path))
    iters = {k: int(v) for k, v in w.items() if k.endswith(".iter")}
    totals = {k: int(v) for k, v in w.items() if k.endswith(".total_step")}
    assert iters and set(totals.values()) == {10}
    # the last forward ran at step 2 (0-based): iter = T - 2
    assert set(iters.values()) == {8}


def test_configs_cover_every_zoo_model():
    import timm

    import visionattn
    from visionattn.train_utils import load_config

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
    from visionattn.train_utils import DistillationLoss

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
