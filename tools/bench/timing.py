"""The one timer of every benchmark: warm-up, timed calls, percentiles, peak memory, time budgets.

`latency` runs `fn` after a warm-up (a number of calls and, optionally, a minimum time), then a fixed number of
timed calls (optionally continued until they sum to a minimum time), the device synchronised around each, and
returns p50 / p90 / p99 / mean in ms. Peak memory is what one call allocates above what existed before it: the
CUDA caching allocator's peak on GPU, torch's own allocations (profiler memory events) on CPU.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import torch

STAT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "iters")


class TimeUp(RuntimeError):
    """A section's time budget ran out; what was measured so far stands."""


class Deadline:
    """Wall-clock budget of one benchmark section (`None` seconds: unlimited)."""

    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float:
        return float("inf") if self.end is None else self.end - time.monotonic()

    def check(self, what: str = "") -> None:
        if self.left() <= 0:
            raise TimeUp(f"time budget used up{' before ' + what if what else ''}")


def sync(device) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(timer: str = "wall", device="cpu"):
    """`time.perf_counter`, or process CPU time (`timer="cpu"`, CPU only: steadier on a shared machine, meaningful
    with one thread)."""
    if timer not in ("wall", "cpu"):
        raise ValueError(f"timer must be 'wall' or 'cpu', got {timer!r}")
    return time.process_time if timer == "cpu" and torch.device(device).type == "cpu" else time.perf_counter


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(seconds, prefix: str = "") -> dict:
    """`{prefix}p50_ms`, p90, p99, mean (ms) and `{prefix}iters` of per-call times in seconds."""
    ms = [1e3 * t for t in seconds]
    return {f"{prefix}p50_ms": percentile(ms, 50), f"{prefix}p90_ms": percentile(ms, 90),
            f"{prefix}p99_ms": percentile(ms, 99), f"{prefix}mean_ms": sum(ms) / len(ms), f"{prefix}iters": len(ms)}


def latency(fn, device="cpu", *, warmup: int = 2, reps: int = 5, warmup_s: float = 0.0, min_time_s: float = 0.0,
            timer: str = "wall", max_s: float | None = None, deadline: Deadline | None = None) -> dict:
    """Time `fn()`: `warmup` calls (continued until `warmup_s` seconds passed), then `reps` timed calls (continued
    until they sum to `min_time_s`), the device synchronised around each. Returns `summarize` of the timed calls.

    `max_s` and `deadline` bound the timed part: the count drops (to 1 at least) when one call is slow.
    """
    device = torch.device(device)
    tick = clock(timer, device)
    start = time.perf_counter()
    n = 0
    while n < warmup or time.perf_counter() - start < warmup_s:
        fn()
        n += 1
        sync(device)
    times = []
    start = time.perf_counter()
    while True:
        t0 = tick()
        fn()
        sync(device)
        times.append(tick() - t0)
        i = len(times)
        if i >= reps and sum(times) >= min_time_s:
            break
        spent = time.perf_counter() - start
        if max_s is not None and spent * (i + 1) / i > max_s:
            break
        if deadline is not None and deadline.left() < spent / i:
            break
    return summarize(times)



def interleaved(fns: dict, device="cpu", *, warmup: int = 2, reps: int = 5, timer: str = "wall") -> dict:
    """Time several callables side by side: `warmup` calls of each, then `reps` rounds of one timed call each, the
    order reversed every round (drifts of a shared machine reach every callable alike). Returns per name
    `summarize` of its timed calls plus `best_ms`."""
    device = torch.device(device)
    tick = clock(timer, device)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
            sync(device)
    times = {name: [] for name in names}
    for i in range(reps):
        for name in (names if i % 2 == 0 else names[::-1]):
            t0 = tick()
            fns[name]()
            sync(device)
            times[name].append(tick() - t0)
    return {name: {**summarize(ts), "best_ms": 1e3 * min(ts)} for name, ts in times.items()}

@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2 (kineto prints two lines per profiler start/stop from C++); fn() already ran
    once unprofiled, so nothing of its own is hidden."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_mb(fn, device) -> float:
    """Peak memory allocated during one `fn()` above what was allocated before it, in MiB."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events):
        cur += nbytes
        peak = max(peak, cur)
    return peak / 2**20


def measure(fn, device, *, memory: bool = True, **kw) -> dict:
    """`latency(fn, device, **kw)` and, with `memory`, `peak_mb` of one more call."""
    row = latency(fn, device, **kw)
    if memory:
        row["peak_mb"] = peak_mb(fn, device)
    return row


def first_call_s(fn, device) -> float:
    """Seconds of one call with the device synchronised (compiles, caches, first-touch allocations)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def error_text(err: BaseException, limit: int = 200) -> str:
    msg = str(err).strip().splitlines()
    return f"{type(err).__name__}: {msg[0][:limit] if msg else ''}"
