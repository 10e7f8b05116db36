"""Fault injection for the trainer (run by tests/test_train_faults.py in its own process).

Training runs in forked children of this process (imports paid once). Each child is killed with SIGKILL
either at a chosen file operation (every operation that changes the disk is counted: open for writing,
rename / replace, unlink, rmdir, mkdir, safetensors and torch saves; a "torn" variant also truncates the file a
save just wrote before the kill), or from this process after a random delay. The run is then resumed with
`resume=auto` (killed again in the random mode) until it finishes, and compared with an uninterrupted run:
final weights (model and EMA), best weights, step / epoch counters, log rows, leftovers.

    python tests/train_fault_driver.py --data DIR --work DIR [--points all|0,6,8] [--random N] [--seed S]
    python tests/train_fault_driver.py --data DIR --work DIR --pick 6:write_safetensors:model.safetensors:torn,...

`--pick` names single kill points instead of sweeping steps: STEP:OP[:PATH-SUBSTRING][:torn], the first operation of
that name at that optimizer step whose path contains the substring.

Prints one JSON object per run on stdout and a summary object last.
"""
from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from train_common import TINY, final_weights, max_diff, state_file, train_main, weights  # noqa: E402


def _warm_imports() -> None:
    """Import what a training run imports lazily, once here instead of in every forked child."""
    import PIL.PngImagePlugin  # noqa: F401
    import safetensors.torch  # noqa: F401
    import timm
    import timm.data
    import timm.loss
    import timm.optim
    import timm.scheduler
    import timm.utils  # noqa: F401
    import tqdm  # noqa: F401
    import yaml  # noqa: F401

    import visionattn  # noqa: F401
    import visionattn.layers.prepbn  # noqa: F401

    timm.create_model("nat_mini", num_classes=10, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8],
                      kernel_size=3)

# 2 epochs of 8 steps, a checkpoint every 3 steps (3, 6, 8 = epoch end with best, 11, 14, 16), EMA on and
# random augmentation + drop path, so the restored RNG states and EMA matter.
ARGS = [*TINY, "epochs=2", "checkpoint_interval=3", "model_ema=true", "model_ema_decay=0.9", "drop_path=0.1",
        "scale=[0.7, 1.0]"]


class Injector:
    """Counts the disk-changing operations of this process (outermost calls only) and kills it at one."""

    def __init__(self, kill_at: int | None = None, torn: bool = False):
        self.kill_at, self.torn = kill_at, torn
        self.count, self.depth, self.step = 0, 0, 0
        self.log: list[tuple[int, str, str]] = []

    def die(self):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, name, fn, writes=lambda *a, **k: True, target=lambda *a, **k: a[0] if a else ""):
        def op(*a, **k):
            if self.depth or not writes(*a, **k):
                return fn(*a, **k)
            self.count += 1
            path = str(target(*a, **k))
            self.log.append((self.step, name, path))
            hit = self.count == self.kill_at
            if hit and not self.torn:
                self.die()
            self.depth += 1
            try:
                result = fn(*a, **k)
            finally:
                self.depth -= 1
            if hit:  # torn: the operation ran; cut the file it wrote in half, then die
                if os.path.isfile(path):
                    os.truncate(path, os.path.getsize(path) // 2)
                self.die()
            return result

        return op

    def install(self):
        def open_writes(file, mode="r", *a, **k):
            return isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+")

        def os_open_writes(path, flags, *a, **k):
            return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))

        real_open = builtins.open
        wrapped_open = self.wrap("open", real_open, open_writes)
        builtins.open = io.open = wrapped_open
        os.open = self.wrap("os.open", os.open, os_open_writes)
        for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "makedirs", "truncate", "link"):
            setattr(os, name, self.wrap(f"os.{name}", getattr(os, name),
                                        target=(lambda *a, **k: a[1]) if name in ("replace", "rename", "link")
                                        else (lambda *a, **k: a[0])))
        for name in ("rmtree", "copyfile", "copy2", "move"):
            setattr(shutil, name, self.wrap(f"shutil.{name}", getattr(shutil, name),
                                            target=(lambda *a, **k: a[1] if len(a) > 1 else a[0])))
        import visionattn.train.checkpoint as ckpt

        ckpt.write_safetensors = self.wrap("write_safetensors", ckpt.write_safetensors,
                                           target=lambda *a, **k: a[1] if len(a) > 1 else k["path"])
        torch.save = self.wrap("torch.save", torch.save, target=lambda *a, **k: a[1] if len(a) > 1 else k["f"])

        def on_step(optimizer, args, kwargs):
            self.step += 1

        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(on_step)


def child(argv: list[str], log: Path, injector: Injector | None = None, ops_file: Path | None = None) -> int:
    """Fork; the child runs the trainer (stdout/stderr to `log`) and exits with its code. Returns the pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if injector is not None:
            injector.install()
        code = train_main()(argv)
        if ops_file is not None and injector is not None:
            ops_file.write_text(json.dumps(injector.log))
    except BaseException as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 71 if not isinstance(e, SystemExit) else (e.code or 0)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def wait(pid: int) -> tuple[int | None, int | None]:
    """(exit code, signal) of a child."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.WEXITSTATUS(status), None


def tail(p: Path, n: int = 1500) -> str:
    return p.read_text(errors="replace")[-n:] if p.exists() else ""


def compare(ref: Path, run: Path) -> dict:
    """How a resumed run differs from the uninterrupted one."""
    out = {}
    out["max_diff"] = max_diff(weights(final_weights(ref)), weights(final_weights(run)))
    out["max_diff_ema"] = max_diff(weights(final_weights(ref, ema=True)), weights(final_weights(run, ema=True)))
    out["max_diff_best"] = max_diff(weights(ref / "best.safetensors"), weights(run / "best.safetensors"))
    a, b = (torch.load(state_file(p), weights_only=True) for p in (ref, run))
    out["counters_equal"] = all(a[k] == b[k] for k in ("step", "epoch", "micro_in_epoch", "best_top1"))
    out["step"] = b["step"]
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (ref, run))
    out["summary_equal"] = all(sa[k] == sb[k] for k in ("steps", "epochs", "completed", "best_top1", "final_top1"))
    rows = [[(r["epoch"], r["step"], r.get("top1"))
             for r in map(json.loads, (p / "log.jsonl").read_text().splitlines())] for p in (ref, run)]
    out["log_equal"] = rows[0] == rows[1]
    out["leftovers"] = sorted(str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name)
    ckpts = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
    out["checkpoint_dirs"] = [p.name for p in ckpts]
    out["ok"] = (out["max_diff"] <= 1e-6 and out["max_diff_ema"] <= 1e-6 and out["max_diff_best"] <= 1e-6
                 and out["counters_equal"] and out["summary_equal"] and out["log_equal"] and not out["leftovers"]
                 and len(ckpts) <= 1)
    return out


def _pick(ops: list, spec: str) -> tuple[int, bool]:
    """The kill point STEP:OP[:PATH-SUBSTRING][:torn] names: (1-based operation index, torn)."""
    parts = spec.split(":")
    torn = parts[-1] == "torn"
    if torn:
        parts = parts[:-1]
    step, name, sub = int(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""
    for i, (s, n, path) in enumerate(ops):
        if s == step and n == name and sub in os.path.basename(path):
            return i + 1, torn
    raise SystemExit(f"--pick {spec}: no such operation in the reference run")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--points", default="0,6,8,16", help="optimizer steps whose file operations are kill points "
                                                         "('all': every operation of the run)")
    p.add_argument("--torn", action="store_true", help="also a torn-write variant of each save")
    p.add_argument("--random", type=int, default=0, help="random-time kills")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-points", type=int, default=0, help="0: all selected points")
    p.add_argument("--pick", default="", help="comma-separated STEP:OP[:PATH-SUBSTRING][:torn] kill points")
    args = p.parse_args()
    _warm_imports()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    argv = [*ARGS, f"data_dir={args.data}"]
    results = []

    # the uninterrupted run, counting the operations
    ref = work / "ref"
    t0 = time.time()
    pid = child([*argv, f"output_dir={ref}"], work / "ref.log", Injector(), work / "ops.json")
    rc, sig = wait(pid)
    duration = time.time() - t0
    if rc != 0:
        print(json.dumps({"error": "reference run failed", "rc": rc, "signal": sig, "log": tail(work / "ref.log")}))
        return 1
    ops = json.loads((work / "ops.json").read_text())
    if args.pick:
        variants = [_pick(ops, spec) for spec in args.pick.split(",")]
    else:
        steps = None if args.points == "all" else {int(x) for x in args.points.split(",")}
        points = [i + 1 for i, (step, _, _) in enumerate(ops) if steps is None or step in steps]
        points.append(len(ops) + 1)  # after the last operation: the run ends normally (no kill)
        if args.max_points and len(points) > args.max_points:
            points = sorted(random.Random(args.seed).sample(points, args.max_points))
        variants = [(k, False) for k in points]
        if args.torn:
            variants += [(i + 1, True) for i, (step, name, _) in enumerate(ops)
                         if (steps is None or step in steps) and name in ("write_safetensors", "torch.save")]

    for k, torn in variants:
        run = work / f"k{k}{'t' if torn else ''}"
        log = work / f"{run.name}.log"
        rc, sig = wait(child([*argv, f"output_dir={run}"], log, Injector(kill_at=k, torn=torn)))
        op = ops[k - 1] if k <= len(ops) else (None, "end", "")
        res = {"mode": "point", "k": k, "torn": torn, "at_step": op[0], "op": op[1],
               "path": op[2].replace(str(run), "<run>"), "killed": sig == signal.SIGKILL}
        if sig is None and rc != 0:
            res.update(ok=False, error=f"killed run exited {rc}", log=tail(log))
        else:
            rc2, sig2 = wait(child([*argv, f"output_dir={run}", "resume=auto"], log))
            res["resume_rc"] = rc2
            if rc2 != 0:
                res.update(ok=False, log=tail(log))
            else:
                try:
                    res.update(compare(ref, run))
                except Exception as e:  # noqa: BLE001
                    res.update(ok=False, error=f"{type(e).__name__}: {e}", log=tail(log))
        results.append(res)
        print(json.dumps(res), flush=True)
        if res.get("ok"):
            shutil.rmtree(run)

    # random-time kills: kill, resume, kill again... until a run finishes
    rnd = random.Random(args.seed)
    kills = 0
    run = work / "random"
    log = work / "random.log"
    times = []
    attempts = 0
    while kills < args.random and attempts < 4 * args.random + 4:
        attempts += 1
        pid = child([*argv, f"output_dir={run}", "resume=auto"], log)
        delay = rnd.uniform(0.0, duration)
        time.sleep(delay)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        rc, sig = wait(pid)
        if sig == signal.SIGKILL:
            kills += 1
            times.append(round(delay, 3))
        elif rc != 0:
            results.append({"mode": "random", "ok": False, "error": f"exit {rc}", "log": tail(log)})
            break
        else:  # finished before the kill: start over in a fresh directory
            shutil.rmtree(run)
    if args.random:
        rc, sig = wait(child([*argv, f"output_dir={run}", "resume=auto"], log))
        res = {"mode": "random", "kills": kills, "times_s": times, "resume_rc": rc}
        if rc == 0:
            res.update(compare(ref, run))
        else:
            res.update(ok=False, log=tail(log))
        results.append(res)
        print(json.dumps(res), flush=True)

    summary = {"summary": True, "ops_in_run": len(ops), "reference_s": round(duration, 2),
               "points": len(variants), "killed": sum(r.get("killed", False) for r in results),
               "random_kills": kills, "failed": sum(not r.get("ok") for r in results),
               "max_diff": max((r.get("max_diff", 0.0) for r in results), default=0.0),
               "ops_by_step": {str(s): sum(1 for o in ops if o[0] == s) for s in sorted({o[0] for o in ops})}}
    print(json.dumps(summary), flush=True)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
