"""The life of a run on disk: its start (the plan for output_dir, then opening it), its resume (a checkpoint read,
verified and checked against the config), the checkpoints, best weights and log rows it writes, and its end
(summary.json). The trainer owns the model, optimizer and loop; this owns the files (`RunDir`, `checkpoint`).

A kill at any moment leaves a resumable run: the log row is written first, then the checkpoint (whole, see
`checkpoint.write_checkpoint`), then the best weights; a resume drops log rows the checkpoint does not hold and
writes the best weights again when a kill came before them.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import yaml

from ..checkpoint import load_state_dict_file
from .checkpoint import plain, read_checkpoint, save_weights, weights_metadata, write_checkpoint, write_text_atomic
from .config import ConfigError
from .rundir import RUN_RECORD, RunDir, config_changes, now_iso, plan_run

__all__ = ["Run"]


class Run:
    """One run's `output_dir` (rank 0 writes; every rank reads the plan and the checkpoint)."""

    def __init__(self, cfg: Mapping, main: bool = True):
        self.cfg = cfg
        self.main = main
        self.out = Path(cfg["output_dir"] or Path("output") / cfg["model"])
        self.dir = RunDir(self.out)
        self.plan: dict = {}
        self.resumed_from: str | None = None
        self.resume_info: dict = {}
        self.config_changes: dict = {}
        self.writer = None

    # ------------------------------------------------------------------------------------------------ start
    def make_plan(self) -> dict:
        """How the run starts in output_dir, decided reading only (`rundir.plan_run`)."""
        return plan_run(self.out, self.cfg)

    def read_resume_state(self, classes: list[str], world: int) -> dict | None:
        """The state of the checkpoint the plan resumes (verified whole), after checking that the config and the
        classes allow continuing it; None for a fresh run."""
        ckpt = self.plan.get("checkpoint")
        if not ckpt:
            return None
        state = read_checkpoint(ckpt)
        applied, refused = config_changes(state.get("config", {}), self.cfg)
        if refused:
            diff = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in sorted(refused.items()))
            raise ConfigError(f"resume from {ckpt}: config keys differ from the checkpoint's and cannot be applied "
                              f"to the running optimizer / schedule / data: {diff}; put the checkpoint's values "
                              "back, or start a new run from its weights (initial_checkpoint=...)")
        if state.get("classes") is not None and list(state["classes"]) != list(classes):
            raise ConfigError(f"resume from {ckpt}: the classes ({len(classes)}) differ from the checkpoint's "
                              f"({len(state['classes'])}): the labels would change")
        if state.get("world_size", world) != world:
            applied["world_size"] = [state["world_size"], world]
        self.resumed_from = str(ckpt)
        self.resume_info = {k: state.get(k) for k in ("step", "best_step", "best_ema_step", "weights_path",
                                                      "ema_path", "best_top1", "best_top1_ema")}
        self.config_changes = applied
        if self.main:
            print(f"resumed from {ckpt} at step {state['step']} (epoch {state['epoch']})", flush=True)
            if applied:
                diff = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in sorted(applied.items()))
                print(f"resume: config changes applied (recorded in {RUN_RECORD}): {diff}", flush=True)
        return state

    def open(self, *, step: int, epoch: int, world: int, classes: list[str], class_source: str,
             starting_weights: dict | None = None) -> None:
        """Rank 0, once everything is built: lock output_dir, check the plan still holds, replace or clean up, and
        write the run record and config (the first writes of the run)."""
        cfg, d = self.cfg, self.dir
        d.path.mkdir(parents=True, exist_ok=True)
        d.lock()
        if plan_run(self.out, cfg) != self.plan:
            raise ConfigError(f"output_dir {self.out} changed while this run was starting; start it again")
        if self.plan["replace"]:
            d.remove_run()
        cleaned = d.clean_stale()
        src = Path(self.resumed_from) if self.resumed_from else None
        in_place = src is not None and src.parent.parent.resolve() == self.out.resolve()
        history = d.record().get("history", []) if in_place else []
        entry = {"event": "resume" if src else "start", "time": now_iso(), "step": step, "epoch": epoch,
                 "world_size": world}
        if src:
            entry.update({"from": str(src), "config_changes": self.config_changes})
        elif starting_weights is not None:
            entry["starting_weights"] = starting_weights
        if cleaned:
            entry["cleaned"] = cleaned
        history.append(entry)
        record = {"format": "visionattn.run", "version": 1, "model": cfg["model"], "classes": classes,
                  "class_source": class_source, "history": history}
        write_text_atomic(self.out / RUN_RECORD, json.dumps(record, indent=1))
        write_text_atomic(self.out / "config.yaml", yaml.safe_dump(plain(cfg), sort_keys=False))
        if src is not None and not in_place:
            # continuing another run's checkpoint: this run starts with its own copy, so it resumes by itself
            write_checkpoint(self.out, step, {
                f.name: (lambda p, f=f: shutil.copyfile(f, p)) for f in src.iterdir()
                if f.name in ("model.safetensors", "model_ema.safetensors", "state.pt")})
        if src is not None:
            d.truncate_log(step)  # rows of steps the checkpoint does not hold (a kill came in between)
            self._restore_best(src.parent.parent)
        if cfg["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency

            self.writer = SummaryWriter(str(self.out / "tb"), purge_step=step if src else None)

    def _restore_best(self, src_run: Path) -> None:
        """best(_ema).safetensors must hold the weights of the step the checkpoint calls best. A kill between the
        checkpoint and the best export leaves them older: write them again from the checkpoint's weights (the
        best step is the checkpoint's own step then), or from the source run when resuming into a new folder."""
        st = self.resume_info
        for step_key, name, weights_key, top1 in (
                ("best_step", "best.safetensors", "weights_path", st.get("best_top1")),
                ("best_ema_step", "best_ema.safetensors", "ema_path", st.get("best_top1_ema"))):
            best = st.get(step_key)
            if best is None:
                continue
            target = self.out / name
            if _weights_step(target) == str(best):
                continue
            src = None
            if best == st["step"] and st.get(weights_key) is not None:
                src = st[weights_key]
            elif _weights_step(src_run / name) == str(best):
                src = src_run / name
            if src is None:
                print(f"resume: warning: the best weights (step {best}) are not available to write {target}",
                      flush=True)
                continue
            save_weights(load_state_dict_file(src), target, {"model": self.cfg["model"], "step": best, "top1": top1})

    # ------------------------------------------------------------------------------------------- during the run
    def save(self, step: int, weights: Mapping[str, Callable[[], Mapping]], state: Mapping, meta: Mapping) -> Path:
        """Rank 0: one checkpoint of this step, written whole (`weights`: file name -> state-dict getter)."""
        files = {name: (lambda p, get=get: save_weights(get(), p, meta, atomic=False)) for name, get in weights.items()}
        state = plain(state)
        files["state.pt"] = lambda p: torch.save(state, p)
        return write_checkpoint(self.out, step, files)

    def export_best(self, name: str, state_dict: Mapping, meta: Mapping) -> None:
        """best.safetensors / best_ema.safetensors, after the checkpoint that records them as best."""
        save_weights(state_dict, self.out / name, meta)

    def log(self, row: dict) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, float) and k not in ("epoch", "step"):
                    self.writer.add_scalar(f"epoch/{k}", v, row["epoch"])

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)

    # --------------------------------------------------------------------------------------------------- end
    def finish(self, summary: Mapping) -> None:
        write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.dir.unlock()


def _weights_step(path: Path) -> str | None:
    """The step in a weights file's metadata (None when absent or unreadable)."""
    if not path.is_file():
        return None
    try:
        return weights_metadata(path).get("step")
    except Exception:  # unreadable (safetensors raises its own error type): treated as absent
        return None
