"""Official checkpoints -> timm's hub layout (`model.safetensors` + `config.json` with the pretrained cfg), so a team
can mirror the released weights and load them with `timm.create_model("local-dir:DIR")` or with
`pretrained_cfg_overlay=dict(file="DIR/model.safetensors")`.

The checkpoint goes through the family's `checkpoint_filter_fn` like starting weights do (`weights.py`), but
strictly: every tensor must fit, the classifier included (a checkpoint with another class count needs the model
built with that count: `MODEL.tag` whose cfg says so, or `num_classes=N`). Nothing is overwritten that this tool
did not write: the output folder must be new or empty, or hold an earlier output of this tool (replaced).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import timm

from .config import ConfigError, apply_overrides, suggest
from .weights import filter_fn_for

__all__ = ["convert_checkpoint", "convert_main", "HUB_FILES"]

HUB_FILES = ("config.json", "model.safetensors")
_MARK_KEY = "converted_by"
_MARK = "visionattn tools/convert_checkpoint.py"


def _ours(out: Path) -> bool:
    """`out` holds exactly an earlier output of this tool."""
    names = sorted(p.name for p in out.iterdir())
    if names != sorted(HUB_FILES):
        return False
    try:
        return json.loads((out / "config.json").read_text()).get(_MARK_KEY) == _MARK
    except (OSError, ValueError):
        return False


def _check_out(out: Path) -> bool:
    """True when `out` holds an earlier output of this tool (to be replaced); ConfigError when it may not be
    written."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    if _ours(out):
        return True
    raise ConfigError(f"output folder {out} is not empty and was not written by this tool: choose a new or empty "
                      "folder (nothing there is changed)")


def convert_checkpoint(model_name: str, checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = False,
                       model_kwargs: dict | None = None) -> Path:
    """Write `checkpoint` (an official or our own file) as timm hub files in `out`; returns `out`."""
    from ..checkpoint import CheckpointError, load_state_dict_file, unwrap_state_dict
    from .weights import fit_state_dict

    out = Path(out)
    replace = _check_out(out)
    arch = timm.models.get_arch_name(model_name)
    if not timm.is_model(arch):
        raise ConfigError(f"unknown model {model_name!r}{suggest(arch, timm.list_models())}")
    kwargs = dict(model_kwargs or {})
    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except (TypeError, RuntimeError, ValueError) as e:
        raise ConfigError(f"model {model_name!r} rejected its arguments {sorted(kwargs)}: "
                          f"{str(e).splitlines()[0][:200]}") from None
    path = Path(checkpoint)
    try:
        sd = unwrap_state_dict(load_state_dict_file(path), use_ema=use_ema)
    except (FileNotFoundError, IsADirectoryError, CheckpointError, OSError) as e:
        raise ConfigError(str(e)) from None
    except KeyError:
        raise ConfigError(f"checkpoint {path} holds no EMA weights (model_ema / state_dict_ema); drop --ema") from None
    where = f"checkpoint {path}"
    mapped, report = fit_state_dict(model, sd, filter_fn_for(model_name), where)
    if report.get("classifier_reinitialised"):
        src, dst = report["classes"]
        raise ConfigError(f"{where}: its classifier ({src if src is not None else 'absent'} classes) does not fit "
                          f"{model_name} ({dst} classes): pass num_classes={src} or a tag with that class count")
    model.load_state_dict(mapped, strict=True)
    model.eval()
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        from timm.models import save_for_hf

        save_for_hf(model, str(tmp), model_config={_MARK_KEY: _MARK, "converted_from": path.name},
                    model_args=kwargs or None, safe_serialization=True)
        for name in HUB_FILES:
            _fsync(tmp / name)
        if replace:
            for name in HUB_FILES:
                os.replace(tmp / name, out / name)
            tmp.rmdir()
        else:
            if out.is_dir():
                out.rmdir()  # empty: checked above
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def convert_main(argv=None, prog: str = "convert_checkpoint.py") -> int:
    p = _Parser(prog=prog, description="Convert an official checkpoint into timm's hub layout (model.safetensors + "
                                       "config.json), loadable with timm.create_model('local-dir:OUT').")
    p.add_argument("model", help="zoo / timm model name, optionally with a pretrained tag (dinat_large.in22k)")
    p.add_argument("checkpoint", help="the official file (weights-only torch file or safetensors)")
    p.add_argument("out", help="output folder (new or empty; an earlier output of this tool is replaced)")
    p.add_argument("--ema", action="store_true", help="convert the EMA weights (model_ema / state_dict_ema)")
    p.add_argument("model_kwargs", nargs="*", help="key=value model arguments (YAML values), e.g. num_classes=10")
    args = p.parse_args(argv)
    try:
        kwargs = apply_overrides({"model_kwargs": {}},
                                 [f"model_kwargs.{kv}" if "=" in kv else kv for kv in args.model_kwargs])
        out = convert_checkpoint(args.model, args.checkpoint, args.out, args.ema, kwargs["model_kwargs"])
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        return 2
    print(f"wrote {out / HUB_FILES[1]} and {out / HUB_FILES[0]}: load with timm.create_model('local-dir:{out}')",
          flush=True)
    return 0
