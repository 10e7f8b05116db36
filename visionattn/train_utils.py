"""Pieces of tools/train.py and tools/validate.py: YAML config with `key=value` overrides, model / data
construction on timm's utilities, evaluation, DeiT distillation loss, the run directory and its checkpoints.

Run directory (`output_dir`), written by rank 0 only:

* `run.json` — marks the folder as a training run: model, class names, and one history entry per start or
  resume (with the config keys changed on resume);
* `checkpoints/step-NNNNNNNN/` — the resumable checkpoint, one directory written whole under a temporary name
  and renamed into place (a kill at any moment leaves the previous one or the new one, never a mix):
  `model.safetensors`, `model_ema.safetensors` (EMA on), `state.pt` (a `torch.save` dict of tensors, numbers,
  strings, lists and dicts only, loadable with `weights_only=True`: optimizer, scheduler, grad scaler,
  counters, best accuracies, RNG states, config, class names) and `manifest.json` (step and file sizes).
  Resume reads the newest one and checks the step in every file; older ones are removed once a newer one is
  in place;
* `best.safetensors` / `best_ema.safetensors` — best validation weights, `config.yaml`, `log.jsonl`,
  `summary.json`, `tb/`.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConfigError",
    "DEFAULTS",
    "load_config",
    "apply_overrides",
    "validate_config",
    "build_model",
    "build_dataset",
    "resolve_data",
    "eval_loader",
    "evaluate",
    "DistillationLoss",
    "class_names",
    "eval_classes",
    "write_checkpoint",
    "read_checkpoint",
    "latest_checkpoint",
    "plan_run",
    "RunDir",
    "save_weights",
    "load_weights",
    "get_rng_state",
    "set_rng_state",
    "atomic_save",
]


class ConfigError(ValueError):
    """A bad configuration, data folder or model name: the tools print it as one line and exit non-zero."""


# Every key a config may set, with its default. Nested dicts (distill, model_kwargs) are merged key by key.
DEFAULTS: dict[str, Any] = {
    # model
    "model": None,  # any timm / visionattn model name
    "model_kwargs": {},  # extra kwargs for timm.create_model (e.g. a reduced embed_dim for a demo)
    "pretrained": False,
    "initial_checkpoint": None,  # weights file to start from (safetensors or weights-only torch file)
    "num_classes": None,  # None: number of classes (class_map, else the training split's class folders)
    "drop_rate": None,
    "drop_path": None,  # None: the model's own default (some models take no drop_path_rate)
    "grad_checkpointing": False,
    "channels_last": False,
    "compile": False,
    # data (ImageNet layout: <data_dir>/<train_split>/<class>/*, <data_dir>/<val_split>/<class>/*)
    "data_dir": None,
    "train_split": "train",
    "val_split": "val",
    # class names in label order: a list, a {name: index} mapping, or a .txt (one per line) / .json / .yaml file.
    # None: the training split's class folders (natural sort). Checked against val before the first step.
    "class_map": None,
    "img_size": None,  # None: the model's pretrained_cfg input size
    "interpolation": None,
    "mean": None,
    "std": None,
    "crop_pct": None,
    "batch_size": 128,  # per process; the global batch is batch_size * world_size
    "val_batch_size": None,  # None: batch_size
    "workers": 4,
    "pin_memory": True,
    "no_aug": False,  # training transform without random augmentation (resize + center crop)
    "scale": [0.08, 1.0],
    "ratio": [0.75, 1.3333333333333333],
    "hflip": 0.5,
    "color_jitter": 0.4,
    "aa": None,  # e.g. rand-m9-mstd0.5-inc1 (timm auto_augment string)
    "reprob": 0.0,
    "remode": "pixel",
    "recount": 1,
    "repeated_aug": False,  # timm RepeatAugSampler (3 repeats)
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "smoothing": 0.0,
    # optimisation
    "epochs": 300,
    "opt": "adamw",
    "lr": None,  # absolute lr; None: lr_base * global_batch / lr_base_size
    "lr_base": 5e-4,
    "lr_base_size": 512,
    "opt_eps": None,
    "opt_betas": None,
    "momentum": 0.9,
    "weight_decay": 0.05,
    "layer_decay": None,  # layer-wise lr decay (timm create_optimizer_v2)
    "sched": "cosine",
    "sched_on_updates": True,  # per-iteration schedule (False: per epoch)
    "warmup_epochs": 5,
    "warmup_lr": 1e-6,
    "min_lr": 1e-5,
    "cooldown_epochs": 0,
    "warmup_prefix": False,
    "clip_grad": None,
    "clip_mode": "norm",  # norm | value | agc
    "accum_steps": 1,
    "amp": None,  # None | bf16 | fp16 (fp16 on CUDA only, with GradScaler)
    "model_ema": False,
    "model_ema_decay": 0.9998,
    "model_ema_warmup": False,
    # family specific
    "distill": {"type": "none", "teacher": None, "teacher_checkpoint": None, "teacher_kwargs": {},
                "alpha": 0.5, "tau": 1.0},
    "mesa": 0.0,  # EfficientViM MESA: weight of the soft CE to the EMA's prediction (needs model_ema)
    "mesa_start": 0.25,  # fraction of `epochs` after which MESA is on
    "prepbn_steps": None,  # SLAB PRepBN: LN->BN blend length in optimizer steps (None: the model's own T)
    "prepbn_warm": 0,
    "bn_recalib_epochs": 0,  # SLAB: passes over the training data after training refreshing BN statistics
    # run control
    "output_dir": None,  # None: output/<model>
    "resume": None,  # None | auto | a run directory | a checkpoint directory (<run>/checkpoints/step-N)
    "overwrite": False,  # a fresh run may replace the run already in output_dir (only that run's own files)
    "seed": 42,
    "deterministic": False,
    "max_steps": None,  # stop (with a checkpoint) after this many optimizer steps in total
    "checkpoint_interval": 0,  # also write `last` every N optimizer steps (0: at epoch ends only)
    "eval_interval": 1,  # validate every N epochs (and after the last)
    "log_interval": 50,
    "tensorboard": False,
    "sync_bn": False,
    "find_unused_parameters": False,
    "dist_backend": None,  # None: nccl on CUDA, gloo on CPU
    "device": None,  # None: cuda if available else cpu
    "threads": None,  # torch.set_num_threads (None: torch's default); 1 is fastest for tiny models on busy CPUs
}

def _yaml_loader():
    """SafeLoader that also reads `1e-3` / `5e4` as floats (YAML 1.1 needs a dot: `1.0e-3`)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


def yaml_load(text: str):
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _merge(base: dict, new: Mapping, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        full = f"{where}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {full!r}{_suggest(k, base)}")
        if isinstance(base[k], dict) and k != "model_kwargs" and k != "teacher_kwargs":
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {full!r} must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, f"{full}.")
        elif k in ("model_kwargs", "teacher_kwargs"):
            if v is None:
                v = {}
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {full!r} must be a mapping, got {v!r}")
            out[k] = {**base[k], **v}
        else:
            out[k] = v
    return out


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    """Apply `key=value` strings (values parsed as YAML; dotted keys reach into nested mappings)."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, _, raw = item.partition("=")
        try:
            value = yaml_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e.__class__.__name__})") from None
        parts = key.strip().split(".")
        nested: Any = value
        for p in reversed(parts[1:]):
            nested = {p: nested}
        cfg = _merge(cfg, {parts[0]: nested})
    return cfg


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> dict:
    """DEFAULTS <- YAML file <- overrides, validated. Raises ConfigError with a one-line message."""
    import yaml

    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"config file {p} must hold a mapping of keys, got {type(data).__name__}")
        cfg = _merge(cfg, data)
    cfg = apply_overrides(cfg, overrides)
    validate_config(cfg)
    return cfg


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bounds(lo, hi, lo_open, hi_open) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    return ""


def _number(lo=None, hi=None, *, lo_open=False, hi_open=False, integer=False, null=False):
    what = ("an integer" if integer else "a finite number") + _bounds(lo, hi, lo_open, hi_open) + \
        (" or null" if null else "")

    def check(v) -> str | None:
        if v is None:
            return None if null else what
        if not (isinstance(v, int) if integer else _is_number(v)) or isinstance(v, bool) or not math.isfinite(v):
            return what
        if lo is not None and (v <= lo if lo_open else v < lo):
            return what
        if hi is not None and (v >= hi if hi_open else v > hi):
            return what
        return None

    return check


def _flag(v) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _text(null=False):
    def check(v) -> str | None:
        if v is None and null:
            return None
        return None if isinstance(v, str) and v.strip() else "a non-empty string" + (" or null" if null else "")

    return check


def _one_of(*allowed):
    def check(v) -> str | None:
        return None if v in allowed else f"one of {list(allowed)}"

    return check


def _range_pair(lo, hi, what):
    """[min, max] with lo < min <= max <= hi (hi None: unbounded)."""
    def check(v) -> str | None:
        ok = isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) and math.isfinite(x) for x in v)
        ok = ok and lo < v[0] <= v[1] and (hi is None or v[1] <= hi)
        return None if ok else what

    return check


def _numbers(n, lo=None, lo_open=False, null=True):
    what = f"a list of {n} finite numbers" + _bounds(lo, None, lo_open, False) + (" or null" if null else "")

    def check(v) -> str | None:
        if v is None and null:
            return None
        ok = isinstance(v, (list, tuple)) and len(v) == n and all(_is_number(x) and math.isfinite(x) for x in v)
        ok = ok and (lo is None or all((x > lo if lo_open else x >= lo) for x in v))
        return None if ok else what

    return check


def _color_jitter(v) -> str | None:
    if v is None or (_is_number(v) and math.isfinite(v) and v >= 0):
        return None
    if isinstance(v, (list, tuple)) and len(v) in (3, 4) and all(_is_number(x) and math.isfinite(x) and x >= 0
                                                                 for x in v):
        return None
    return "a number >= 0, a list of 3 or 4 numbers >= 0 (brightness, contrast, saturation[, hue]) or null"


def _mapping(v) -> str | None:
    return None if isinstance(v, Mapping) else "a mapping"


def _class_map(v) -> str | None:
    if v is None or (isinstance(v, str) and v.strip()):
        return None
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        return None
    if isinstance(v, Mapping) and v and all(isinstance(i, int) and not isinstance(i, bool) for i in v.values()):
        return None
    return "null, a list of class names, a {name: index} mapping or a file (.txt / .json / .yaml)"


def _resume(v) -> str | None:
    return None if v is None or (isinstance(v, str) and v.strip()) else "null, 'auto' or a path"


def _device(v) -> str | None:
    if v is None:
        return None
    try:
        dev = torch.device(v) if isinstance(v, str) else None
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in _DEVICE_TYPES:
        return f"null or a device such as cpu, cuda, cuda:1 ({', '.join(_DEVICE_TYPES)})"
    return None


_PROB = _number(0, 1)
_NONNEG = _number(0)
_POS_INT = _number(1, integer=True)
_NONNEG_INT = _number(0, integer=True)

# One check per config key (every key of DEFAULTS, nested ones dotted): what a value must be.
_SCHEMA: dict[str, Any] = {
    "model": _text(), "model_kwargs": _mapping, "pretrained": _flag, "initial_checkpoint": _text(null=True),
    "num_classes": _number(1, integer=True, null=True), "drop_rate": _number(0, 1, hi_open=True, null=True),
    "drop_path": _number(0, 1, hi_open=True, null=True), "grad_checkpointing": _flag, "channels_last": _flag,
    "compile": _flag,
    "data_dir": _text(null=True), "train_split": _text(), "val_split": _text(), "class_map": _class_map,
    "img_size": _number(1, integer=True, null=True), "interpolation": _one_of(None, *_INTERPOLATIONS),
    "mean": _numbers(3), "std": _numbers(3, 0, lo_open=True),
    "crop_pct": _number(0, 1, lo_open=True, null=True), "batch_size": _POS_INT,
    "val_batch_size": _number(1, integer=True, null=True), "workers": _NONNEG_INT, "pin_memory": _flag,
    "no_aug": _flag, "scale": _range_pair(0, 1, "[min, max] with 0 < min <= max <= 1"),
    "ratio": _range_pair(0, None, "[min, max] with 0 < min <= max"), "hflip": _PROB,
    "color_jitter": _color_jitter, "aa": _text(null=True), "reprob": _PROB,
    "remode": _one_of("pixel", "rand", "const"), "recount": _POS_INT, "repeated_aug": _flag, "mixup": _NONNEG,
    "cutmix": _NONNEG, "mixup_prob": _PROB, "mixup_switch_prob": _PROB,
    "mixup_mode": _one_of("batch", "pair", "elem"), "smoothing": _number(0, 1, hi_open=True),
    "epochs": _POS_INT, "opt": _text(), "lr": _number(0, null=True), "lr_base": _number(0, lo_open=True),
    "lr_base_size": _POS_INT, "opt_eps": _number(0, lo_open=True, null=True),
    "opt_betas": _numbers(2, 0, lo_open=False), "momentum": _PROB, "weight_decay": _NONNEG,
    "layer_decay": _number(0, 1, lo_open=True, null=True), "sched": _text(), "sched_on_updates": _flag,
    "warmup_epochs": _NONNEG, "warmup_lr": _NONNEG, "min_lr": _NONNEG, "cooldown_epochs": _NONNEG_INT,
    "warmup_prefix": _flag, "clip_grad": _number(0, lo_open=True, null=True),
    "clip_mode": _one_of("norm", "value", "agc"), "accum_steps": _POS_INT, "amp": _one_of(None, "bf16", "fp16"),
    "model_ema": _flag, "model_ema_decay": _number(0, 1, lo_open=True, hi_open=True), "model_ema_warmup": _flag,
    "distill": _mapping, "distill.type": _one_of("none", "soft", "hard"), "distill.teacher": _text(null=True),
    "distill.teacher_checkpoint": _text(null=True), "distill.teacher_kwargs": _mapping,
    "distill.alpha": _PROB, "distill.tau": _number(0, lo_open=True),
    "mesa": _NONNEG, "mesa_start": _PROB, "prepbn_steps": _number(1, integer=True, null=True),
    "prepbn_warm": _NONNEG_INT, "bn_recalib_epochs": _NONNEG_INT,
    "output_dir": _text(null=True), "resume": _resume, "overwrite": _flag, "seed": _number(0, integer=True),
    "deterministic": _flag, "max_steps": _number(1, integer=True, null=True), "checkpoint_interval": _NONNEG_INT,
    "eval_interval": _POS_INT, "log_interval": _POS_INT, "tensorboard": _flag, "sync_bn": _flag,
    "find_unused_parameters": _flag, "dist_backend": _one_of(None, "nccl", "gloo", "mpi", "ucc"),
    "device": _device, "threads": _number(1, integer=True, null=True),
}


def _flat_keys(d: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + k)
        if isinstance(v, dict) and k not in ("model_kwargs", "teacher_kwargs"):
            out.extend(_flat_keys(v, f"{prefix}{k}."))
    return out


assert set(_flat_keys(DEFAULTS)) == set(_SCHEMA), set(_flat_keys(DEFAULTS)) ^ set(_SCHEMA)


def _get(cfg: Mapping, key: str):
    for p in key.split("."):
        cfg = cfg[p]
    return cfg


def validate_config(cfg: dict) -> None:
    """Check every key's type and range up front (ConfigError naming the key, what it must be and the value)."""
    if not cfg["model"]:
        raise ConfigError("config key 'model' is required (a model name, see visionattn.list_models())")
    for key, check in _SCHEMA.items():
        value = _get(cfg, key)
        what = check(value)
        if what is not None:
            raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")
    if cfg["mesa"] > 0 and not cfg["model_ema"]:
        raise ConfigError("config key 'mesa' > 0 needs model_ema: true (MESA distils from the EMA model)")
    d = cfg["distill"]
    if d["type"] != "none" and not d["teacher"]:
        raise ConfigError("config key 'distill.teacher' is required when distill.type is soft or hard")


# ---------------------------------------------------------------------------------------------------------------
# model and data


def check_model_name(name: str) -> None:
    import timm

    import visionattn  # noqa: F401  (registers the zoo)

    if not timm.is_model(name):
        raise ConfigError(f"unknown model {name!r}{_suggest(name, timm.list_models())}; "
                          "see visionattn.list_models() or timm.list_models()")


def build_model(cfg: dict, num_classes: int, **extra) -> nn.Module:
    """timm.create_model from the config (zoo models are plain timm models after `import visionattn`)."""
    import timm

    check_model_name(cfg["model"])
    kwargs = dict(cfg["model_kwargs"])
    kwargs.update(extra)
    if cfg["drop_rate"] is not None:
        kwargs["drop_rate"] = cfg["drop_rate"]
    if cfg["drop_path"] is not None:
        kwargs["drop_path_rate"] = cfg["drop_path"]
    try:
        model = timm.create_model(cfg["model"], pretrained=cfg["pretrained"], num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model {cfg['model']!r} rejected its arguments {sorted(kwargs)}: {e}") from None
    if cfg["initial_checkpoint"]:
        load_weights(model, cfg["initial_checkpoint"], strict=False)
    return model


def _split_dir(cfg: dict, split: str) -> Path:
    if not cfg["data_dir"]:
        raise ConfigError("config key 'data_dir' is required (an ImageNet-layout folder with train/ and val/)")
    root = Path(cfg["data_dir"])
    if not root.is_dir():
        raise ConfigError(f"data folder not found: {root}")
    d = root / split
    if not d.is_dir():
        raise ConfigError(f"data split folder not found: {d} (expected <data_dir>/{split}/<class>/<images>)")
    return d


def split_class_folders(d: Path) -> list[str]:
    """The class folders of a split in timm's label order (natural sort; hidden folders are not classes)."""
    from timm.utils import natural_key

    return sorted((p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)


def load_class_map(spec) -> list[str]:
    """Class names in label order from a `class_map` value: a list of names, a {name: index} mapping, or a file
    (.txt one name per line, .json / .yaml holding a list or a mapping)."""
    where = "config key 'class_map'"
    if isinstance(spec, str):
        p = Path(spec)
        if not p.is_file():
            raise ConfigError(f"{where}: file not found: {p}")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".txt":
            spec = [line.strip() for line in text.splitlines() if line.strip()]
        elif p.suffix.lower() in (".json", ".yaml", ".yml"):
            import yaml

            try:
                spec = yaml.safe_load(text)  # JSON is YAML
            except yaml.YAMLError as e:
                raise ConfigError(f"{where}: {p} is not valid {p.suffix[1:].upper()}: "
                                  f"{str(e).splitlines()[0]}") from None
        else:
            raise ConfigError(f"{where}: {p} must be a .txt, .json or .yaml file")
        where = f"class map {p}"
    if isinstance(spec, Mapping):
        idx = sorted(spec.values()) if all(isinstance(i, int) and not isinstance(i, bool) for i in spec.values()) \
            else None
        if not spec or idx != list(range(len(spec))):
            raise ConfigError(f"{where}: indices must be 0..N-1, each once")
        names = [str(k) for k, _ in sorted(spec.items(), key=lambda kv: kv[1])]
    elif isinstance(spec, (list, tuple)):
        names = [str(x) for x in spec]
    else:
        raise ConfigError(f"{where} must hold a list of class names or a {{name: index}} mapping")
    if not names:
        raise ConfigError(f"{where} holds no class names")
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise ConfigError(f"{where} names class {dup!r} twice")
    return names


def class_names(cfg: dict) -> tuple[list[str], str]:
    """The run's one class mapping (names in label order) and where it came from: the `class_map` key, else the
    training split's class folders (each must hold images, checked by `build_dataset`)."""
    if cfg["class_map"] is not None:
        return load_class_map(cfg["class_map"]), "class_map"
    d = _split_dir(cfg, cfg["train_split"])
    names = split_class_folders(d)
    if not names:
        raise ConfigError(f"no class folders in {d} (expected <data_dir>/{cfg['train_split']}/<class>/<images>)")
    return names, f"the class folders of {d}"


def build_dataset(cfg: dict, split: str, classes: Sequence[str], transform=None, source: str = "the training split"):
    """timm ImageDataset over `<data_dir>/<split>` with the run's class mapping `classes` (names in label order).

    Every class folder of the split must be one of `classes` and hold at least one image: an empty or unknown
    folder is a ConfigError (a split's own folder list would shift every later label)."""
    from timm.data import create_dataset

    d = _split_dir(cfg, split)
    index = {name: i for i, name in enumerate(classes)}
    folders = split_class_folders(d)
    unknown = [f for f in folders if f not in index]
    if unknown:
        raise ConfigError(f"class folder {d / unknown[0]} is not one of the run's {len(classes)} classes (from "
                          f"{source}){f'; {len(unknown)} such folders' if len(unknown) > 1 else ''}")
    ds = create_dataset("", root=str(d), search_split=False, class_map=index, transform=transform)
    counts = np.bincount(np.asarray([t for _, t in ds.reader.samples], dtype=np.int64), minlength=len(classes))
    empty = [f for f in folders if counts[index[f]] == 0]
    if empty:
        more = f" ({len(empty)} empty class folders)" if len(empty) > 1 else ""
        raise ConfigError(f"class folder {d / empty[0]} holds no images{more}: remove it or add its images "
                          f"(expected <data_dir>/{split}/<class>/<images>)")
    if len(ds) == 0:
        raise ConfigError(f"data split folder {d} holds no images")
    return ds


def eval_classes(cfg: dict, checkpoint: str | os.PathLike | None, split: str) -> tuple[list[str], str]:
    """The class mapping to evaluate `checkpoint` with: the run's record (run.json) when the checkpoint is a run
    directory or lies in one, else `class_map`, else the split's own class folders."""
    if checkpoint:
        p = Path(checkpoint)
        for d in [p, *list(p.parents)[:3]]:
            if (d / RUN_RECORD).is_file():
                classes = RunDir(d).record().get("classes")
                if classes:
                    return [str(c) for c in classes], f"the run record {d / RUN_RECORD}"
    if cfg["class_map"] is not None:
        return load_class_map(cfg["class_map"]), "class_map"
    d = _split_dir(cfg, split)
    names = split_class_folders(d)
    if not names:
        raise ConfigError(f"no class folders in {d} (expected <data_dir>/{split}/<class>/<images>)")
    return names, f"the class folders of {d}"


def check_num_classes(cfg: dict, classes: Sequence[str]) -> int:
    """`num_classes` from the config (at least the number of classes), else the number of classes."""
    n = cfg["num_classes"]
    if n is not None and n < len(classes):
        raise ConfigError(f"config key 'num_classes' is {n}, fewer than the {len(classes)} classes of the data")
    return n or len(classes)


def resolve_data(cfg: dict, model: nn.Module) -> dict:
    """timm's resolve_data_config with the config's overrides (input_size, interpolation, mean, std, crop_pct)."""
    from timm.data import resolve_data_config

    args = {}
    if cfg["img_size"] is not None:
        args["input_size"] = (3, cfg["img_size"], cfg["img_size"])
    for k in ("interpolation", "mean", "std", "crop_pct"):
        if cfg[k] is not None:
            args[k] = tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]
    return resolve_data_config(args, model=model)


def train_transform(cfg: dict, data_cfg: dict):
    from timm.data import create_transform

    try:
        return create_transform(
            data_cfg["input_size"], is_training=True, no_aug=cfg["no_aug"], scale=tuple(cfg["scale"]),
            ratio=tuple(cfg["ratio"]), hflip=cfg["hflip"], color_jitter=cfg["color_jitter"], auto_augment=cfg["aa"],
            interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"],
            re_prob=cfg["reprob"], re_mode=cfg["remode"], re_count=cfg["recount"],
        )
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        bad = "config key 'aa'" if cfg["aa"] else "the training transform"
        raise ConfigError(f"{bad} was rejected by timm: {type(e).__name__}: {e}") from None


def eval_transform(data_cfg: dict):
    from timm.data import create_transform

    return create_transform(data_cfg["input_size"], is_training=False, interpolation=data_cfg["interpolation"],
                            mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"],
                            crop_mode=data_cfg.get("crop_mode"))


def eval_loader(cfg: dict, data_cfg: dict, split: str, classes: Sequence[str], rank: int = 0, world: int = 1,
                source: str = "the training split"):
    """Sharded (no padding, so every image counts once) evaluation loader."""
    ds = build_dataset(cfg, split, classes, eval_transform(data_cfg), source=source)
    idx = list(range(rank, len(ds), world))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx), batch_size=cfg["val_batch_size"] or cfg["batch_size"], shuffle=False,
        num_workers=cfg["workers"], pin_memory=cfg["pin_memory"] and torch.cuda.is_available(), drop_last=False,
    ), ds


def dist_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) as torchrun sets them; (1, 0, 0) in a plain process."""
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(cfg: dict, local_rank: int = 0) -> torch.device:
    """The config's `device`, else this process's GPU, else the CPU. ConfigError for a device that is absent."""
    if not cfg["device"]:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(cfg["device"])
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_available():
        raise ConfigError(f"config key 'device' is {cfg['device']!r}, but no {dev.type} device is available")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ConfigError(f"config key 'device' is {cfg['device']!r}, but only {count} {dev.type} device(s) exist")
    return dev


def init_distributed(cfg: dict, device: torch.device) -> None:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU unless `dist_backend` says otherwise)."""
    if torch.distributed.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=cfg["dist_backend"] or ("nccl" if device.type == "cuda" else "gloo"))


def autocast(amp: str | None, device: torch.device):
    if amp is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: str | None = None, channels_last: bool = False,
             distributed: bool = False, progress: bool = False, desc: str = "val") -> dict:
    """top-1 / top-5 (percent) and mean CE loss; sums are all-reduced across processes."""
    from tqdm import tqdm

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(amp, device):
            out = model(x)
        if isinstance(out, (tuple, list)):
            out = (out[0] + out[1]) / 2
        out = out.float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        sums += torch.stack([
            F.cross_entropy(out, y, reduction="sum").double(), hit[:, :1].sum().double(),
            hit.sum().double(), torch.tensor(float(y.numel()), dtype=torch.float64, device=device),
        ])
    if distributed:
        torch.distributed.all_reduce(sums)
    loss, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n)}


class DistillationLoss(nn.Module):
    """DeiT distillation: `(1 - alpha) * base(out, y) + alpha * distill(out_dist, teacher(x))`.

    soft: KL(student_dist / tau || teacher / tau) * tau^2 (sum over classes, mean over the batch);
    hard: cross-entropy of `out_dist` against the teacher's argmax. A model that returns a single output
    (no distillation head) is distilled through that output.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str, alpha: float, tau: float):
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"kind must be 'soft' or 'hard', got {kind!r}")
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau

    def forward(self, x: torch.Tensor, outputs, target: torch.Tensor) -> torch.Tensor:
        out, out_dist = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
        base = self.base(out, target)
        with torch.no_grad():
            t = self.teacher(x).float()
        out_dist = out_dist.float()
        if self.kind == "soft":
            T = self.tau
            dist = F.kl_div(F.log_softmax(out_dist / T, dim=1), F.log_softmax(t / T, dim=1), reduction="sum",
                            log_target=True) * (T * T) / out_dist.shape[0]
        else:
            dist = F.cross_entropy(out_dist, t.argmax(dim=1))
        return base * (1 - self.alpha) + dist * self.alpha


# ---------------------------------------------------------------------------------------------------------------
# files, checkpoints and the run directory


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
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    if atomic:
        atomic_save(lambda p: save_file(sd, p, metadata=meta), path)
    else:
        save_file(sd, str(path), metadata=meta)


def _weights_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
RUN_RECORD = "run.json"
_STEP_DIR = re.compile(r"^step-(\d{8,})(?:-(\d+))?$")
_TMP_STEP_DIR = re.compile(r"^\.tmp-step-\d{8,}(?:-\d+)?-\d+$")
# what a checkpoint directory holds (manifest first: removal starts with it, so a half-removed directory is
# never taken for a checkpoint)
_CKPT_FILES = (MANIFEST, "model.safetensors", "model_ema.safetensors", "state.pt")
# a run's own files in output_dir (the only names a replaced run loses); tb/ event files besides
RUN_FILES = (RUN_RECORD, "config.yaml", "log.jsonl", "summary.json", "best.safetensors", "best_ema.safetensors")
_RESULT_FILES = ("summary.json", "best.safetensors", "best_ema.safetensors")
_TMP_FILE = re.compile(r"^\.(.+)\.tmp\d+$")
_TB_EVENTS = re.compile(r"^events\.out\.tfevents\.")


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
    for name in _CKPT_FILES:
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
    final = root / f"step-{step:08d}"
    n = 0
    while final.exists():  # the same step written twice (never by the trainer): keep both, the newer wins
        n += 1
        final = root / f"step-{step:08d}-{n}"
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


def read_checkpoint(ckpt: str | os.PathLike) -> dict:
    """The state of a checkpoint directory, verified: its manifest names the files, their sizes match, and the
    directory, the manifest, `state.pt` and every weights file carry the same step. Adds `weights_path` /
    `ema_path` (Path or None). ConfigError naming the directory otherwise."""
    from .checkpoint import CheckpointError, load_state_dict_file

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
        metas = {name: _weights_metadata(ckpt / name) for name in files if name.endswith(".safetensors")}
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
    from .checkpoint import CheckpointError, load_state_dict_file, unwrap_state_dict

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


def _plain(obj):
    """Reduce a state dict to weights_only-safe types (tensors, numbers, strings, lists, dicts, None)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


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


class RunDir:
    """A training run's `output_dir`: what it holds, its lock, and removal of exactly the run's own files."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd = None

    def entries(self) -> list[str]:
        """What the directory holds, less the temporary files of our own killed writes (`clean_stale`)."""
        if not self.path.is_dir():
            return []
        return sorted(n for n in os.listdir(self.path) if not self._own_tmp(n))

    def _own_tmp(self, name: str) -> bool:
        m = _TMP_FILE.match(name)
        return bool(m and m[1] in RUN_FILES and (self.path / name).is_file())

    def is_run(self) -> bool:
        return (self.path / RUN_RECORD).is_file()

    def record(self) -> dict:
        try:
            rec = json.loads((self.path / RUN_RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def results(self) -> list[str]:
        return [n for n in _RESULT_FILES if (self.path / n).is_file()]

    def latest(self) -> Path | None:
        return latest_checkpoint(self.path)

    def describe(self) -> str:
        rec, latest = self.record(), self.latest()
        where = f"checkpoint at step {_step_key(latest)[0]}" if latest is not None else "no checkpoint"
        done = " (finished)" if (self.path / "summary.json").is_file() else ""
        return f"model {rec.get('model', '?')}, {where}{done}"

    def lock(self) -> None:
        """Hold an exclusive lock on the directory until `unlock` or process exit (a second trainer on the same
        output_dir is refused instead of interleaving writes)."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"output_dir {self.path} is in use by another training process") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def clean_stale(self) -> list[str]:
        """Remove what killed writes of ours left: temporary files of the run's files, temporary and half-removed
        checkpoint directories, and checkpoints older than the newest. Returns the names removed."""
        removed = []
        for name in sorted(os.listdir(self.path)) if self.path.is_dir() else []:
            if self._own_tmp(name):
                os.unlink(self.path / name)
                removed.append(name)
        root = self.path / CHECKPOINTS
        if root.is_dir():
            latest = self.latest()
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

    def remove_run(self) -> None:
        """Delete the run's own files (overwrite=true): checkpoints, best weights, logs, records, tb events."""
        self.clean_stale()
        for p in list_checkpoints(self.path)[::-1]:
            _remove_checkpoint_dir(p)
        for d in (self.path / CHECKPOINTS, self.path / "tb"):
            if d.is_dir():
                for f in d.iterdir():
                    if d.name == "tb" and f.is_file() and _TB_EVENTS.match(f.name):
                        f.unlink()
                try:
                    d.rmdir()
                except OSError:
                    pass
        for name in RUN_FILES[::-1]:  # run.json last: a killed removal is still recognised as a run
            if (self.path / name).is_file():
                os.unlink(self.path / name)

    def truncate_log(self, step: int) -> int:
        """Drop log rows after `step` (written before a checkpoint that a kill prevented) and torn lines."""
        p = self.path / "log.jsonl"
        if not p.is_file():
            return 0
        keep, dropped = [], 0
        for line in p.read_text().splitlines():
            try:
                row = json.loads(line)
                ok = isinstance(row, dict) and row.get("step", 0) <= step
            except ValueError:
                ok = False
            if ok:
                keep.append(line)
            else:
                dropped += 1
        if dropped:
            write_text_atomic(p, "".join(f"{x}\n" for x in keep))
        return dropped


def _legacy_hint(d: RunDir) -> str:
    if (d.path / "last_state.pt").is_file():
        return (" (it holds last_state.pt, a run of an older visionattn trainer whose checkpoints cannot be "
                "resumed safely; start from its weights with initial_checkpoint=<its last.safetensors>)")
    return ""


def _fresh_into(d: RunDir, overwrite: bool) -> dict:
    """A fresh run may start in `d`: absent or empty; or our run with overwrite=true (it is replaced); or another
    folder with overwrite=true when none of the run's file names are taken there (written beside them)."""
    entries = d.entries()
    if not entries:
        return {"mode": "fresh", "replace": False}
    if d.is_run():
        if overwrite:
            return {"mode": "fresh", "replace": True}
        raise ConfigError(f"output_dir {d.path} already holds a training run ({d.describe()}): pass resume=auto "
                          "to continue it, overwrite=true to replace it, or choose another output_dir")
    taken = [n for n in entries if n in RUN_FILES or n in (CHECKPOINTS, "tb")]
    if overwrite and not taken and not _legacy_hint(d):
        return {"mode": "fresh", "replace": False}
    if taken:
        raise ConfigError(f"output_dir {d.path} holds {taken[0]!r}, which this run would write but did not "
                          f"create{_legacy_hint(d)}: choose another output_dir")
    raise ConfigError(f"output_dir {d.path} is not empty ({len(entries)} entries, e.g. {entries[0]!r}) and holds no "
                      f"training run{_legacy_hint(d)}: choose another output_dir, or pass overwrite=true to write this "
                      "run beside those files (nothing of theirs is deleted); resume=auto continues a run only")


def _resume_source(path: Path) -> Path:
    """The checkpoint directory `resume=<path>` names: a run directory (its newest checkpoint) or a step one."""
    if path.is_file():
        parent = path.parent
        if path.name in _CKPT_FILES and _STEP_DIR.match(parent.name):
            return parent
        legacy = " (a last_state.pt of an older visionattn trainer cannot be resumed safely)" \
            if path.name == "last_state.pt" else ""
        raise ConfigError(f"resume={path}: expected a run directory or a checkpoint directory "
                          f"(<run>/{CHECKPOINTS}/step-NNNNNNNN), got a file{legacy}")
    if not path.is_dir():
        raise ConfigError(f"resume={path}: no such run or checkpoint directory")
    if _STEP_DIR.match(path.name):
        if not (path / MANIFEST).is_file():
            raise ConfigError(f"resume={path}: an incomplete checkpoint directory (no {MANIFEST})")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise ConfigError(f"resume={path}: no checkpoint in this directory{_legacy_hint(RunDir(path))}")
    return latest


def plan_run(out: str | os.PathLike, cfg: Mapping) -> dict:
    plan = _plan_run(out, cfg)
    return {"mode": plan["mode"], "checkpoint": plan.get("checkpoint"), "replace": plan["replace"]}


def _plan_run(out: str | os.PathLike, cfg: Mapping) -> dict:
    """Decide, reading only, how a run starts in `out`: {"mode": "fresh" | "resume", "checkpoint": dir or None,
    "replace": delete the run already there (overwrite=true)}. ConfigError when the run may not start:

    * a fresh run into a non-empty directory (see `_fresh_into`);
    * `resume=auto` where there is no checkpoint but a run's results are (never silently started over);
    * `resume=<older checkpoint>` of the same run (continuing it in place would discard newer ones)."""
    d = RunDir(out)
    if d.path.exists() and not d.path.is_dir():
        raise ConfigError(f"output_dir {d.path} is a file, not a directory")
    resume = cfg["resume"]
    if resume == "auto":
        latest = d.latest()
        if latest is not None:
            return {"mode": "resume", "checkpoint": str(latest), "replace": False}
        if d.is_run() and d.results():
            if cfg["overwrite"]:
                return {"mode": "fresh", "replace": True}
            raise ConfigError(f"resume=auto: {d.path} holds a run's results ({', '.join(d.results())}) but no "
                              f"checkpoint ({CHECKPOINTS}/step-*) to resume from; refusing to start it over: pass "
                              "overwrite=true to replace that run, or choose another output_dir")
        if d.is_run():  # killed before its first checkpoint: nothing to lose, start again
            return {"mode": "fresh", "replace": True}
        return _fresh_into(d, cfg["overwrite"])
    if resume:
        ckpt = _resume_source(Path(resume))
        same = d.path.is_dir() and ckpt.parent.parent.resolve() == d.path.resolve()
        if same:
            latest = d.latest()
            if latest is not None and _step_key(ckpt) < _step_key(latest):
                raise ConfigError(f"resume={resume}: {latest.name} is newer in the same output_dir; continuing the "
                                  "older checkpoint there would discard it: resume into another output_dir")
            return {"mode": "resume", "checkpoint": str(ckpt), "replace": False}
        plan = _fresh_into(d, cfg["overwrite"])
        return {**plan, "mode": "resume", "checkpoint": str(ckpt)}
    return _fresh_into(d, cfg["overwrite"])


# config keys a resumed run may change (run control, I/O, devices); any other change is refused, since the
# restored optimizer / scheduler / data order would silently keep the checkpoint's value
RESUME_MUTABLE = frozenset({
    "resume", "overwrite", "output_dir", "data_dir", "workers", "pin_memory", "threads", "val_batch_size", "device",
    "dist_backend", "find_unused_parameters", "compile", "channels_last", "deterministic", "max_steps",
    "checkpoint_interval", "eval_interval", "log_interval", "tensorboard",
})


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k == "distill":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_changes(old: Mapping, new: Mapping) -> tuple[dict, dict]:
    """(applied, refused): {key: [checkpoint value, new value]} for the keys that differ between the config a
    checkpoint was written with and the config of the run resuming it."""
    a, b = _flat(plain(old)), _flat(plain(new))
    changed = {k: [a[k], b[k]] for k in a.keys() & b.keys() if a[k] != b[k]}
    applied = {k: v for k, v in changed.items() if k in RESUME_MUTABLE}
    refused = {k: v for k, v in changed.items() if k not in RESUME_MUTABLE}
    return applied, refused


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
