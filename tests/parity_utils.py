"""Reading the official-code parity fixtures (see the fixtures' README)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def parity_dir() -> Path | None:
    root = Path(os.environ.get("VISIONATTN_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))
    return root if root.is_dir() else None


def case_names(family: str, prefix: str = "") -> list[str]:
    """Every case of a family (optionally starting with `prefix`); [] when the fixtures are absent."""
    root = parity_dir()
    if root is None or not (root / family).is_dir():
        return []
    return sorted(p.stem for p in (root / family).glob(f"{prefix}*.json"))


def manifest_names(family: str) -> list[str]:
    root = parity_dir()
    if root is None or not (root / family / "manifests").is_dir():
        return []
    return sorted(p.stem for p in (root / family / "manifests").glob("*.json"))


def load_case(family: str, name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(meta, tensors, state_dict): tensors has `input` and the outputs; state_dict is in official order."""
    from safetensors import safe_open

    root = parity_dir()
    if root is None:
        pytest.skip("parity fixtures not found (set VISIONATTN_PARITY_DIR)")
    meta = json.loads((root / family / f"{name}.json").read_text())
    path = root / family / f"{name}.safetensors"
    tensors, sd = {}, {}
    with safe_open(str(path), framework="pt") as f:
        order = json.loads((f.metadata() or {}).get("state_dict_order", "[]"))
        for k in f.keys():
            if k.startswith("state_dict."):
                sd[k[len("state_dict."):]] = f.get_tensor(k)
            else:
                tensors[k] = f.get_tensor(k)
    if order:
        sd = {k: sd[k] for k in order}
    return meta, tensors, sd


def load_manifest(family: str, name: str) -> dict:
    root = parity_dir()
    if root is None:
        pytest.skip("parity fixtures not found (set VISIONATTN_PARITY_DIR)")
    return json.loads((root / family / "manifests" / f"{name}.json").read_text())


_DTYPES = {
    "float32": torch.float32, "torch.float32": torch.float32,
    "float16": torch.float16, "torch.float16": torch.float16,
    "int64": torch.int64, "torch.int64": torch.int64,
    "long": torch.int64, "int32": torch.int32, "torch.int32": torch.int32,
    "bool": torch.bool, "torch.bool": torch.bool,
}


def manifest_state_dict(manifest: dict) -> dict[str, torch.Tensor]:
    """A state dict with exactly the manifest's keys, shapes and dtypes (values are zeros)."""
    out = {}
    for key, shape, dtype in manifest["state_dict"]:
        out[key] = torch.zeros(shape, dtype=_DTYPES.get(str(dtype), torch.float32))
    return out


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()
