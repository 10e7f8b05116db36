"""The one timing, synchronisation, peak-memory and time-budget helper of every benchmark.

Times are medians of wall-clock (or process CPU) time per call after warm-up, with the device synchronised
around each call. Peak memory is what one call allocates above what existed before it: the CUDA caching
allocator's peak on GPU, torch's own allocations (profiler memory events) on CPU, so inputs are excluded
in both and the two columns mean the same thing.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import torch


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


def time_ms(fn, device, *, warmup: int = 2, iters: int = 5, timer: str = "wall", max_s: float | None = None,
            deadline: Deadline | None = None) -> tuple[float, int]:
    """(median ms of `fn()`, number of timed calls) after `warmup` calls, the device synchronised around each.

    `max_s` bounds the timed part: the count drops (to 1 at least) when one call is slow. `timer="cpu"`
    uses process CPU time (steadier on a shared CPU; meaningful with one thread only).
    """
    device = torch.device(device)
    clock = time.process_time if timer == "cpu" and device.type == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start = time.perf_counter()
    for i in range(max(1, iters)):
        t0 = clock()
        fn()
        sync(device)
        times.append(clock() - t0)
        spent = time.perf_counter() - start
        if i + 1 < iters:
            if max_s is not None and spent * (i + 2) / (i + 1) > max_s:
                break
            if deadline is not None and deadline.left() < spent / (i + 1):
                break
    return 1e3 * statistics.median(times), len(times)


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


def measure(fn, device, *, warmup: int = 2, iters: int = 5, timer: str = "wall", memory: bool = True,
            max_s: float | None = None, deadline: Deadline | None = None) -> dict:
    """`time_ms`, `iters` (timed calls) and, with `memory`, `peak_mb` of one more call."""
    t, n = time_ms(fn, device, warmup=warmup, iters=iters, timer=timer, max_s=max_s, deadline=deadline)
    row = {"time_ms": t, "iters": n}
    if memory:
        row["peak_mb"] = peak_mb(fn, device)
    return row


def error_text(err: BaseException, limit: int = 200) -> str:
    msg = str(err).strip().splitlines()
    return f"{type(err).__name__}: {msg[0][:limit] if msg else ''}"
