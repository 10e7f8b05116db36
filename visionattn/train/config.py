"""Training config: one table of keys (default, check, meaning), YAML files with `key=value` overrides.

`load_config(path, overrides)` merges the defaults <- YAML file <- overrides (values parsed as YAML, dotted keys
reach into mappings) and checks every key's type and range up front: a bad value is a `ConfigError` naming the
key, what it must be and the value (the tools print it as one line and exit 2).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["ConfigError", "Key", "KEYS", "DEFAULTS", "RESUME_MUTABLE", "load_config", "apply_overrides",
           "validate_config", "yaml_load", "suggest", "get", "flat"]


class ConfigError(ValueError):
    """A user error (config, data folder, model, checkpoint file, output_dir): the tools print it as one line on
    stderr and exit 2."""


# ------------------------------------------------------------------------------------------------------ checks
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


def _flag_or_null(v) -> str | None:
    return None if v is None or isinstance(v, bool) else "true, false or null"


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


def _names(v) -> str | None:
    if v is None or (isinstance(v, (list, tuple)) and all(isinstance(x, str) and x.strip() for x in v)):
        return None
    return "null or a list of parameter-name patterns (fnmatch, e.g. '*relative_position_bias_table')"


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


def _pretrained(v) -> str | None:
    if isinstance(v, bool) or (isinstance(v, str) and v.strip()):
        return None
    return "true, false or a pretrained weights name (model.tag, e.g. dinat_large.in22k)"


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


# ------------------------------------------------------------------------------------------------------- keys
# (the starting weights may change on resume: a resumed run takes its weights from the checkpoint)
@dataclass(frozen=True)
class Key:
    """One config key: its default, the check of a value (None when fine, else what it must be), its meaning,
    and whether a resumed run may change it (run control, I/O, devices: the restored optimizer / schedule / data
    order would silently keep the checkpoint's value of any other key)."""

    default: Any
    check: Callable[[Any], str | None]
    doc: str
    on_resume: bool = False


def _k(default, check, doc, on_resume=False) -> Key:
    return Key(default, check, doc, on_resume)


# Every key a config may set. Dotted names are entries of a nested mapping (distill.type); a key whose default is
# a dict (model_kwargs, distill.teacher_kwargs) is a free mapping merged key by key.
KEYS: dict[str, Key] = {
    # model and its starting weights
    "model": _k(None, _text(), "any timm / visionattn model name"),
    "model_kwargs": _k({}, _mapping, "extra keyword arguments of timm.create_model (e.g. a smaller embed_dim)"),
    "pretrained": _k(False, _pretrained, "start from released weights: true (the model's default tag, or "
                     "finetune_from), or a name such as dinat_large.in22k; downloaded unless pretrained_path",
                     on_resume=True),
    "pretrained_path": _k(None, _text(null=True), "a local file with the weights `pretrained` names", on_resume=True),
    "initial_checkpoint": _k(None, _text(null=True), "weights file to start from (official or ours; safetensors or "
                             "weights-only torch file; a run / checkpoint directory)", on_resume=True),
    "starting_weights_ema": _k(False, _flag, "read the EMA copy (model_ema / state_dict_ema) of the starting "
                               "weights", on_resume=True),
    "finetune_from": _k(None, _text(null=True), "a fine-tune recipe: the released weights it starts from; the run "
                        "refuses to start without starting weights (pretrained=true or initial_checkpoint=FILE)",
                        on_resume=True),
    "num_classes": _k(None, _number(1, integer=True, null=True), "None: the number of classes of the data"),
    "drop_rate": _k(None, _number(0, 1, hi_open=True, null=True), "classifier dropout (None: the model's own)"),
    "drop_path": _k(None, _number(0, 1, hi_open=True, null=True), "stochastic depth (None: the model's own)"),
    "grad_checkpointing": _k(False, _flag, "activation checkpointing"),
    "channels_last": _k(False, _flag, "channels_last memory format", on_resume=True),
    "compile": _k(False, _flag, "torch.compile the model", on_resume=True),
    # data (ImageNet layout: <data_dir>/<train_split>/<class>/*, <data_dir>/<val_split>/<class>/*)
    "data_dir": _k(None, _text(null=True), "ImageNet-layout folder", on_resume=True),
    "train_split": _k("train", _text(), "training split folder"),
    "val_split": _k("val", _text(), "validation split folder"),
    "class_map": _k(None, _class_map, "class names in label order: a list, a {name: index} mapping or a .txt / "
                    ".json / .yaml file; None: the training split's class folders (natural sort)"),
    "img_size": _k(None, _number(1, integer=True, null=True), "None: the model's pretrained_cfg input size"),
    "interpolation": _k(None, _one_of(None, *_INTERPOLATIONS), "resize interpolation (None: the model's)"),
    "train_interpolation": _k(None, _one_of(None, "random", *_INTERPOLATIONS),
                              "training-transform interpolation (random: bilinear or bicubic per image, as timm's "
                              "trainer); None: `interpolation`"),
    "mean": _k(None, _numbers(3), "None: the model's"),
    "std": _k(None, _numbers(3, 0, lo_open=True), "None: the model's"),
    "crop_pct": _k(None, _number(0, 1, lo_open=True, null=True), "evaluation center-crop fraction (None: the "
                   "model's)"),
    "batch_size": _k(128, _POS_INT, "per process; the global batch is batch_size * processes * accum_steps"),
    "val_batch_size": _k(None, _number(1, integer=True, null=True), "None: batch_size", on_resume=True),
    "workers": _k(4, _NONNEG_INT, "data loader processes", on_resume=True),
    "pin_memory": _k(True, _flag, "pin host memory", on_resume=True),
    "no_aug": _k(False, _flag, "training transform without random augmentation (resize + center crop)"),
    "scale": _k([0.08, 1.0], _range_pair(0, 1, "[min, max] with 0 < min <= max <= 1"), "random-resized-crop scale"),
    "ratio": _k([0.75, 1.3333333333333333], _range_pair(0, None, "[min, max] with 0 < min <= max"),
                "random-resized-crop aspect ratio"),
    "hflip": _k(0.5, _PROB, "horizontal flip probability"),
    "color_jitter": _k(0.4, _color_jitter, "color jitter strength"),
    "aa": _k(None, _text(null=True), "timm auto-augment string, e.g. rand-m9-mstd0.5-inc1"),
    "reprob": _k(0.0, _PROB, "random erasing probability"),
    "remode": _k("pixel", _one_of("pixel", "rand", "const"), "random erasing mode"),
    "recount": _k(1, _POS_INT, "random erasing count"),
    "repeated_aug": _k(False, _flag, "timm RepeatAugSampler (3 repeats)"),
    "mixup": _k(0.0, _NONNEG, "mixup alpha"),
    "cutmix": _k(0.0, _NONNEG, "cutmix alpha"),
    "mixup_prob": _k(1.0, _PROB, "probability of mixup or cutmix per batch"),
    "mixup_switch_prob": _k(0.5, _PROB, "probability of cutmix instead of mixup"),
    "mixup_mode": _k("batch", _one_of("batch", "pair", "elem"), "mixup granularity"),
    "smoothing": _k(0.0, _number(0, 1, hi_open=True), "label smoothing"),
    # optimisation
    "epochs": _k(300, _POS_INT, "epochs of the schedule (cooldown_epochs come after)"),
    "opt": _k("adamw", _text(), "timm optimizer name"),
    "lr": _k(None, _number(0, null=True), "absolute lr; None: lr_base * global_batch / lr_base_size"),
    "lr_base": _k(5e-4, _number(0, lo_open=True), "lr per lr_base_size images of global batch"),
    "lr_base_size": _k(512, _POS_INT, "the batch lr_base is given for"),
    "scale_warmup_min_lr": _k(False, _flag, "warmup_lr and min_lr are per lr_base_size too and scaled like lr_base "
                              "(the Swin-derived trainers: Agent Attention, SLAB)"),
    "opt_eps": _k(None, _number(0, lo_open=True, null=True), "optimizer epsilon (None: timm's)"),
    "opt_betas": _k(None, _numbers(2, 0, lo_open=False), "optimizer betas (None: timm's)"),
    "momentum": _k(0.9, _PROB, "SGD momentum"),
    "weight_decay": _k(0.05, _NONNEG, "weight decay"),
    "no_weight_decay": _k(None, _names, "parameters without weight decay besides 1-D ones and biases: a list of "
                          "name patterns; None: the model's no_weight_decay() (timm's optimizer factory)"),
    "layer_decay": _k(None, _number(0, 1, lo_open=True, null=True), "layer-wise lr decay (timm)"),
    "sched": _k("cosine", _text(), "timm scheduler name, or constant (the lr stays at lr after warm-up)"),
    "sched_on_updates": _k(True, _flag, "per-iteration schedule (False: per epoch)"),
    "warmup_epochs": _k(5, _NONNEG, "linear warm-up from warmup_lr"),
    "warmup_lr": _k(1e-6, _NONNEG, "lr at the start of warm-up"),
    "min_lr": _k(1e-5, _NONNEG, "lr at the end of the schedule (and during cooldown)"),
    "cooldown_epochs": _k(0, _NONNEG_INT, "epochs at min_lr after the schedule"),
    "warmup_prefix": _k(False, _flag, "the schedule starts after warm-up (timm)"),
    "clip_grad": _k(None, _number(0, lo_open=True, null=True), "gradient clipping threshold (None: off)"),
    "clip_mode": _k("norm", _one_of("norm", "value", "agc"), "gradient clipping mode (timm dispatch_clip_grad)"),
    "clip_exclude_head": _k(None, _flag_or_null, "leave the classifier out of clipping (None: for agc only, as "
                            "timm's trainer)"),
    "accum_steps": _k(1, _POS_INT, "gradient accumulation"),
    "amp": _k(None, _one_of(None, "bf16", "fp16"), "mixed precision (fp16 on CUDA only, with GradScaler)"),
    "model_ema": _k(False, _flag, "keep an EMA of the weights (timm ModelEmaV3)"),
    "model_ema_decay": _k(0.9998, _number(0, 1, lo_open=True, hi_open=True), "EMA decay"),
    "model_ema_warmup": _k(False, _flag, "EMA decay warm-up (timm)"),
    # family specific
    "distill.type": _k("none", _one_of("none", "soft", "hard"), "DeiT distillation"),
    "distill.teacher": _k(None, _text(null=True), "teacher model name"),
    "distill.teacher_checkpoint": _k(None, _text(null=True), "teacher weights file"),
    "distill.teacher_pretrained": _k(False, _flag, "download the teacher's released weights (timm)"),
    "distill.teacher_kwargs": _k({}, _mapping, "extra arguments of the teacher's timm.create_model"),
    "distill.alpha": _k(0.5, _PROB, "distillation loss weight"),
    "distill.tau": _k(1.0, _number(0, lo_open=True), "soft distillation temperature"),
    "mesa": _k(0.0, _NONNEG, "EfficientViM MESA: weight of the soft CE to the EMA's prediction (needs model_ema)"),
    "mesa_start": _k(0.25, _PROB, "fraction of `epochs` after which MESA is on"),
    "prepbn_steps": _k(None, _number(1, integer=True, null=True), "SLAB PRepBN: LN->BN blend length in optimizer "
                       "steps (None: the model's own T)"),
    "prepbn_warm": _k(0, _NONNEG_INT, "SLAB PRepBN: LN-only steps before the blend"),
    "bn_recalib_epochs": _k(0, _NONNEG_INT, "SLAB: after training, passes over the training data refreshing the "
                            "BatchNorm statistics, each validated (the best counts)"),
    # the official run a recipe reproduces (read by --print-recipe; training ignores it)
    "official.processes": _k(None, _number(1, integer=True, null=True), "processes of the official run",
                             on_resume=True),
    "official.batch_size": _k(None, _number(1, integer=True, null=True), "per-process batch of the official run",
                              on_resume=True),
    "official.top1": _k(None, _number(0, 100, null=True), "the paper's / README's top-1", on_resume=True),
    "official.weights": _k(None, _text(null=True), "the released weights of that run (timm name)", on_resume=True),
    "official.source": _k(None, _text(null=True), "where the recipe comes from (repository @ commit)",
                          on_resume=True),
    # run control
    "output_dir": _k(None, _text(null=True), "None: output/<model>", on_resume=True),
    "resume": _k(None, _resume, "None | auto | a run directory | a checkpoint directory", on_resume=True),
    "overwrite": _k(False, _flag, "a fresh run may replace the run already in output_dir (its own files only)",
                    on_resume=True),
    "seed": _k(42, _number(0, integer=True), "seed"),
    "deterministic": _k(False, _flag, "torch deterministic algorithms", on_resume=True),
    "max_steps": _k(None, _number(1, integer=True, null=True), "stop (with a checkpoint) after this many optimizer "
                    "steps in total", on_resume=True),
    "checkpoint_interval": _k(0, _NONNEG_INT, "also checkpoint every N optimizer steps (0: at epoch ends only)",
                              on_resume=True),
    "eval_interval": _k(1, _POS_INT, "validate every N epochs (and after the last)", on_resume=True),
    "log_interval": _k(50, _POS_INT, "tensorboard scalars every N steps", on_resume=True),
    "tensorboard": _k(False, _flag, "write tensorboard events", on_resume=True),
    "sync_bn": _k(False, _flag, "SyncBatchNorm under DDP"),
    "find_unused_parameters": _k(False, _flag, "DDP find_unused_parameters", on_resume=True),
    "dist_backend": _k(None, _one_of(None, "nccl", "gloo", "mpi", "ucc"), "None: nccl on CUDA, gloo on CPU",
                       on_resume=True),
    "device": _k(None, _device, "None: cuda if available else cpu", on_resume=True),
    "threads": _k(None, _number(1, integer=True, null=True), "torch.set_num_threads (None: torch's default)",
                  on_resume=True),
}

_FREE = frozenset(k for k, key in KEYS.items() if isinstance(key.default, dict))
_GROUPS = frozenset(k.split(".")[0] for k in KEYS if "." in k)


def _nested(flat: Mapping[str, Any]) -> dict:
    out: dict = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = copy.deepcopy(value)
    return out


DEFAULTS: dict[str, Any] = _nested({k: key.default for k, key in KEYS.items()})
"""Every key with its default (nested mappings for the dotted keys)."""

RESUME_MUTABLE = frozenset(k for k, key in KEYS.items() if key.on_resume)
"""The keys a resumed run may change (applied and recorded); any other change is refused."""


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
        if full in _FREE:
            if v is None:
                v = {}
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {full!r} must be a mapping, got {v!r}")
            out[k] = {**base[k], **v}
        elif full in _GROUPS:
            if not isinstance(v, Mapping):
                raise ConfigError(f"config key {full!r} must be a mapping, got {v!r}")
            out[k] = _merge(base[k], v, f"{full}.")
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
    """Defaults <- YAML file <- overrides, validated. Raises ConfigError with a one-line message."""
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


def get(cfg: Mapping, key: str):
    """The value of a (dotted) key."""
    for p in key.split("."):
        cfg = cfg[p]
    return cfg


def flat(cfg: Mapping) -> dict:
    """{dotted key: value} of a config (the nested groups opened)."""
    out = {}
    for k, v in cfg.items():
        if k in _GROUPS and isinstance(v, Mapping):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def validate_config(cfg: dict) -> None:
    """Check every key's type and range up front (ConfigError naming the key, what it must be and the value)."""
    if not cfg["model"]:
        raise ConfigError("config key 'model' is required (a model name, see visionattn.list_models())")
    for key, spec in KEYS.items():
        value = get(cfg, key)
        what = spec.check(value)
        if what is not None:
            raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")
    if cfg["mesa"] > 0 and not cfg["model_ema"]:
        raise ConfigError("config key 'mesa' > 0 needs model_ema: true (MESA distils from the EMA model)")
    d = cfg["distill"]
    if d["type"] != "none" and not d["teacher"]:
        raise ConfigError("config key 'distill.teacher' is required when distill.type is soft or hard")
    if cfg["pretrained"] is not False and cfg["initial_checkpoint"]:
        raise ConfigError("config keys 'pretrained' and 'initial_checkpoint' both name starting weights: set one")
    if cfg["pretrained_path"] and cfg["pretrained"] is False:
        raise ConfigError("config key 'pretrained_path' needs pretrained: true (or a pretrained name)")
