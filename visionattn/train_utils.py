"""Pieces of tools/train.py and tools/validate.py: YAML config with `key=value` overrides, model / data
construction on timm's utilities, evaluation, DeiT distillation loss, and resumable checkpoints.

Checkpoint layout in `output_dir` (written atomically: temp file + `os.replace`):

* `last.safetensors`, `best.safetensors` — model weights (`last_ema` / `best_ema` too when EMA is on);
* `last_state.pt` — `torch.save` dict of tensors, numbers, strings, lists and dicts only (loads with
  `weights_only=True`): optimizer, scheduler, grad scaler, EMA weights, step/epoch, best accuracies, RNG states
  (torch / CUDA / numpy / python, all as tensors) and the config.
"""
from __future__ import annotations

import copy
import difflib
import os
import random
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
    "save_checkpoint",
    "load_checkpoint_state",
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
    "num_classes": None,  # None: number of class folders in the training split
    "drop_rate": None,
    "drop_path": None,  # None: the model's own default (some models take no drop_path_rate)
    "grad_checkpointing": False,
    "channels_last": False,
    "compile": False,
    # data (ImageNet layout: <data_dir>/<train_split>/<class>/*, <data_dir>/<val_split>/<class>/*)
    "data_dir": None,
    "train_split": "train",
    "val_split": "val",
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
    "resume": None,  # None | auto | path to a run directory or last_state.pt
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

_CHOICES = {
    "amp": (None, "bf16", "fp16"),
    "clip_mode": ("norm", "value", "agc"),
    "mixup_mode": ("batch", "pair", "elem"),
    "remode": ("pixel", "rand", "const"),
    "distill.type": ("none", "soft", "hard"),
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


def validate_config(cfg: dict) -> None:
    """Check types and ranges of the keys that would otherwise fail deep inside a run."""
    if not cfg["model"]:
        raise ConfigError("config key 'model' is required (a model name, see visionattn.list_models())")
    for key, allowed in _CHOICES.items():
        val = cfg
        for p in key.split("."):
            val = val[p]
        if val not in allowed:
            raise ConfigError(f"config key {key!r} must be one of {list(allowed)}, got {val!r}")
    positive_int = ("epochs", "batch_size", "accum_steps", "eval_interval", "log_interval", "lr_base_size")
    for key in positive_int:
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ConfigError(f"config key {key!r} must be an integer >= 1, got {cfg[key]!r}")
    for key in ("workers", "cooldown_epochs", "checkpoint_interval", "bn_recalib_epochs", "prepbn_warm"):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 0:
            raise ConfigError(f"config key {key!r} must be an integer >= 0, got {cfg[key]!r}")
    for key in ("lr", "lr_base", "weight_decay", "warmup_lr", "min_lr", "mixup", "cutmix", "smoothing", "reprob",
                "mesa", "clip_grad", "drop_path", "drop_rate", "warmup_epochs"):
        v = cfg[key]
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"config key {key!r} must be a number >= 0, got {v!r}")
    for key in ("max_steps", "img_size", "num_classes", "val_batch_size", "prepbn_steps", "threads"):
        v = cfg[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"config key {key!r} must be an integer >= 1 or null, got {v!r}")
    if not 0.0 <= cfg["smoothing"] < 1.0:
        raise ConfigError(f"config key 'smoothing' must be in [0, 1), got {cfg['smoothing']}")
    if not 0.0 < cfg["model_ema_decay"] < 1.0:
        raise ConfigError(f"config key 'model_ema_decay' must be in (0, 1), got {cfg['model_ema_decay']}")
    if cfg["mesa"] > 0 and not cfg["model_ema"]:
        raise ConfigError("config key 'mesa' > 0 needs model_ema: true (MESA distils from the EMA model)")
    d = cfg["distill"]
    if d["type"] != "none":
        if not d["teacher"]:
            raise ConfigError("config key 'distill.teacher' is required when distill.type is soft or hard")
        if not 0.0 <= d["alpha"] <= 1.0:
            raise ConfigError(f"config key 'distill.alpha' must be in [0, 1], got {d['alpha']}")
        if d["tau"] <= 0:
            raise ConfigError(f"config key 'distill.tau' must be > 0, got {d['tau']}")
    if cfg["resume"] not in (None, "auto") and not isinstance(cfg["resume"], str):
        raise ConfigError(f"config key 'resume' must be null, 'auto' or a path, got {cfg['resume']!r}")


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


def build_dataset(cfg: dict, split: str, transform=None):
    """timm ImageDataset over `<data_dir>/<split>` (class sub-folders)."""
    from timm.data import create_dataset

    d = _split_dir(cfg, split)
    ds = create_dataset("", root=str(d), transform=transform)
    if len(ds) == 0:
        raise ConfigError(f"data split folder {d} holds no images")
    return ds


def num_classes_of(ds) -> int:
    reader = getattr(ds, "reader", None)
    class_to_idx = getattr(reader, "class_to_idx", None)
    if class_to_idx:
        return len(class_to_idx)
    raise ConfigError("cannot infer num_classes from the dataset; set num_classes in the config")


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

    return create_transform(
        data_cfg["input_size"], is_training=True, no_aug=cfg["no_aug"], scale=tuple(cfg["scale"]),
        ratio=tuple(cfg["ratio"]), hflip=cfg["hflip"], color_jitter=cfg["color_jitter"], auto_augment=cfg["aa"],
        interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"],
        re_prob=cfg["reprob"], re_mode=cfg["remode"], re_count=cfg["recount"],
    )


def eval_transform(data_cfg: dict):
    from timm.data import create_transform

    return create_transform(data_cfg["input_size"], is_training=False, interpolation=data_cfg["interpolation"],
                            mean=data_cfg["mean"], std=data_cfg["std"], crop_pct=data_cfg["crop_pct"],
                            crop_mode=data_cfg.get("crop_mode"))


def eval_loader(cfg: dict, data_cfg: dict, split: str, rank: int = 0, world: int = 1):
    """Sharded (no padding, so every image counts once) evaluation loader."""
    ds = build_dataset(cfg, split, eval_transform(data_cfg))
    idx = list(range(rank, len(ds), world))
    return torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx), batch_size=cfg["val_batch_size"] or cfg["batch_size"], shuffle=False,
        num_workers=cfg["workers"], pin_memory=cfg["pin_memory"] and torch.cuda.is_available(), drop_last=False,
    ), ds


def dist_env() -> tuple[int, int, int]:
    """(world size, rank, local rank) as torchrun sets them; (1, 0, 0) in a plain process."""
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(cfg: dict, local_rank: int = 0) -> torch.device:
    """The config's `device`, else this process's GPU, else the CPU."""
    if cfg["device"]:
        return torch.device(cfg["device"])
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


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
# checkpoints


def atomic_save(write, path: str | os.PathLike) -> None:
    """Call `write(tmp_path)` then rename over `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None):
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_save(lambda p: save_file(sd, p, metadata=meta), path)


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True, ema: bool = False) -> nn.Module:
    """Load model weights from a safetensors file, a run directory (`last`/`best` inside), or a weights-only
    torch file (trainer envelopes unwrapped)."""
    from .checkpoint import load_state_dict_file, unwrap_state_dict

    p = Path(path)
    if p.is_dir():
        for name in (("best_ema", "last_ema") if ema else ()) + ("best", "last"):
            if (p / f"{name}.safetensors").exists():
                p = p / f"{name}.safetensors"
                break
        else:
            raise ConfigError(f"no best.safetensors / last.safetensors in {path}")
    if not p.is_file():
        raise ConfigError(f"checkpoint not found: {p}")
    sd = unwrap_state_dict(load_state_dict_file(str(p)))
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


def save_checkpoint(path: str | os.PathLike, state: Mapping) -> None:
    clean = _plain(state)
    atomic_save(lambda p: torch.save(clean, p), path)


def load_checkpoint_state(path: str | os.PathLike) -> dict:
    p = Path(path)
    if p.is_dir():
        p = p / "last_state.pt"
    if not p.is_file():
        raise ConfigError(f"resume checkpoint not found: {p}")
    return torch.load(p, map_location="cpu", weights_only=True)
