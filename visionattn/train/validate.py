"""Evaluation: top-1 / top-5 / loss of a model on a split (sharded across processes), and `validate(cfg,
checkpoint)` behind tools/validate.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import load_weights
from .data import check_num_classes, eval_classes, eval_loader, resolve_data
from .dist import autocast, dist_env, init_distributed, resolve_device
from .model import build_model, check_model_name
from .weights import load_starting_weights

__all__ = ["evaluate", "validate"]


def evaluate(model: nn.Module, loader, device: torch.device, amp: str | None = None, channels_last: bool = False,
             distributed: bool = False, progress: bool = False, desc: str = "val") -> dict:
    """top-1 / top-5 (percent) and mean CE loss; sums are all-reduced across processes."""
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



def validate(cfg: dict, checkpoint: str | None, ema: bool = False, split: str | None = None) -> dict:
    """Evaluate `cfg["model"]` with `checkpoint`'s weights (else the config's starting weights: pretrained=...,
    initial_checkpoint=...) on `<data_dir>/<split>` (default: val_split).

    Labels follow the run's class list (run.json) when the checkpoint belongs to a run, else `class_map`,
    else the split's own folders. Under torchrun the split is sharded and the counts all-reduced."""
    world, rank, local_rank = dist_env()
    device = resolve_device(cfg, local_rank)
    distributed = world > 1
    split = split or cfg["val_split"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    check_model_name(cfg["model"])
    classes, source = eval_classes(cfg, checkpoint, split)
    if distributed:
        init_distributed(cfg, device)
    model = build_model(cfg, check_num_classes(cfg, classes))
    if checkpoint:
        load_weights(model, checkpoint, ema=ema)
    else:  # released weights (pretrained=...) or a checkpoint of another layout (initial_checkpoint=...)
        load_starting_weights(model, cfg)
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
