"""Starting weights of a run: released weights (`pretrained`) or a checkpoint file (`initial_checkpoint`).

Either is read safely (safetensors or weights-only torch), unwrapped from trainer envelopes, and mapped onto the
model by its family's `checkpoint_filter_fn` (official key names, tables resized to the model's size). The
classifier is re-initialised when the checkpoint's differs in size (another class count) or is absent; any
other tensor that does not fit (another architecture, a missing or an unexpected key, another shape) stops the
run before its first step with a `ConfigError` naming it.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

import timm
import torch
from torch import nn

from ..checkpoint import CheckpointError, load_state_dict_file, unwrap_state_dict
from .checkpoint import weights_file
from .config import ConfigError

__all__ = ["filter_fn_for", "classifier_keys", "starting_weights", "check_starting_weights", "read_weights",
           "fit_state_dict", "load_starting_weights", "describe"]


def filter_fn_for(model_name: str) -> Callable | None:
    """The `checkpoint_filter_fn` of a model's family: the one beside its timm entrypoint, or the zoo's own for an
    adopted timm family whose official checkpoints timm does not map (`visionattn.adopted.<family>_...`)."""
    import visionattn
    from visionattn import adopted

    arch = timm.models.get_arch_name(model_name)
    try:
        family = visionattn.get_family(arch)
    except KeyError:
        family = None
    own = getattr(adopted, f"{family}_checkpoint_filter_fn", None) if family else None
    if own is not None:
        return own
    module = sys.modules.get(timm.models.model_entrypoint(arch).__module__)
    return getattr(module, "checkpoint_filter_fn", None)


def classifier_keys(model: nn.Module) -> list[str]:
    """The state-dict keys of the model's classifier(s) (its pretrained_cfg's `classifier`)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    own = model.state_dict()
    return [k for k in own if any(k.startswith(f"{n}.") for n in names)]


def starting_weights(cfg: Mapping) -> tuple[str, str] | None:
    """("initial_checkpoint", path) or ("pretrained", weights name) the run starts from; None for random."""
    if cfg["initial_checkpoint"]:
        return "initial_checkpoint", str(cfg["initial_checkpoint"])
    pretrained = cfg["pretrained"]
    if pretrained is False:
        return None
    if pretrained is True:
        return "pretrained", cfg["finetune_from"] or str(cfg["model"])
    return "pretrained", str(pretrained)


def _pretrained_cfg(name: str):
    try:
        pcfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as e:
        raise ConfigError(f"pretrained={name}: {e} (see timm.list_pretrained({name.split('.')[0]!r}))") from None
    return pcfg


def _where(name: str) -> str:
    try:
        pcfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError:
        return ""
    loc = pcfg.file or pcfg.url or (f"hf-hub:{pcfg.hf_hub_id}" if pcfg.hf_hub_id else "")
    return f" ({loc})" if loc else ""


def check_starting_weights(cfg: Mapping) -> None:
    """A fine-tune recipe (`finetune_from`) never starts from random weights: ConfigError saying what to pass."""
    if cfg["finetune_from"] and starting_weights(cfg) is None:
        tag = cfg["finetune_from"]
        raise ConfigError(f"{cfg['model']} is a fine-tune recipe starting from {tag}{_where(tag)}: pass "
                          f"pretrained=true to download it, pretrained=true pretrained_path=FILE for a local copy, "
                          f"or initial_checkpoint=FILE")


def read_weights(cfg: Mapping) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of the run's starting weights (envelopes opened) and where they come from."""
    kind, name = starting_weights(cfg)
    use_ema = cfg["starting_weights_ema"]
    if kind == "initial_checkpoint":
        path = weights_file(name)
        where = f"initial_checkpoint={path}"
    else:
        pcfg = _pretrained_cfg(name)
        where = f"pretrained={name}"
        path = cfg["pretrained_path"] or pcfg.file
        if not path:
            path = _download(name, pcfg)
            if isinstance(path, dict):  # hub weights come as a state dict
                return path, where
        where += f" ({path})"
    try:
        sd = unwrap_state_dict(load_state_dict_file(str(path)), use_ema=use_ema)
    except FileNotFoundError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (CheckpointError, OSError, IsADirectoryError) as e:
        raise ConfigError(f"{where}: {e}") from None
    except KeyError:
        raise ConfigError(f"{where}: starting_weights_ema is true but the file has no EMA weights "
                          "(model_ema / state_dict_ema)") from None
    if not sd:
        raise ConfigError(f"{where}: the file holds no tensors")
    return sd, where


def _download(name: str, pcfg):
    """Fetch released weights (a file path, or a state dict for hub weights); ConfigError when it fails."""
    try:
        if pcfg.hf_hub_id:
            from timm.models._builder import _resolve_pretrained_source  # the hub id of a tag (timm/<name>)
            from timm.models._hub import load_state_dict_from_hf

            _, loc = _resolve_pretrained_source(pcfg.to_dict())
            return load_state_dict_from_hf(loc)
        if pcfg.url:
            from timm.models._hub import download_cached_file

            return download_cached_file((pcfg.url, f"{name}.pth"), check_hash=False)
    except Exception as e:  # network, hub and file errors alike: one line, with the way round it
        raise ConfigError(f"pretrained={name}: could not fetch the weights ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); download them yourself and pass "
                          "pretrained_path=FILE") from None
    raise ConfigError(f"pretrained={name}: timm names no file for these weights; pass pretrained_path=FILE")


def _examples(keys, n: int = 2) -> str:
    keys = list(keys)
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def _checkpoint_classes(sd: Mapping[str, torch.Tensor]) -> int | None:
    heads = [v for k, v in sd.items() if k.endswith(".weight") and "head" in k and v.ndim == 2]
    return int(heads[-1].shape[0]) if heads else None


def fit_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], filter_fn: Callable | None,
                   where: str) -> tuple[dict[str, torch.Tensor], dict]:
    """`sd` mapped onto `model` (filter, classifier handling) and checked tensor by tensor.

    Returns (state dict to load, report). The classifier is left to the model's own initialisation when the
    checkpoint's is absent or sized differently; anything else that does not fit is a ConfigError."""
    own = model.state_dict()
    raw_classes = _checkpoint_classes(sd)
    n_in = len(sd)
    try:
        mapped = dict(filter_fn(dict(sd), model)) if filter_fn is not None else dict(sd)
    except Exception as e:  # a filter meeting another architecture's checkpoint: report it as not fitting
        raise ConfigError(f"{where} does not fit model {type(model).__name__}: its family's checkpoint filter "
                          f"failed ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    reinit = []
    for k in classifier_keys(model):
        v = mapped.get(k)
        # a filter may fill an absent classifier with the model's own tensor: that is a re-initialisation too
        if v is None or v.shape != own[k].shape or v.data_ptr() == own[k].data_ptr():
            reinit.append(k)
            mapped.pop(k, None)
    unexpected = [k for k in mapped if k not in own]
    missing = [k for k in own if k not in mapped and k not in reinit]
    shapes = [k for k in mapped if k in own and tuple(mapped[k].shape) != tuple(own[k].shape)]
    if unexpected or missing or shapes:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} of its {n_in} tensors have no place in the model "
                         f"({_examples(unexpected)})")
        if missing:
            parts.append(f"{len(missing)} of the model's {len(own)} tensors are not in it ({_examples(missing)})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} differ in shape ({k!r}: checkpoint {tuple(mapped[k].shape)}, model "
                         f"{tuple(own[k].shape)})")
        raise ConfigError(f"{where} does not fit model {getattr(model, 'default_cfg', {}).get('architecture', '')}"
                          f"{'' if filter_fn else ' (no checkpoint filter)'}: {'; '.join(parts)}")
    report = {"source": where, "tensors": len(mapped), "of": len(own)}
    if reinit:
        n_model = getattr(model, "num_classes", None)
        report["classifier_reinitialised"] = sorted({k.rsplit(".", 1)[0] for k in reinit})
        report["classes"] = [raw_classes, n_model]
    return mapped, report


def load_starting_weights(model: nn.Module, cfg: Mapping) -> dict | None:
    """Load the run's starting weights into `model` (see the module docstring); None when it starts from random
    weights. Returns a report: source, tensors loaded, a re-initialised classifier."""
    if starting_weights(cfg) is None:
        return None
    sd, where = read_weights(cfg)
    mapped, report = fit_state_dict(model, sd, filter_fn_for(cfg["model"]), where)
    model.load_state_dict(mapped, strict=False)
    return report


def describe(report: dict | None) -> str:
    """One line for the log."""
    if report is None:
        return "starting weights: random initialisation"
    line = f"starting weights: {report['source']}: {report['tensors']}/{report['of']} tensors loaded"
    if report.get("classifier_reinitialised"):
        src, dst = report.get("classes", [None, None])
        sizes = f" ({src} -> {dst} classes)" if src is not None else ""
        line += f"; classifier {', '.join(report['classifier_reinitialised'])} re-initialised{sizes}"
    return line
