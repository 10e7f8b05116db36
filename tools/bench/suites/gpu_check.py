"""The prepared GPU check (issue 20): GPU tests, NA and BRA kernel benchmarks, a model table, a Markdown summary.

    bash tools/gpu_check.sh                                # on the GPU machine: everything in <= 7 minutes
    bash tools/gpu_check.sh --device cpu --quick           # the same wiring on CPU with tiny shapes (a dry run)
    python -m tools.bench gpu-check --render --out-dir DIR # rebuild DIR/summary.md from the rows already there

Sections, run one after another, each in its own process with its own time budget (a soft deadline checked
between measurements, then a hard kill), so a hang, a crash or a broken CUDA context in one loses nothing of
the others; a section killed by a fatal CUDA error is restarted and skips the rows it already has:

  tests   pytest -m gpu (NA + BRA kernels, fp32/fp16/bf16, forward + backward against the reference)
  na      NAT-Tiny stage shapes at B=32 (56x56 k7, 28x28 k7 d2, 14x14 k7) and 128x128 k7 at B=4, fp16 and bf16:
          triton and torch (with / without RPB), compiled flex (with / without RPB), SDPA dense; fwd and
          fwd+bwd; peak memory; every implementation first checked against the reference
  bra     BiFormer-S routed stages at 224 / 512 / 1024 px, B=8, fp16: triton, torch, gather (reference),
          compiled flex with a routing block mask
  models  training step (fwd + bwd + AdamW, bf16 autocast, channels-last for conv-heavy models) img/s at batch
          64 and inference img/s at batch 256, peak memory: nat_tiny, dinat_tiny, biformer_s, agent_swin_t,
          slab_swin_t beside timm's swin_tiny_patch4_window7_224 and convnext_tiny, attention backend triton and
          torch, eager and torch.compile (most informative rows first; the rest when the budget allows)

Everything is written under --out-dir (gpu_check.sh: $OUT when set): gpu_check.log, env.json (GPU, CPU model and
ISA, versions, commit, sections), pytest_gpu.log, na.jsonl, bra.jsonl, models.jsonl (every row with the same
environment fields and its warm-up / timed-call counts; times as p50 / p90 / p99 / mean ms), summary.md (7
files, rendered by tools/bench/report.py). The summary is also printed as the last lines.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from ..report import gpu_check_summary

SECTIONS = ("tests", "na", "bra", "models")
# seconds per section out of the default total; time a section leaves unused passes to the next ones
SHARES = {"tests": 90, "na": 120, "bra": 65, "models": 105}
GRACE_S = 20  # after the soft deadline, before the hard kill
FATAL_EXIT = 3  # a section's exit code after a fatal CUDA error: restart it without the rows it has
MODELS = ("nat_tiny", "dinat_tiny", "biformer_s", "agent_swin_t", "slab_swin_t", "swin_tiny_patch4_window7_224",
          "convnext_tiny")
QUICK_MODELS = ("nat_mini", "convnext_atto")
REPO = Path(__file__).resolve().parents[3]


def parse_args(argv=None):
    # `--render` and the orchestrator itself import no torch
    from .. import cli

    p = cli.Parser(prog=cli.prog("gpu-check"), description=__doc__)
    p.add_argument("--out-dir", default=None, help="output folder (default $OUT, else out/gpu_check/<time>)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny shapes and models (a dry run of the wiring)")
    p.add_argument("--budget", type=cli.positive_int, default=sum(SHARES.values()),
                   help=f"seconds for all sections together (default {sum(SHARES.values())})")
    p.add_argument("--sections", type=cli.comma_list(SECTIONS), default=list(SECTIONS),
                   help=f"comma list of {','.join(SECTIONS)}")
    p.add_argument("--render", action="store_true", help="only rebuild summary.md from the rows in --out-dir")
    p.add_argument("--section", choices=SECTIONS, default=None, help=argparse.SUPPRESS)  # one section (internal)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = os.environ.get("OUT") or f"out/gpu_check/{datetime.now():%Y%m%d-%H%M%S}"
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        p.error(f"argument --out-dir: {out} exists and is not a directory")
    if args.render and not out.is_dir():
        p.error(f"argument --out-dir: {out} is not a directory (nothing to render)")
    return args


# ------------------------------------------------------------------------------------------------ sections


def _done(path: Path) -> set:
    from ..report import read_jsonl, row_id

    return {row_id(r) for r in read_jsonl(path) if "p50_ms" in r or "error" in r or "max_abs_diff" in r}


def _timing(quick: bool) -> dict:
    """Warm-up calls and timed calls of every measurement in the sections."""
    return {"warmup": 1, "reps": 1} if quick else {"warmup": 3, "reps": 10}


def _emitter(path: Path, device, quick: bool):
    """Append each row as measured, with the environment fields and the section's warm-up / timed-call counts;
    after an error, exit FATAL_EXIT if the CUDA context is gone."""
    from ..env import environment
    from ..report import append_jsonl

    meta = {**environment(device), "timer": "wall", **_timing(quick)}

    def emit(row):
        append_jsonl(path, {**meta, **row})
        if "error" in row and device.type == "cuda":
            _exit_if_cuda_broken(row["error"])

    return emit


def _exit_if_cuda_broken(msg: str) -> None:
    import torch

    try:
        torch.cuda.synchronize()
        torch.empty(1, device="cuda").add_(1).item()
    except Exception as err:  # noqa: BLE001 - a sticky CUDA error: only a new process recovers
        print(f"fatal CUDA error after {msg!r}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        os._exit(FATAL_EXIT)


def _passes(impls, dtypes):
    """(impls, dtype, modes) passes, most informative first, each compiled-flex row costing a compile of several
    seconds: the first dtype without flex, its flex without RPB (the targets' baseline), the other dtypes without
    flex, then flex with RPB, then the other dtypes' flex rows; flex rows time fwd+bwd first."""
    fast = [i for i in impls if not i.startswith("flex")]
    flex = [i for i in ("flex", "flex_rpb") if i in impls]
    both, bwd_first = ("fwd", "fwdbwd"), ("fwdbwd", "fwd")
    first, rest = dtypes[0], list(dtypes[1:])
    out = [(fast, first, both)]
    out += [([f], first, bwd_first) for f in flex[:1]]
    out += [(fast, d, both) for d in rest]
    out += [([f], first, bwd_first) for f in flex[1:]]
    out += [([f], d, bwd_first) for d in rest for f in flex]
    return out


def section_na(args, out: Path, deadline) -> None:
    import torch

    from .. import na

    na.allow_recompiles()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    path = out / "na.jsonl"
    done, emit = _done(path), _emitter(path, device, args.quick)
    if args.quick:
        cases, dtypes = na.QUICK_CASES[:1], ([torch.float16] if cuda else [torch.float32])
        impls = na.CUDA_IMPLS if cuda else ("torch", "torch_norpb", "gather", "sdpa_dense")
    else:
        cases, dtypes, impls = na.NAT_TINY_CASES, (torch.float16, torch.bfloat16), na.CUDA_IMPLS
    for i, dtype in enumerate(dtypes):
        dt = str(dtype).replace("torch.", "")
        if not any(r.endswith("|verify") and f"|{dt}|" in r for r in done):
            # compiled flex checked once (first dtype, one dilated 2-D case): each check is a compile
            checked = [b for b in impls if b != "sdpa_dense" and (i == 0 or not b.startswith("flex"))]
            for row in na.verify(checked, na.VERIFY_CASES[1:2], device, dtype):
                row["mode"] = "verify"
                emit(row)
    for impls_, dtype, modes in _passes(impls, list(dtypes)):
        na.rows(cases, impls_, device=device, dtype=dtype, modes=modes, iters=_timing(args.quick)["reps"],
                warmup=_timing(args.quick)["warmup"], max_s=2.0, deadline=deadline, emit=emit, done=done)


def section_bra(args, out: Path, deadline) -> None:
    import torch

    from .. import bra

    device = torch.device(args.device)
    path = out / "bra.jsonl"
    done, emit = _done(path), _emitter(path, device, args.quick)
    cuda = device.type == "cuda"
    impls = bra.CUDA_IMPLS if cuda else bra.CPU_IMPLS
    dtype = torch.float16 if cuda else torch.float32
    if not any(r.endswith("|verify") for r in done):
        for row in bra.verify(impls, (56,), device, dtype):
            row["mode"] = "verify"
            emit(row)
    sizes, batch = ((56,), 1) if args.quick else ((512, 1024, 224), 8)  # the 512 px target rows first
    kw = dict(device=device, dtype=dtype, batch=batch, stages=(0, 1) if args.quick else (0, 1, 2),
              warmup=_timing(args.quick)["warmup"], iters=_timing(args.quick)["reps"], max_s=2.0, deadline=deadline,
              emit=emit, done=done)
    for impls_, _, modes in _passes(impls, [dtype]):
        for size in sizes:
            bra.rows((size,), impls_, modes=modes, **kw)


KERNEL_FAMILIES = ("nat", "dinat", "biformer")  # models whose attention runs on our NA / BRA kernels


def model_plan(quick: bool, device: str) -> list[dict]:
    """(model, backend, compile, mode) rows, most informative first."""
    from ..models import family

    names = QUICK_MODELS if quick else MODELS
    ours = [n for n in names if family(n) in KERNEL_FAMILIES]
    default = "triton" if device == "cuda" else "torch"
    first = {n: default if n in ours else "-" for n in names}
    second = ours if device == "cuda" else []
    plan = []
    if quick:
        for n in names:
            plan += [dict(model=n, backend=first[n], compile=False, mode="train"),
                     dict(model=n, backend=first[n], compile=False, mode="infer")]
        return plan
    plan += [dict(model=n, backend=first[n], compile=False, mode="train") for n in names]
    plan += [dict(model=n, backend="torch", compile=False, mode="train") for n in second]
    plan += [dict(model=n, backend=first[n], compile=False, mode="infer") for n in names]
    plan += [dict(model=n, backend=first[n], compile=True, mode="train") for n in names]
    plan += [dict(model=n, backend="torch", compile=False, mode="infer") for n in second]
    plan += [dict(model=n, backend="torch", compile=True, mode="train") for n in second]
    plan += [dict(model=n, backend=first[n], compile=True, mode="infer") for n in names]
    plan += [dict(model=n, backend="torch", compile=True, mode="infer") for n in second]
    if device == "cuda":
        plan += [dict(model=n, backend=p, compile=False, mode="onnx") for p in ONNX_PROVIDERS for n in ONNX_MODELS]
    return plan


ONNX_MODELS = ("nat_tiny", "agent_swin_t")
ONNX_PROVIDERS = ("cuda", "tensorrt")
COMPILE_RESERVE_S = 75  # a training-step compile of one model takes about this long: do not start it with less left


def section_models(args, out: Path, deadline) -> None:
    import torch

    from .. import models
    from ..report import row_id

    device = torch.device(args.device)
    path = out / "models.jsonl"
    done, emit = _done(path), _emitter(path, device, args.quick)
    for item in model_plan(args.quick, device.type):
        kw = dict(device=device, backend=item["backend"], compile=item["compile"])
        if args.quick:
            kw.update(batch=2, img_size=96, amp=None, warmup=1, iters=_timing(True)["reps"])
        else:
            kw.update(batch=64 if item["mode"] == "train" else 256, img_size=224, amp="bfloat16",
                      warmup=_timing(False)["warmup"], iters=_timing(False)["reps"])
        fn = {"train": models.train_row, "infer": models.infer_row}.get(item["mode"])
        if item["mode"] == "onnx":
            kw = dict(provider=item["backend"], batch=256, img_size=224, warmup=_timing(False)["warmup"],
                      iters=_timing(False)["reps"])
            fn = models.onnx_row
        probe = dict(op="model", model=item["model"], backend=item["backend"], compile=item["compile"],
                     mode=item["mode"])
        if row_id(probe) in done:
            continue
        if item["compile"] and deadline.left() < COMPILE_RESERVE_S:
            row = dict(probe, family=models.family(item["model"]), note="skipped: too little time left to compile")
        else:
            row = fn(item["model"], deadline=deadline, **kw)
        emit(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _inject_fault(section: str) -> None:
    """Testing aid: GPU_CHECK_FAULT=<section>:crash|hang|fatal makes that section fail so (fatal: only before its
    first restart), to show that the other sections and the summary survive."""
    spec = os.environ.get("GPU_CHECK_FAULT", "")
    name, _, kind = spec.partition(":")
    if name != section:
        return
    if kind == "crash":
        raise RuntimeError("injected crash (GPU_CHECK_FAULT)")
    if kind == "hang":
        time.sleep(10**6)
    if kind == "fatal" and os.environ.get("GPU_CHECK_RESTART", "0") == "0":
        print("injected fatal error (GPU_CHECK_FAULT)", file=sys.stderr, flush=True)
        os._exit(FATAL_EXIT)


def run_section(args) -> int:
    from ..timing import Deadline, TimeUp

    out = Path(args.out_dir)
    deadline = Deadline(args.deadline)
    _inject_fault(args.section)
    try:
        {"na": section_na, "bra": section_bra, "models": section_models}[args.section](args, out, deadline)
    except TimeUp as err:
        print(f"{args.section}: {err}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ orchestrator


def _log(out: Path, text: str) -> None:
    line = f"[{datetime.now():%H:%M:%S}] {text}"
    print(line, flush=True)
    with open(out / "gpu_check.log", "a") as f:
        f.write(line + "\n")


def _run(cmd, out: Path, log_name: str, limit: float, env=None) -> tuple[int | None, float]:
    """Run `cmd` with its output appended to out/log_name; kill its process group after `limit` s. (rc, seconds)"""
    t0 = time.monotonic()
    with open(out / log_name, "a") as log:
        log.write(f"\n$ {' '.join(map(str, cmd))}\n")
        log.flush()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, limit))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    return rc, time.monotonic() - t0


def env_info(device: str) -> dict:
    """env.json: the environment fields every row carries, plus the GPU's memory and where visionattn comes from."""
    try:
        from ..env import environment

        info = environment(device if device != "cuda" else "cuda:0")
        import torch

        if device == "cuda" and torch.cuda.is_available():
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as err:  # noqa: BLE001 - a broken torch / CUDA install is what the log must say
        info = {"torch": f"unavailable: {type(err).__name__}: {err}"}
    info["device"] = device
    try:
        import visionattn

        info["visionattn"] = f"{visionattn.__version__} ({Path(visionattn.__file__).parent})"
    except Exception as err:  # noqa: BLE001
        info["visionattn"] = f"not importable: {type(err).__name__}: {err}"
    return info


def orchestrate(args) -> int:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    info = env_info(args.device)
    (out / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    _log(out, "gpu_check: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if args.device == "cuda" and "gpu" not in info:
        _log(out, "error: no CUDA device (use --device cpu for a dry run)")
        return 2
    status = {}
    chosen = [s for s in SECTIONS if s in args.sections]
    total = float(args.budget)
    scale = total / sum(SHARES.values())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cuda":
        env.pop("TRITON_INTERPRET", None)  # compiled kernels, never the interpreter
    for i, name in enumerate(chosen):
        left = total - (time.monotonic() - t_start)
        later = sum(SHARES[s] * scale for s in chosen[i + 1:])
        budget = max(10.0, left - later) if i + 1 < len(chosen) else max(10.0, left)
        _log(out, f"section {name}: budget {budget:.0f} s")
        if name == "tests":
            cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:randomly", "-p", "no:cacheprovider",
                   "-o", "addopts=", "-rfE", "--tb=short"]
            if args.device == "cuda" and _has_xdist():
                cmd += ["-n", "4"]
            rc, took = _run(cmd, out, "pytest_gpu.log", budget, env)
            status[name] = dict(rc=rc, seconds=round(took, 1))
        else:
            rc, took, restarts = None, 0.0, 0
            while True:
                soft = budget - took - GRACE_S
                cmd = [sys.executable, "-m", "tools.bench", "gpu-check", "--section", name, "--out-dir", out,
                       "--device", args.device, "--deadline", f"{max(5.0, soft):.0f}"] + (["--quick"] if args.quick
                                                                                         else [])
                rc, t = _run(cmd, out, "gpu_check.log", budget - took, dict(env, GPU_CHECK_RESTART=str(restarts)))
                took += t
                if rc != FATAL_EXIT or restarts >= 3 or budget - took < 30:
                    break
                restarts += 1
                _log(out, f"section {name}: fatal CUDA error, restart {restarts} without the rows it has")
            status[name] = dict(rc=rc, seconds=round(took, 1), restarts=restarts)
        _log(out, f"section {name}: {'killed at its time limit' if rc is None else f'exit {rc}'} after "
                  f"{status[name]['seconds']} s")
    info["sections"] = status
    info["total_s"] = round(time.monotonic() - t_start, 1)
    (out / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    text = gpu_check_summary(out)
    _log(out, f"done in {info['total_s']} s; summary in {out / 'summary.md'}")
    print(text, end="", flush=True)
    failed = [s for s, st in status.items() if st["rc"] not in (0,)]
    return 1 if failed else 0


def _has_xdist() -> bool:
    try:
        import xdist  # noqa: F401

        return True
    except ImportError:
        return False


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(gpu_check_summary(Path(args.out_dir)), end="")
        return 0
    if args.section:
        return run_section(args)
    return orchestrate(args)
