"""Data for training and evaluation on an ImageNet-layout folder (`<data_dir>/<split>/<class>/<images>`), on
timm's datasets and transforms.

One class mapping per run: `class_map` when given, else the training split's class folders (natural sort, as
timm orders them). Every split is built with that mapping, and a class folder that is empty or unknown to it
is a ConfigError before the first step (a split's own folder list would shift every later label).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.utils import natural_key
from torch import nn

from .config import ConfigError
from .rundir import RUN_RECORD, RunDir

__all__ = [
    "class_names",
    "eval_classes",
    "load_class_map",
    "split_class_folders",
    "build_dataset",
    "check_num_classes",
    "resolve_data",
    "train_transform",
    "eval_transform",
    "eval_loader",
]


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
    args = {}
    if cfg["img_size"] is not None:
        args["input_size"] = (3, cfg["img_size"], cfg["img_size"])
    for k in ("interpolation", "mean", "std", "crop_pct"):
        if cfg[k] is not None:
            args[k] = tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]
    return resolve_data_config(args, model=model)


def train_transform(cfg: dict, data_cfg: dict):
    """timm's training transform; `train_interpolation` (e.g. random, as timm's trainer) applies to it only."""
    interpolation = data_cfg["interpolation"] if cfg["no_aug"] else (cfg["train_interpolation"]
                                                                      or data_cfg["interpolation"])
    try:
        return create_transform(
            data_cfg["input_size"], is_training=True, no_aug=cfg["no_aug"], scale=tuple(cfg["scale"]),
            ratio=tuple(cfg["ratio"]), hflip=cfg["hflip"], color_jitter=cfg["color_jitter"], auto_augment=cfg["aa"],
            interpolation=interpolation, mean=data_cfg["mean"], std=data_cfg["std"],
            re_prob=cfg["reprob"], re_mode=cfg["remode"], re_count=cfg["recount"],
        )
    except (AssertionError, ValueError, KeyError, IndexError) as e:
        bad = "config key 'aa'" if cfg["aa"] else "the training transform"
        raise ConfigError(f"{bad} was rejected by timm: {type(e).__name__}: {e}") from None


def eval_transform(data_cfg: dict):
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

