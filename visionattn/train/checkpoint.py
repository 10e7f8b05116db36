"""Run checkpoints: one step directory written whole, verified when read; weights files; RNG states.

`<output_dir>/checkpoints/step-NNNNNNNN/` holds `model.safetensors`, `model_ema.safetensors` (EMA on),
`state.pt` (a `torch.save` dict of tensors, numbers, strings, lists and dicts only, loadable with
`weights_only=True`: optimizer, scheduler, grad scaler, counters, best accuracies, RNG states of every rank,
config, class names) and `manifest.json` (step, file sizes). `write_checkpoint` writes them into a temporary
directory and renames it into place, then removes the older checkpoints: a kill at any moment leaves the
previous checkpoint or the new one complete, never a mix. `read_checkpoint` checks that the directory, the
manifest, the state and every weights file carry one step and that no file is short.
"""
from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as _safetensors_bytes
from torch import nn

from ..checkpoint import CheckpointError, load_state_dict_file, unwrap_state_dict
from .config import ConfigError

__all__ = [
    "CHECKPOINTS",
    "write_checkpoint",
    "read_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "clean_checkpoints",
    "checkpoint_step",
    "checkpoint_dir",
    "remove_checkpoints",
    "weights_file",
    "load_weights",
    "save_weights",
    "write_safetensors",
    "atomic_save",
    "write_text_atomic",
    "get_rng_state",
    "set_rng_state",
    "plain",
]


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file or directory to disk (a finished rename survives a power cut, not only a kill)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def atomic_save(write, path: str | os.PathLike) -> None:
    """Call `write(tmp_path)` then rename over `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    atomic_save(lambda p: Path(p).write_text(text), path)


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None,
                 atomic: bool = True):
    sd = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if atomic:
        atomic_save(lambda p: write_safetensors(sd, p, meta), path)
    else:
        write_safetensors(sd, path, meta)


def write_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict) -> None:
    """Write a safetensors file at exactly `path`. safetensors' own `save_file` (0.8 here) writes a randomly named
    `.tmpXXXXXX` beside the target and renames it: a kill in between would leave a file no cleanup can tell
    from a user's, so the bytes are made in memory and written here."""
    data = _safetensors_bytes(dict(state_dict), metadata=metadata)
    with open(path, "wb") as f:
        f.write(data)


def weights_metadata(path: str | os.PathLike) -> dict:
    """The string metadata of a safetensors file (step, model, ...)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})(?:-(\d+))?$")
_TMP_STEP_DIR = re.compile(r"^\.tmp-step-\d{8,}(?:-\d+)?-\d+$")
_SAFETENSORS_TMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")
# what a checkpoint directory holds (manifest first: removal starts with it, so a half-removed directory is
# never taken for a checkpoint)
_CKPT_FILES = (MANIFEST, "model.safetensors", "model_ema.safetensors", "state.pt")


def _step_key(p: Path) -> tuple[int, int]:
    m = _STEP_DIR.match(p.name)
    return int(m[1]), int(m[2] or 0)


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoint directories of a run, oldest first (complete: renamed into place with a manifest)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and (p / MANIFEST).is_file()]
    return sorted(found, key=_step_key)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _remove_checkpoint_dir(p: Path) -> None:
    names = list(_CKPT_FILES)
    if _TMP_STEP_DIR.match(p.name):  # earlier versions let safetensors write its own temporary file in there
        names += [n for n in os.listdir(p) if _SAFETENSORS_TMP.match(n)]
    for name in names:
        try:
            os.unlink(p / name)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(p)
    except OSError:
        pass  # something we did not write is inside: leave it


def write_checkpoint(run_dir: str | os.PathLike, step: int, files: Mapping[str, Any]) -> Path:
    """Write one checkpoint as a whole: `files` ({name: write(path)}) and a manifest go into a temporary
    directory that is then renamed to `checkpoints/step-<step>`; the older checkpoints are removed after.

    A kill at any point leaves the previous checkpoint or the new one complete (plus temporary leftovers that
    `RunDir.clean_stale` removes), never one made of two steps."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    # the same step written again (BN recalibration passes take no optimizer step): a higher suffix, the newer wins
    same = [_step_key(p)[1] for p in root.iterdir() if _STEP_DIR.match(p.name) and _step_key(p)[0] == step]
    final = root / (f"step-{step:08d}-{max(same) + 1}" if same else f"step-{step:08d}")
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        _remove_checkpoint_dir(tmp)
    os.mkdir(tmp)
    sizes = {}
    for name, write in files.items():
        if name not in _CKPT_FILES or name == MANIFEST:
            raise ValueError(f"unexpected checkpoint file name {name!r}")
        write(str(tmp / name))
        _fsync(tmp / name)
        sizes[name] = os.path.getsize(tmp / name)
    manifest = {"format": "visionattn.checkpoint", "version": 1, "step": step, "files": sizes}
    with open(tmp / MANIFEST, "w") as f:
        f.write(json.dumps(manifest))
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)
    os.rename(tmp, final)  # the commit
    _fsync(root)
    for old in list_checkpoints(run_dir):
        if _step_key(old) < _step_key(final):
            _remove_checkpoint_dir(old)
    return final


def clean_checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """Remove what killed writes left under `checkpoints/`: temporary directories, half-removed ones (no
    manifest) and checkpoints older than the newest. Returns the names removed."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    latest = latest_checkpoint(run_dir)
    removed = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        stale = _TMP_STEP_DIR.match(p.name) or (
            _STEP_DIR.match(p.name) and (latest is None or _step_key(p) < _step_key(latest)
                                         or not (p / MANIFEST).is_file()))
        if stale:
            _remove_checkpoint_dir(p)
            removed.append(f"{CHECKPOINTS}/{p.name}")
    return removed


def remove_checkpoints(run_dir: str | os.PathLike) -> None:
    """Remove every checkpoint of a run (the newest last) and the emptied folder."""
    clean_checkpoints(run_dir)
    for p in list_checkpoints(run_dir):
        _remove_checkpoint_dir(p)
    try:
        os.rmdir(Path(run_dir) / CHECKPOINTS)
    except OSError:
        pass


def checkpoint_step(ckpt: str | os.PathLike) -> int:
    """The step a checkpoint directory's name carries."""
    return _step_key(Path(ckpt))[0]


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory a path names: a run directory (its newest checkpoint), a checkpoint directory,
    or a file inside one. ConfigError otherwise."""
    path = Path(path)
    if path.is_file():
        if path.name in _CKPT_FILES and _STEP_DIR.match(path.parent.name):
            return path.parent
        raise ConfigError(f"expected a run directory or a checkpoint directory (<run>/{CHECKPOINTS}/step-NNNNNNNN), "
                          "got a file")
    if not path.is_dir():
        raise ConfigError("no such run or checkpoint directory")
    if _STEP_DIR.match(path.name):
        if not (path / MANIFEST).is_file():
            raise ConfigError(f"an incomplete checkpoint directory (no {MANIFEST})")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise ConfigError(f"no checkpoint ({CHECKPOINTS}/step-*) in this directory")
    return latest


def read_checkpoint(ckpt: str | os.PathLike) -> dict:
    """The state of a checkpoint directory, verified: its manifest names the files, their sizes match, and the
    directory, the manifest, `state.pt` and every weights file carry the same step. Adds `weights_path` /
    `ema_path` (Path or None). ConfigError naming the directory otherwise."""
    ckpt = Path(ckpt)
    m = _STEP_DIR.match(ckpt.name)
    if m is None or not ckpt.is_dir():
        raise ConfigError(f"{ckpt} is not a checkpoint directory (<run>/{CHECKPOINTS}/step-NNNNNNNN)")
    step = int(m[1])

    def damaged(why: str) -> ConfigError:
        return ConfigError(f"checkpoint {ckpt} is damaged: {why}; move it away to resume from an older one, or "
                           "start over (overwrite=true)")

    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise damaged(f"{MANIFEST} is missing or unreadable") from None
    if manifest.get("format") != "visionattn.checkpoint" or manifest.get("step") != step:
        raise damaged(f"{MANIFEST} does not describe step {step}")
    if "state.pt" not in files or "model.safetensors" not in files:
        raise damaged(f"{MANIFEST} names no state.pt / model.safetensors")
    for name, size in files.items():
        p = ckpt / name
        if name not in _CKPT_FILES or not p.is_file():
            raise damaged(f"{name} is missing")
        if p.stat().st_size != size:
            raise damaged(f"{name} has {p.stat().st_size} bytes, the manifest says {size} (truncated?)")
    try:
        state = load_state_dict_file(ckpt / "state.pt")
        metas = {name: weights_metadata(ckpt / name) for name in files if name.endswith(".safetensors")}
    except (CheckpointError, OSError) as e:
        raise damaged(str(e)) from None
    except Exception as e:  # safetensors' own error type
        raise damaged(f"{type(e).__name__}: {e}") from None
    if not isinstance(state, Mapping) or state.get("step") != step:
        raise damaged(f"state.pt holds step {state.get('step') if isinstance(state, Mapping) else None}, "
                      f"not {step}")
    for name, meta in metas.items():
        if meta.get("step") != str(step):
            raise damaged(f"{name} holds the weights of step {meta.get('step')}, not {step}")
    state = dict(state)
    state["weights_path"] = ckpt / "model.safetensors"
    state["ema_path"] = ckpt / "model_ema.safetensors" if "model_ema.safetensors" in files else None
    return state


def weights_file(path: str | os.PathLike, ema: bool = False) -> Path:
    """The weights a path stands for: a file itself; a checkpoint directory's model(_ema).safetensors; a run
    directory's best(_ema).safetensors, else its newest checkpoint's weights."""
    p = Path(path)
    if not p.is_dir():
        if not p.exists():
            raise ConfigError(f"checkpoint not found: {p}")
        return p
    names = ("model_ema.safetensors", "model.safetensors") if ema else ("model.safetensors",)
    if _STEP_DIR.match(p.name) and (p / MANIFEST).is_file():
        dirs = [p]
    else:
        for name in (("best_ema.safetensors",) if ema else ()) + ("best.safetensors",):
            if (p / name).is_file():
                return p / name
        latest = latest_checkpoint(p)
        dirs = [latest] if latest is not None else []
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
    raise ConfigError(f"no weights in {p} (expected best.safetensors or {CHECKPOINTS}/step-*/model.safetensors)")


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True, ema: bool = False) -> nn.Module:
    """Load model weights from a safetensors file, a weights-only torch file (trainer envelopes unwrapped), a
    checkpoint directory or a run directory (`weights_file`). Every failure is a one-line ConfigError."""
    p = weights_file(path, ema=ema)
    try:
        sd = unwrap_state_dict(load_state_dict_file(str(p)))
    except (CheckpointError, OSError) as e:
        raise ConfigError(str(e)) from None
    if not sd:
        raise ConfigError(f"checkpoint {p} holds no tensors")
    try:
        missing, unexpected = model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ConfigError(f"checkpoint {p} does not fit model {type(model).__name__}: "
                          f"{' '.join(x.strip() for x in first[:3])[:300]}") from None
    if not strict and (missing or unexpected):
        import warnings

        warnings.warn(f"{p}: {len(missing)} missing and {len(unexpected)} unexpected keys", stacklevel=2)
    return model


def get_rng_state() -> dict:
    """All RNG states as tensors / numbers (weights_only-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain(obj):
    """Reduce a state dict to weights_only-safe types (tensors, numbers, strings, lists, dicts, None)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)

