"""Evaluate a model on an ImageNet-layout split: top-1 / top-5 / loss as JSON.

    python tools/validate.py --config configs/imagenet/nat_mini.yaml --checkpoint output/nat_mini \
        data_dir=/data/imagenet
    python tools/validate.py --model nat_mini --checkpoint w.safetensors data_dir=/data/imagenet img_size=224

--checkpoint takes a safetensors file, a weights-only torch file, a checkpoint directory or a training run
directory (its best, else its newest checkpoint's weights; `--ema` prefers the EMA copy). Labels follow the
run's class list (run.json) when the checkpoint belongs to a run, else `class_map`, else the split's folders.
`key=value` overrides use the training config keys (data_dir,
val_split, img_size, batch_size, workers, amp, channels_last, model_kwargs...). Runs under torchrun too
(the split is sharded, counts are all-reduced). Exit code 2 on a bad config, data folder, model or checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visionattn.train_utils import (  # noqa: E402
    ConfigError,
    build_model,
    check_model_name,
    check_num_classes,
    dist_env,
    eval_classes,
    eval_loader,
    evaluate,
    init_distributed,
    load_config,
    load_weights,
    resolve_data,
    resolve_device,
)


def run(cfg: dict, checkpoint: str | None, ema: bool = False, split: str | None = None) -> dict:
    world, rank, local_rank = dist_env()
    device = resolve_device(cfg, local_rank)
    distributed = world > 1
    split = split or cfg["val_split"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    check_model_name(cfg["model"])
    # the labels the weights were trained with: the run's record, else class_map, else this split's folders
    classes, source = eval_classes(cfg, checkpoint, split)
    if distributed:
        init_distributed(cfg, device)
    model = build_model(cfg, check_num_classes(cfg, classes))
    if checkpoint:
        load_weights(model, checkpoint, ema=ema)
    model.to(device).eval()
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    data_cfg = resolve_data(cfg, model)
    loader, _ = eval_loader(cfg, data_cfg, split, classes, rank, world, source=source)
    m = evaluate(model, loader, device, cfg["amp"], cfg["channels_last"], distributed, progress=rank == 0,
                 desc=f"validate {cfg['model']}")
    return {"model": cfg["model"], "checkpoint": checkpoint, "split": split, "top1": round(m["top1"], 4),
            "top5": round(m["top5"], 4), "loss": round(m["loss"], 6), "count": m["count"],
            "input_size": list(data_cfg["input_size"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Validate a visionattn / timm model on an ImageNet-layout folder.")
    p.add_argument("--config", "-c", default=None, help="training YAML config (model, data and model_kwargs)")
    p.add_argument("--model", default=None, help="model name (overrides the config's)")
    p.add_argument("--checkpoint", default=None, help="weights file or training output directory")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a run directory")
    p.add_argument("--split", default=None, help="split folder name (default: the config's val_split)")
    p.add_argument("--results-file", default=None, help="also write the JSON result here")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"model={args.model}"] if args.model else [])
        cfg = load_config(args.config, overrides)
        res = run(cfg, args.checkpoint, args.ema, args.split)
    except ConfigError as e:
        print(f"validate.py: error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if dist_env()[1] == 0:
        line = json.dumps(res)
        print(line, flush=True)
        if args.results_file:
            Path(args.results_file).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
