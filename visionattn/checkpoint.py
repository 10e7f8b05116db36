"""Checkpoint helpers: safe loading (safetensors or weights_only), official envelopes, pretrained files.

Every official checkpoint file of the zoo is read by `load_state_dict_file`: safetensors, or `torch.load` with
`weights_only=True`. Official trainers also pickle their configuration (a yacs `CfgNode`, an argparse
`Namespace`); those two, and only those, are accepted on a retry inside torch's scoped `safe_globals` context,
as inert stand-ins (a yacs node becomes a plain OrderedDict), so nothing global changes and no other object is
ever unpickled.
"""
from __future__ import annotations

import argparse
import math
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "load_state_dict_file",
    "unwrap_state_dict",
    "strip_prefix",
    "shift_swin_downsample_keys",
    "rename_keys",
    "resample_square_pos_embed",
    "download_cached",
    "build_model_with_pretrained_file",
    "load_pretrained_file",
]

_ENVELOPES = ("state_dict", "model", "module")
_EMA_ENVELOPES = ("model_ema", "state_dict_ema")


class _InertCfgNode:
    """Stand-in for `yacs.config.CfgNode`: the unpickler builds a plain OrderedDict (yacs flags become its
    attributes); no yacs code is imported or run."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


# Config classes official trainers pickle beside the weights. argparse.Namespace is importable and inert (it only
# stores attributes); yacs may be absent, so it is named by its pickled path.
_CONFIG_GLOBALS = [argparse.Namespace, (_InertCfgNode, "yacs.config.CfgNode")]


class CheckpointError(pickle.UnpicklingError, ValueError):
    """A file that is not a readable checkpoint: empty, truncated, another format, or one that would unpickle
    objects beyond tensors and plain containers. The message is one line naming the file."""


def _one_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(e).split())) or type(e).__name__
    # torch's weights-only refusal is a page of advice around one line of reason
    reason = re.search(r"WeightsUnpickler error: (.+?)(?: Please use| Check the documentation|$)", text)
    if reason:
        text = reason.group(1).strip()
    if len(text) > 160 and ". " in text:
        text = text.split(". ")[0]
    return text if len(text) <= 300 else text[:297] + "..."


def load_state_dict_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint file without unpickling arbitrary objects (safetensors or `weights_only=True`).

    A file refused only because it pickles a yacs `CfgNode` or an argparse `Namespace` is read again with those
    classes allowed for this one call (scoped `torch.serialization.safe_globals`); anything else is refused.
    Raises FileNotFoundError for a missing file and `CheckpointError` for any file that cannot be read as a
    checkpoint (empty, truncated, not a checkpoint, or refused by the weights-only unpickler).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {_one_line(e)}") from None
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            pass
        # refused: read it again with only the config classes allowed, for this call (raises for anything else)
        with torch.serialization.safe_globals(_CONFIG_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"checkpoint {path} was refused by the weights-only loader (it holds objects other "
                              f"than tensors and plain containers, or is not a torch file): {_one_line(e)}") from None
    except (EOFError, RuntimeError, KeyError, ValueError, OSError, IndexError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} is damaged or not a torch checkpoint "
                              f"({type(e).__name__}: {_one_line(e)})") from None


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop `prefix` from every key that has it; keys without it are kept as they are."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def unwrap_state_dict(checkpoint: Mapping, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint.

    Opens `state_dict` / `model` / `module` envelopes (the official loaders read `model`, not the EMA copy);
    `model_ema` (or timm's `state_dict_ema`) is read when asked, or when it is the only envelope. Keeps only the
    `backbone.*` entries of an mmdet/mmseg checkpoint (prefix removed) and removes a DDP `module.` prefix.
    A bare state dict comes back unchanged (non-tensor entries dropped).
    """
    sd = checkpoint
    has_plain = any(isinstance(sd.get(k), Mapping) for k in _ENVELOPES)
    ema = next((k for k in _EMA_ENVELOPES if isinstance(sd.get(k), Mapping)), None)
    if use_ema and ema is None:
        raise KeyError("use_ema=True but the checkpoint has no 'model_ema' entry")
    if ema is not None and (use_ema or not has_plain):
        sd = sd[ema]
    for _ in range(3):
        inner = next((sd[k] for k in _ENVELOPES if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in sd):
        sd = strip_prefix({k: v for k, v in sd.items() if k.startswith("backbone.")}, "backbone.")
    if sd and all(k.startswith("module.") for k in sd):
        sd = strip_prefix(sd, "module.")
    return sd


def shift_swin_downsample_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Swin checkpoints keep a stage's patch merging at its end (`layers.i.downsample`); timm's layout
    starts stage i+1 with it. Renames when the official layout is found (`layers.0.downsample.*` present)."""
    if not any(k.startswith("layers.0.downsample.") for k in state_dict):
        return dict(state_dict)
    shift = re.compile(r"^layers\.(\d+)\.downsample\.")
    return {shift.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k): v for k, v in state_dict.items()}


def rename_keys(state_dict: Mapping[str, torch.Tensor], renames: Iterable[tuple[re.Pattern, Callable]]
                ) -> dict[str, torch.Tensor]:
    """Apply every (pattern, replacement) of `renames` to each key (official names -> timm-style names)."""
    out = {}
    for k, v in state_dict.items():
        for pat, rep in renames:
            k = pat.sub(rep, k)
        out[k] = v
    return out


def resample_square_pos_embed(
        pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0, key: str = "pos_embed",
) -> torch.Tensor:
    """Resample a (1, prefix + N, C) position table made on a square grid to `grid` (bicubic, no antialias, as
    the official fine-tuning loaders); the prefix (class) tokens are kept. ValueError if N is not square."""
    from timm.layers import resample_abs_pos_embed

    n_old = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(n_old)
    if side * side != n_old:
        raise ValueError(f"cannot resize {key}: {n_old} tokens is not a square grid")
    return resample_abs_pos_embed(pos_embed, new_size=list(grid), old_size=[side, side],
                                  num_prefix_tokens=num_prefix_tokens, interpolation="bicubic", antialias=False,
                                  verbose=False)


def download_cached(url: str, file_name: str | None = None) -> str:
    """Download `url` once into torch.hub's checkpoint cache under `file_name` (default: the URL's basename)."""
    from torch.hub import download_url_to_file, get_dir

    folder = os.path.join(get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    local = os.path.join(folder, file_name or os.path.basename(url.split("?")[0].rstrip("/")))
    if not os.path.exists(local):
        download_url_to_file(url, local)
    return local


def build_model_with_pretrained_file(
        model_cls: Callable[..., nn.Module],
        variant: str,
        pretrained: bool = False,
        *,
        pretrained_filter_fn: Callable,
        cache_file_names: Mapping[str, str] | None = None,
        **kwargs: Any,
) -> nn.Module:
    """timm's `build_model_with_cfg`, with the weights a pretrained cfg names (`file` or `url`) read by
    `load_state_dict_file` and handed to timm unwrapped (`unwrap_state_dict`: `model`, not the EMA copy).

    timm then applies `pretrained_filter_fn`, input-conv adaptation (`in_chans`) and classifier removal as
    usual. `cache_file_names` maps release URLs to the name they are cached under (official hosts serve many
    files under one basename). The checkpoint is not kept in the model's `pretrained_cfg`, which names the
    original `file` / `url` again. hf-hub, local-dir and `state_dict` sources are left to timm.
    """
    from timm.models import build_model_with_cfg, resolve_pretrained_cfg

    restore = None
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
        path = None
        if cfg.state_dict is None and not cfg.hf_hub_id and cfg.source not in ("hf-hub", "local-dir"):
            if cfg.file:
                path = cfg.file
            elif cfg.url:
                path = download_cached(cfg.url, (cache_file_names or {}).get(cfg.url))
        if path is not None:
            overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
            overlay.update(state_dict=unwrap_state_dict(load_state_dict_file(path)), file=None, url=None)
            kwargs["pretrained_cfg_overlay"] = overlay
            restore = {"file": cfg.file, "url": cfg.url}
    model = build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=pretrained_filter_fn, **kwargs)
    if restore is not None:
        # neither the model nor a features wrapper keeps the whole checkpoint alive in its pretrained_cfg
        for m in model.modules():
            cfg = getattr(m, "pretrained_cfg", None)
            if isinstance(cfg, Mapping) and "state_dict" in cfg:
                cfg = {k: v for k, v in cfg.items() if k != "state_dict"}
                cfg.update({k: v for k, v in restore.items() if v})
                m.pretrained_cfg = m.default_cfg = cfg
    return model


def load_pretrained_file(
        model: nn.Module,
        path: str | os.PathLike,
        filter_fn: Callable[[Mapping, nn.Module], dict] | None = None,
        strict: bool = True,
        use_ema: bool = False,
) -> tuple[list[str], list[str]]:
    """Load an official checkpoint file into an existing `model` through its `filter_fn`.

    `strict=True` raises on any missing or unexpected key, except a classifier (`head.*`) whose size differs
    from the model's or that the model lacks: it keeps the model's own values. Returns (missing, unexpected).
    """
    sd = unwrap_state_dict(load_state_dict_file(path), use_ema=use_ema)
    if filter_fn is not None:
        sd = filter_fn(sd, model)
    own = model.state_dict()
    dropped = [k for k in sd if k.startswith("head.") and (k not in own or own[k].shape != sd[k].shape)]
    for k in dropped:
        sd.pop(k)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if dropped:
        missing = [k for k in missing if not k.startswith("head.")]
    if strict and (missing or unexpected):
        raise RuntimeError(f"checkpoint {os.fspath(path)} does not match {type(model).__name__}: "
                           f"missing {missing[:10]}, unexpected {unexpected[:10]}")
    return missing, unexpected
