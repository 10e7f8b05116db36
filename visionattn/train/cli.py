"""Command lines of tools/train.py and tools/validate.py (also `python -m visionattn.train`).

Every user error (config, data, model, checkpoint, output_dir, arguments) is one line on stderr and exit 2; a
non-finite loss stops with exit 3 and keeps the last good checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .checkpoint import latest_checkpoint, write_text_atomic
from .config import ConfigError, load_config
from .dist import dist_env
from .loop import NonFiniteLoss, Trainer
from .recipe import format_recipe
from .validate import validate

__all__ = ["train_main", "validate_main", "EXIT_CONFIG", "EXIT_NAN"]

EXIT_CONFIG, EXIT_NAN = 2, 3


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (no usage block) and exit 2."""

    def error(self, message):
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def _end_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train_main(argv=None, prog: str = "train.py") -> int:
    """Train from a YAML config and `key=value` overrides; returns the exit code."""
    p = _Parser(prog=prog, description="Train a visionattn / timm model from a YAML config.",
                epilog="Overrides: key=value (YAML values, dotted keys for nested mappings; every key with its "
                       "default and meaning: visionattn.train.KEYS).")
    p.add_argument("--config", "-c", default=None, help="YAML config (keys: visionattn.train.KEYS)")
    p.add_argument("--resume", default=None, help="same as resume=<value>: auto, a run or checkpoint directory")
    p.add_argument("--print-recipe", action="store_true",
                   help="print the effective recipe for this number of processes (WORLD_SIZE, as under torchrun) "
                        "and batch beside the official run's, then exit (nothing is read or written)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    args = p.parse_args(argv)
    trainer = None
    try:
        overrides = list(args.overrides) + ([f"resume={args.resume}"] if args.resume else [])
        cfg = load_config(args.config, overrides)
        if args.print_recipe:
            if dist_env()[1] == 0:
                print(format_recipe(cfg, dist_env()[0], args.config), flush=True)
            return 0
        trainer = Trainer(cfg)
        trainer.setup()
        summary = trainer.fit()
        if trainer.main:
            print(f"summary: {json.dumps(summary)}", flush=True)
        return 0
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    except NonFiniteLoss as e:
        last = latest_checkpoint(trainer.out) if trainer is not None else None
        kept = f"last good checkpoint kept: {last}" if last is not None else "no checkpoint had been written yet"
        print(f"{prog}: error: {e}; stopping ({kept})", file=sys.stderr, flush=True)
        return EXIT_NAN
    finally:
        if trainer is not None:
            trainer.close()
        _end_distributed()


def validate_main(argv=None, prog: str = "validate.py") -> int:
    """Evaluate a checkpoint on a split and print the result as one JSON line; returns the exit code."""
    p = _Parser(prog=prog, description="Validate a visionattn / timm model on an ImageNet-layout folder.")
    p.add_argument("--config", "-c", default=None, help="training YAML config (model, data and model_kwargs)")
    p.add_argument("--model", default=None, help="model name (overrides the config's)")
    p.add_argument("--checkpoint", default=None,
                   help="weights file, checkpoint directory or training run directory")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a run or checkpoint directory")
    p.add_argument("--split", default=None, help="split folder name (default: the config's val_split)")
    p.add_argument("--results-file", default=None, help="also write the JSON result here")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    try:
        if args.results_file and Path(args.results_file).is_dir():
            raise ConfigError(f"--results-file {args.results_file} is a directory")
        overrides = list(args.overrides) + ([f"model={args.model}"] if args.model else [])
        res = validate(load_config(args.config, overrides), args.checkpoint, args.ema, args.split)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    finally:
        _end_distributed()
    if dist_env()[1] == 0:
        line = json.dumps(res)
        print(line, flush=True)
        if args.results_file:
            write_text_atomic(args.results_file, line + "\n")
    return 0
