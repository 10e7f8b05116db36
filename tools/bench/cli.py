"""Argument parsing for the tools: validation by argparse types, user errors as one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (`prog: error: ...`) and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def fail(message: str, code: int = 2) -> int:
    """Print one error line on stderr and return the exit code (tools: `return fail(...)`)."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {value}")
        return value

    parse.__name__ = f"int>={lo}"
    return parse


positive_int = int_at_least(1)
nonneg_int = int_at_least(0)


def nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def int_in(values, what: str = "value", why: str = ""):
    allowed = tuple(values)
    why = f" ({why})" if why else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"{what} must be one of {_span(allowed)}{why}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


def comma_list(choices):
    """`a,b,c` -> ['a', 'b', 'c'], every item one of `choices`, at least one item, duplicates dropped."""
    allowed = tuple(choices)

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if not items or bad:
            what = f"unknown {', '.join(map(repr, bad))}; " if bad else ""
            raise argparse.ArgumentTypeError(f"{what}expected a comma list of {','.join(allowed)}, got {text!r}")
        return list(dict.fromkeys(items))

    parse.__name__ = "comma list"
    return parse


def _span(values) -> str:
    vals = list(values)
    if len(vals) > 2 and vals == list(range(vals[0], vals[-1] + 1)):
        return f"{vals[0]}..{vals[-1]}"
    return ", ".join(map(str, vals))


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_arg(text: str):
    """A torch.device that exists here (`cpu`, `cuda`, `cuda:1`)."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device must be cpu or cuda[:N], got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def prog(suite: str) -> str:
    """The program name a suite's messages start with."""
    return f"python -m tools.bench {suite}"


def check_out_dir(parser: argparse.ArgumentParser, path, flag: str = "--out-dir") -> None:
    from pathlib import Path

    if Path(path).exists() and not Path(path).is_dir():
        parser.error(f"argument {flag}: {path} exists and is not a directory")


def add_timing_args(p: argparse.ArgumentParser, *, warmup: int, reps: int, reps_flag: str = "--reps") -> None:
    """`--warmup`, the timed-calls count and `--timer` of the kernel-level suites."""
    p.add_argument("--warmup", type=nonneg_int, default=warmup, help=f"untimed calls first (default {warmup})")
    p.add_argument(reps_flag, type=positive_int, default=reps, help=f"timed calls (default {reps}): p50 / p90 / p99")
    p.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (steadier on a shared machine; use with one thread)")


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """`--protocol` (a preset of tools/bench/protocol.py) and the fields an explicit argument overrides."""
    from .protocol import PRESETS

    p.add_argument("--protocol", choices=sorted(PRESETS), default="default",
                   help="latency protocol preset: default (3 warm-up, 10 timed, bs1 latency, bs8 throughput), timm "
                        "(timm's benchmark.py: 10 warm-up, 40 timed, batch 256), shvit (SHViT's speed_test.py: 10 s "
                        "warm-up, 60 s timed, CPU 1 thread batch 16, GPU batch 256 fp16 autocast)")
    p.add_argument("--warmup", type=nonneg_int, default=None, help="untimed calls first (default: the preset's)")
    p.add_argument("--warmup-s", type=nonneg_float, default=None, help="warm-up goes on for at least this many s")
    p.add_argument("--reps", type=positive_int, default=None, help="timed calls (default: the preset's)")
    p.add_argument("--min-time-s", type=nonneg_float, default=None,
                   help="timed calls go on until they sum to this many seconds")
    p.add_argument("--batch", type=positive_int, default=None, help="throughput batch (default: the preset's)")
    p.add_argument("--latency-batch", type=positive_int, default=None,
                   help="latency batch (default: the preset's; 1 in default)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: the preset's, else all)")
    p.add_argument("--timer", choices=["wall", "cpu"], default=None,
                   help="wall (default), or cpu: process CPU time (steadier on a shared machine; use with --threads 1)")


def resolve_protocol(args, device: str):
    from .protocol import resolve

    return resolve(args.protocol, device, warmup=args.warmup, warmup_s=args.warmup_s, reps=args.reps,
                   min_time_s=args.min_time_s, batch=args.batch, latency_batch=args.latency_batch,
                   threads=args.threads, timer=args.timer)
