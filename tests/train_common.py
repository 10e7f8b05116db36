"""Shared pieces of the trainer tests: the tiny config, the entry points, and run-directory readers."""
from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# Tiny NAT (no BatchNorm) on 16x16 digits: fast and deterministic on CPU.
TINY = [
    "model=nat_mini", "model_kwargs={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 2, 4, 8], kernel_size: 3}",
    "img_size=16", "crop_pct=1.0", "interpolation=bilinear", "batch_size=16", "workers=0", "pin_memory=false",
    "warmup_epochs=1", "warmup_lr=1e-4", "lr=2e-3", "min_lr=1e-5", "hflip=0.0", "color_jitter=0.0", "threads=1",
    "seed=3", "deterministic=true", "log_interval=1",
]


def train_main():
    from visionattn.train import train_main

    return train_main


def validate_main():
    from visionattn.train import validate_main

    return validate_main


def make_digits(root: Path) -> Path:
    from visionattn.data import digits_to_folder

    # 160 images -> 130 train (8 steps of 16) / 30 val
    return digits_to_folder(root, size=16, limit=160, val_fraction=0.2)


def weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def final_weights(run: Path, ema: bool = False) -> Path:
    """The weights of a run's last checkpoint (checkpoints/step-N/model.safetensors; last.safetensors in the
    layout of earlier versions, so the tests can be run against them)."""
    steps = sorted((run / "checkpoints").glob("step-*"))
    if steps:
        return steps[-1] / ("model_ema.safetensors" if ema else "model.safetensors")
    return run / ("last_ema.safetensors" if ema else "last.safetensors")


def state_file(run: Path) -> Path:
    steps = sorted((run / "checkpoints").glob("step-*"))
    return steps[-1] / "state.pt" if steps else run / "last_state.pt"


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
    worst = 0.0
    for k in a:
        if a[k].is_floating_point():
            worst = max(worst, (a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0)
        elif not torch.equal(a[k], b[k]):
            worst = float("inf")
    return worst


def one_line_error(err: str) -> str:
    err = err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-2000:]
    return err
