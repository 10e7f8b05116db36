"""The run directory (`output_dir`): never overwritten, locked while a run writes, one record of every start.

* `run.json` marks a folder as a training run: model, class names, and one history entry per start or
  resume (with the config keys a resume changed);
* a fresh run needs an empty or new folder: a run already there is continued with `resume=auto` or replaced
  with `overwrite=true` (only that run's own files go); another non-empty folder is refused, or written
  beside with `overwrite=true` when none of the run's file names are taken;
* `resume=auto` without a checkpoint never starts over a run whose results are there;
* on resume, config keys that only steer the run may change (applied, recorded); any other change is refused,
  since the restored optimizer / scheduler / data order would silently keep the checkpoint's value.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path

from .checkpoint import (
    CHECKPOINTS,
    checkpoint_dir,
    checkpoint_step,
    clean_checkpoints,
    latest_checkpoint,
    plain,
    remove_checkpoints,
    write_text_atomic,
)
from .config import RESUME_MUTABLE, ConfigError, flat

__all__ = ["RUN_RECORD", "RUN_FILES", "RESUME_MUTABLE", "RunDir", "plan_run", "config_changes", "now_iso"]

RUN_RECORD = "run.json"
# a run's own files in output_dir (the only names a replaced run loses); tb/ event files besides
RUN_FILES = (RUN_RECORD, "config.yaml", "log.jsonl", "summary.json", "best.safetensors", "best_ema.safetensors")
_RESULT_FILES = ("summary.json", "best.safetensors", "best_ema.safetensors")
_TMP_FILE = re.compile(r"^\.(.+)\.tmp\d+$")
_TB_EVENTS = re.compile(r"^events\.out\.tfevents\.")


class RunDir:
    """A training run's `output_dir`: what it holds, its lock, and removal of exactly the run's own files."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd = None

    def entries(self) -> list[str]:
        """What the directory holds, less the temporary files of our own killed writes (`clean_stale`)."""
        if not self.path.is_dir():
            return []
        return sorted(n for n in os.listdir(self.path) if not self._own_tmp(n))

    def _own_tmp(self, name: str) -> bool:
        m = _TMP_FILE.match(name)
        return bool(m and m[1] in RUN_FILES and (self.path / name).is_file())

    def is_run(self) -> bool:
        return (self.path / RUN_RECORD).is_file()

    def record(self) -> dict:
        try:
            rec = json.loads((self.path / RUN_RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return rec if isinstance(rec, dict) else {}

    def results(self) -> list[str]:
        return [n for n in _RESULT_FILES if (self.path / n).is_file()]

    def latest(self) -> Path | None:
        return latest_checkpoint(self.path)

    def describe(self) -> str:
        rec, latest = self.record(), self.latest()
        where = f"checkpoint at step {checkpoint_step(latest)}" if latest is not None else "no checkpoint"
        done = " (finished)" if (self.path / "summary.json").is_file() else ""
        return f"model {rec.get('model', '?')}, {where}{done}"

    def lock(self) -> None:
        """Hold an exclusive lock on the directory until `unlock` or process exit (a second trainer on the same
        output_dir is refused instead of interleaving writes)."""
        try:
            import fcntl
        except ImportError:  # no flock on this platform
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"output_dir {self.path} is in use by another training process") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def clean_stale(self) -> list[str]:
        """Remove what killed writes of ours left: temporary files of the run's files, temporary and half-removed
        checkpoint directories, and checkpoints older than the newest. Returns the names removed."""
        removed = []
        for name in sorted(os.listdir(self.path)) if self.path.is_dir() else []:
            if self._own_tmp(name):
                os.unlink(self.path / name)
                removed.append(name)
        removed.extend(clean_checkpoints(self.path))
        return removed

    def remove_run(self) -> None:
        """Delete the run's own files (overwrite=true): checkpoints, best weights, logs, records, tb events."""
        self.clean_stale()
        remove_checkpoints(self.path)
        tb = self.path / "tb"
        if tb.is_dir():
            for f in tb.iterdir():
                if f.is_file() and _TB_EVENTS.match(f.name):
                    f.unlink()
            try:
                tb.rmdir()
            except OSError:
                pass
        for name in RUN_FILES[::-1]:  # run.json last: a killed removal is still recognised as a run
            if (self.path / name).is_file():
                os.unlink(self.path / name)

    def truncate_log(self, step: int) -> int:
        """Drop log rows after `step` (written before a checkpoint that a kill prevented) and torn lines."""
        p = self.path / "log.jsonl"
        if not p.is_file():
            return 0
        keep, dropped = [], 0
        for line in p.read_text().splitlines():
            try:
                row = json.loads(line)
                ok = isinstance(row, dict) and row.get("step", 0) <= step
            except ValueError:
                ok = False
            if ok:
                keep.append(line)
            else:
                dropped += 1
        if dropped:
            write_text_atomic(p, "".join(f"{x}\n" for x in keep))
        return dropped


def _legacy_hint(d: RunDir) -> str:
    if (d.path / "last_state.pt").is_file():
        return (" (it holds last_state.pt, a run of an older visionattn trainer whose checkpoints cannot be "
                "resumed safely; start from its weights with initial_checkpoint=<its last.safetensors>)")
    return ""


def _fresh_into(d: RunDir, overwrite: bool) -> dict:
    """A fresh run may start in `d`: absent or empty; or our run with overwrite=true (it is replaced); or another
    folder with overwrite=true when none of the run's file names are taken there (written beside them)."""
    entries = d.entries()
    if not entries:
        return {"mode": "fresh", "replace": False}
    if d.is_run():
        if overwrite:
            return {"mode": "fresh", "replace": True}
        raise ConfigError(f"output_dir {d.path} already holds a training run ({d.describe()}): pass resume=auto "
                          "to continue it, overwrite=true to replace it, or choose another output_dir")
    taken = [n for n in entries if n in RUN_FILES or n in (CHECKPOINTS, "tb")]
    if overwrite and not taken and not _legacy_hint(d):
        return {"mode": "fresh", "replace": False}
    if taken:
        raise ConfigError(f"output_dir {d.path} holds {taken[0]!r}, which this run would write but did not "
                          f"create{_legacy_hint(d)}: choose another output_dir")
    raise ConfigError(f"output_dir {d.path} is not empty ({len(entries)} entries, e.g. {entries[0]!r}) and holds no "
                      f"training run{_legacy_hint(d)}: choose another output_dir, or pass overwrite=true to write this "
                      "run beside those files (nothing of theirs is deleted); resume=auto continues a run only")


def _resume_source(path: Path) -> Path:
    """The checkpoint directory `resume=<path>` names: a run directory (its newest checkpoint), a checkpoint
    directory, or a file inside one."""
    if path.is_file() and path.name == "last_state.pt":
        raise ConfigError(f"resume={path}: a state file of an older visionattn trainer, which cannot be resumed "
                          "safely; start from its weights with initial_checkpoint=<its last.safetensors>")
    try:
        return checkpoint_dir(path)
    except ConfigError as e:
        raise ConfigError(f"resume={path}: {e}{_legacy_hint(RunDir(path)) if path.is_dir() else ''}") from None


def plan_run(out: str | os.PathLike, cfg: Mapping) -> dict:
    """How a run starts in `out`, decided reading only (see `_plan_run`)."""
    plan = _plan_run(out, cfg)
    return {"mode": plan["mode"], "checkpoint": plan.get("checkpoint"), "replace": plan["replace"]}


def _plan_run(out: str | os.PathLike, cfg: Mapping) -> dict:
    """Decide, reading only, how a run starts in `out`: {"mode": "fresh" | "resume", "checkpoint": dir or None,
    "replace": delete the run already there (overwrite=true)}. ConfigError when the run may not start:

    * a fresh run into a non-empty directory (see `_fresh_into`);
    * `resume=auto` where there is no checkpoint but a run's results are (never silently started over);
    * `resume=<older checkpoint>` of the same run (continuing it in place would discard newer ones)."""
    d = RunDir(out)
    if d.path.exists() and not d.path.is_dir():
        raise ConfigError(f"output_dir {d.path} is a file, not a directory")
    resume = cfg["resume"]
    if resume == "auto":
        latest = d.latest()
        if latest is not None:
            return {"mode": "resume", "checkpoint": str(latest), "replace": False}
        if d.is_run() and d.results():
            if cfg["overwrite"]:
                return {"mode": "fresh", "replace": True}
            raise ConfigError(f"resume=auto: {d.path} holds a run's results ({', '.join(d.results())}) but no "
                              f"checkpoint ({CHECKPOINTS}/step-*) to resume from; refusing to start it over: pass "
                              "overwrite=true to replace that run, or choose another output_dir")
        if d.is_run():  # killed before its first checkpoint: nothing to lose, start again
            return {"mode": "fresh", "replace": True}
        return _fresh_into(d, cfg["overwrite"])
    if resume:
        ckpt = _resume_source(Path(resume))
        same = d.path.is_dir() and ckpt.parent.parent.resolve() == d.path.resolve()
        if same:
            latest = d.latest()
            if latest is not None and ckpt.resolve() != latest.resolve():
                raise ConfigError(f"resume={resume}: {latest.name} is newer in the same output_dir; continuing the "
                                  "older checkpoint there would discard it: resume into another output_dir")
            return {"mode": "resume", "checkpoint": str(ckpt), "replace": False}
        plan = _fresh_into(d, cfg["overwrite"])
        return {**plan, "mode": "resume", "checkpoint": str(ckpt)}
    return _fresh_into(d, cfg["overwrite"])




def config_changes(old: Mapping, new: Mapping) -> tuple[dict, dict]:
    """(applied, refused): {key: [checkpoint value, new value]} for the keys that differ between the config a
    checkpoint was written with and the config of the run resuming it."""
    a, b = flat(plain(old)), flat(plain(new))
    changed = {k: [a[k], b[k]] for k in a.keys() & b.keys() if a[k] != b[k]}
    applied = {k: v for k, v in changed.items() if k in RESUME_MUTABLE}
    refused = {k: v for k, v in changed.items() if k not in RESUME_MUTABLE}
    return applied, refused


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
