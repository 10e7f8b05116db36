"""Training and validation as a library, on timm's data / optim / scheduler / EMA / mixup utilities.

    from visionattn.train import load_config, Trainer
    trainer = Trainer(load_config("configs/imagenet/nat_mini.yaml", ["data_dir=/data/imagenet"]))
    trainer.setup()
    summary = trainer.fit()

Modules: `config` (the table of keys: default, check, meaning), `data` (datasets, the run's class mapping,
transforms), `model`, `weights` (starting weights through the family's checkpoint filter), `dist` (processes,
devices), `loop` (`Trainer`), `run` (the run's life on disk: start, resume, checkpoints, finish), `checkpoint`
(run checkpoints written whole, weights files, RNG states), `rundir` (the output directory: never overwritten,
locked, its record), `recipe` (the effective recipe beside the official run's), `distill`, `validate`
(evaluation), `cli` (tools/train.py and tools/validate.py).
"""
from .checkpoint import latest_checkpoint, load_weights, read_checkpoint, save_weights, write_checkpoint
from .cli import train_main, validate_main
from .config import DEFAULTS, KEYS, ConfigError, load_config, validate_config
from .data import build_dataset, class_names, resolve_data
from .distill import DistillationLoss
from .loop import NonFiniteLoss, Trainer
from .model import build_model
from .recipe import effective, format_recipe
from .run import Run
from .rundir import RunDir, plan_run
from .validate import evaluate, validate
from .weights import load_starting_weights

__all__ = [
    "DEFAULTS",
    "KEYS",
    "ConfigError",
    "load_config",
    "validate_config",
    "build_model",
    "build_dataset",
    "class_names",
    "resolve_data",
    "DistillationLoss",
    "Trainer",
    "NonFiniteLoss",
    "evaluate",
    "validate",
    "train_main",
    "validate_main",
    "main",
    "Run",
    "RunDir",
    "effective",
    "format_recipe",
    "load_starting_weights",
    "plan_run",
    "write_checkpoint",
    "read_checkpoint",
    "latest_checkpoint",
    "load_weights",
    "save_weights",
]

main = train_main
