"""Training config: every key with its default, YAML files with `key=value` overrides, and one check per key.

`load_config(path, overrides)` merges DEFAULTS <- YAML file <- overrides (values parsed as YAML, dotted keys
reach into mappings) and validates every key's type and range up front: a bad value is a `ConfigError` naming
the key, what it must be and the value (the tools print it as one line and exit 2).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["ConfigError", "DEFAULTS", "load_config", "apply_overrides", "validate_config", "yaml_load", "suggest"]


class ConfigError(ValueError):
    """A user error (config, data folder, model, checkpoint file, output_dir): the tools print it as one line on
    stderr and exit 2."""


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
    return yaml.load(text, Loader=_yaml_loader())


def suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _merge(base: dict, new: Mapping, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in new.items():
        full = f"{where}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {full!r}{suggest(k, base)}")
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


