"""Processes and devices: torchrun's environment, the device of a process, the process group, autocast, and
rank 0's decisions handed to every rank."""
from __future__ import annotations

import os

import torch
from torch import nn

from .config import ConfigError

__all__ = ["dist_env", "resolve_device", "init_distributed", "autocast", "agree", "unwrap", "all_finite"]


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




def agree(fn, main: bool, distributed: bool):
    """Run `fn` on rank 0 (`main`) and hand its result, or its ConfigError, to every rank (no rank is left
    waiting in a collective while another one stops on a user error)."""
    result, error = None, None
    if main:
        try:
            result = fn()
        except ConfigError as e:
            error = str(e)
    if distributed:
        box = [result, error]
        torch.distributed.broadcast_object_list(box, src=0)
        result, error = box
    if error is not None:
        raise ConfigError(error)
    return result


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_finite(loss: torch.Tensor, distributed: bool) -> bool:
    """True when the loss is finite on every rank."""
    ok = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
    if distributed:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())
