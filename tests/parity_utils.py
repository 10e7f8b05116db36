"""Reading the official-code parity fixtures (see the fixtures' README)."""
from __future__ import annotations

import functools
import importlib
import json
import os
import re
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI sets this: there, missing fixtures are an error, never a skip
REQUIRED = os.environ.get("VISIONATTN_REQUIRE_PARITY", "0") == "1"


class ParityFixturesMissing(RuntimeError):
    pass


def _missing(what: str):
    msg = f"parity fixtures not found: {what} (set VISIONATTN_PARITY_DIR)"
    if REQUIRED:
        raise ParityFixturesMissing(msg + "; VISIONATTN_REQUIRE_PARITY=1 makes this an error")
    pytest.skip(msg)


def parity_dir() -> Path | None:
    root = Path(os.environ.get("VISIONATTN_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity"))
    if root.is_dir():
        return root
    if REQUIRED:
        raise ParityFixturesMissing(f"parity fixtures not found at {root}; VISIONATTN_REQUIRE_PARITY=1 makes this "
                                    "an error")
    return None


def case_names(family: str, prefix: str = "") -> list[str]:
    """Every case of a family (optionally starting with `prefix`); [] when the fixtures are absent locally.

    With VISIONATTN_REQUIRE_PARITY=1 (CI) an absent folder or an empty selection raises instead.
    """
    root = parity_dir()
    names = [] if root is None else sorted(p.stem for p in (root / family).glob(f"{prefix}*.json"))
    if not names and REQUIRED:
        raise ParityFixturesMissing(f"no parity case {family}/{prefix}*.json under {root}")
    return names


def manifest_names(family: str) -> list[str]:
    root = parity_dir()
    names = [] if root is None else sorted(p.stem for p in (root / family / "manifests").glob("*.json"))
    if not names and REQUIRED:
        raise ParityFixturesMissing(f"no manifest under {root}/{family}/manifests")
    return names


def load_case(family: str, name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(meta, tensors, state_dict): tensors has `input` and the outputs; state_dict is in official order."""
    from safetensors import safe_open

    root = parity_dir()
    if root is None or not (root / family / f"{name}.json").is_file():
        _missing(f"{family}/{name}")
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
    if root is None or not (root / family / "manifests" / f"{name}.json").is_file():
        _missing(f"{family}/manifests/{name}")
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


# ---------------------------------------------------------------------------------------------------------------
# The fixtures' JSON cannot hold Python objects, so `official_kwargs` describes callables as strings
# ("partial(nn.LayerNorm, eps=1e-6)", "default (...); not passed"). This is the one decoder: it returns the
# keyword arguments the official constructor received, as objects (our equivalents of the official classes),
# which is what `visionattn.from_official` takes from a user.

_LN = re.compile(r"^partial\(nn\.LayerNorm, eps=([0-9.e-]+)\)$")
_LINEAR_NORM = re.compile(r"partial\(LinearNorm, norm1=(partial\(nn\.LayerNorm, eps=[0-9.e-]+\)|nn\.LayerNorm)"
                          r"(?: \[eps [0-9.e-]+\])?, norm2=RepBN(?:, step=(\d+))?\)")


def _official_layer(name: str):
    return getattr(importlib.import_module("visionattn.official.nat"), name)


def _decode(value):
    from torch import nn

    from visionattn.layers.prepbn import LinearNorm, RepBN

    if not isinstance(value, str):
        return value
    m = _LN.match(value)
    if m:
        return functools.partial(nn.LayerNorm, eps=float(m.group(1)))
    if value == "nn.BatchNorm2d":
        return nn.BatchNorm2d
    m = _LINEAR_NORM.search(value)
    if m:
        ln = _decode(m.group(1)) if m.group(1).startswith("partial") else nn.LayerNorm
        kw = dict(norm1=ln, norm2=RepBN)
        if m.group(2):
            kw["step"] = int(m.group(2))
        return functools.partial(LinearNorm, **kw)
    if value.startswith("RepBN"):
        return RepBN
    if value.startswith("dinats.NATransformerLayer"):
        return _official_layer("NATransformerLayer")
    if value.startswith("isotropic.VisionTransformerLayer"):
        return _official_layer("VisionTransformerLayer")
    return value  # a genuine string argument of the official API ("AAMB2", "96-48-24-12", "qkvo", ...)


def official_kwargs(meta: dict) -> dict:
    """The case's `official_kwargs` as the official constructor received them (see the comment above)."""
    out = {}
    for k, v in meta["official_kwargs"].items():
        if isinstance(v, str) and v.startswith("default") and v.rstrip().endswith("not passed"):
            continue
        out[k] = _decode(v)
    return out
