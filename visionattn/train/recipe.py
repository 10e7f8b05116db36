"""The effective recipe of a config for a number of processes: global batch, the lrs after batch scaling, the
schedule, the starting weights; and `--print-recipe`, which sets it beside the official run's."""
from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["IMAGENET_TRAIN_IMAGES", "effective", "format_recipe"]

IMAGENET_TRAIN_IMAGES = 1281167


def effective(cfg: Mapping, world: int, batch_size: int | None = None, train_images: int | None = None) -> dict:
    """What a run of `cfg` on `world` processes uses (the trainer's own arithmetic; `batch_size` per process
    overrides the config's, as for the official run)."""
    batch = batch_size if batch_size is not None else cfg["batch_size"]
    global_batch = batch * world * cfg["accum_steps"]
    factor = global_batch / cfg["lr_base_size"]
    lr = cfg["lr"] if cfg["lr"] is not None else cfg["lr_base"] * factor
    scale = factor if cfg["scale_warmup_min_lr"] else 1.0
    out = {"processes": world, "batch_size": batch, "global_batch": global_batch, "lr": lr,
           "warmup_lr": cfg["warmup_lr"] * scale, "min_lr": cfg["min_lr"] * scale}
    if train_images:
        # DistributedSampler: ceil(N / world) samples per process; drop_last batches; accumulation
        per_rank = math.ceil(train_images / world)
        out["updates_per_epoch"] = per_rank // batch // cfg["accum_steps"]
    return out


def _lr_rule(cfg: Mapping) -> str:
    if cfg["lr"] is not None:
        rule = "lr absolute"
    else:
        rule = f"lr = {cfg['lr_base']:g} x global batch / {cfg['lr_base_size']}"
    if cfg["scale_warmup_min_lr"]:
        rule += f"; warmup_lr {cfg['warmup_lr']:g} and min_lr {cfg['min_lr']:g} scaled the same way"
    return rule


def _schedule(cfg: Mapping) -> str:
    sched = cfg["sched"]
    where = "per step" if cfg["sched_on_updates"] else "per epoch"
    text = f"{sched}, {cfg['epochs']} epochs"
    if cfg["cooldown_epochs"]:
        text += f" + {cfg['cooldown_epochs']} cooldown at min_lr"
    if cfg["warmup_epochs"]:
        text += f", warm-up {cfg['warmup_epochs']:g} epochs{' (prefix)' if cfg['warmup_prefix'] else ''}"
    return f"{text}, {where}"


def _weights(cfg: Mapping) -> str:
    from .weights import starting_weights

    src = starting_weights(cfg)
    if src is None:
        if cfg["finetune_from"]:
            return (f"MISSING: fine-tune from {cfg['finetune_from']} (pass pretrained=true or "
                    "initial_checkpoint=FILE)")
        return "random initialisation"
    kind, name = src
    text = f"{kind}={name}"
    if kind == "pretrained" and cfg["pretrained_path"]:
        text += f" (file {cfg['pretrained_path']})"
    if cfg["starting_weights_ema"]:
        text += " (EMA copy)"
    return text


def format_recipe(cfg: Mapping, world: int, config_path: str | None = None,
                  train_images: int | None = None) -> str:
    """A table: this run's effective recipe beside the official run's (the config's `official` keys)."""
    n_images = train_images or IMAGENET_TRAIN_IMAGES
    mine = effective(cfg, world, train_images=n_images)
    off = cfg["official"]
    theirs = None
    if off["processes"]:
        theirs = effective(cfg, off["processes"], batch_size=off["batch_size"] or cfg["batch_size"],
                           train_images=IMAGENET_TRAIN_IMAGES)

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [("processes", "processes"), ("batch per process", "batch_size"), ("global batch", "global_batch"),
            ("lr", "lr"), ("warmup_lr", "warmup_lr"), ("min_lr", "min_lr"), ("steps per epoch", "updates_per_epoch")]
    title = f"recipe of {cfg['model']}" + (f" ({config_path})" if config_path else "")
    head = ("", "this run", "official run" if theirs else "official run (not recorded)")
    lines = [title, f"{head[0]:<22}{head[1]:<30}{head[2]}"]
    for label, key in rows:
        lines.append(f"{label:<22}{fmt(mine.get(key)):<30}{fmt(theirs.get(key)) if theirs else '-'}")
    total = mine.get("updates_per_epoch", 0) * (cfg["epochs"] + cfg["cooldown_epochs"])
    lines.append(f"{'optimizer steps':<22}{fmt(total):<30}"
                 f"{fmt(theirs['updates_per_epoch'] * (cfg['epochs'] + cfg['cooldown_epochs'])) if theirs else '-'}")
    if cfg["prepbn_steps"]:
        t = cfg["prepbn_steps"]
        e_mine = t / max(mine["updates_per_epoch"], 1)
        e_off = f"{t / max(theirs['updates_per_epoch'], 1):.1f} epochs" if theirs else "-"
        lines.append(f"{'PRepBN LN->BN':<22}{f'{t} steps = {e_mine:.1f} epochs':<30}{e_off}")
    lines.append(f"lr rule: {_lr_rule(cfg)}")
    lines.append(f"schedule: {_schedule(cfg)}")
    lines.append(f"starting weights: {_weights(cfg)}")
    if off["weights"] or off["top1"] is not None:
        lines.append(f"official result: {off['weights'] or '-'}, top-1 {fmt(off['top1'])}")
    if off["source"]:
        lines.append(f"official recipe: {off['source']}")
    if not train_images:
        lines.append(f"steps per epoch assume ImageNet-1k ({IMAGENET_TRAIN_IMAGES} training images)")
    if theirs and mine["global_batch"] != theirs["global_batch"]:
        lines.append(f"note: the global batch differs from the official run's ({mine['global_batch']} vs "
                     f"{theirs['global_batch']}): " + ("lr and the step counts follow it (lr scaled with the batch)"
                                                       if cfg["lr"] is None else
                                                       "lr is absolute in this recipe and does not follow it"))
    return "\n".join(lines)
