"""The latency protocol of the model benchmarks, with presets that match the papers' own scripts.

A protocol fixes the warm-up, the timed runs, the batches, the threads and the autocast dtype; every timed
measurement reports p50 / p90 / p99 / mean of its calls (tools/bench/timing.py), throughput is
batch / mean time. Presets:

- `default`: 3 warm-up calls, 10 timed; latency at batch 1, throughput at batch 8.
- `timm`: timm's benchmark.py defaults: 10 warm-up steps, 40 timed steps, batch 256, the model's test input size
  where it has one; its `samples_per_sec` is our throughput, its `step_time` our mean ms at batch 256.
- `shvit`: SHViT's speed_test.py: warm-up for 10 s, timed calls until they sum to 60 s; CPU: 1 thread, batch 16
  (its CPU figure is per-image latency, 1000 / img/s); GPU: batch 256 under float16 autocast (the `amp` mode).
  SHViT's script runs the `torch.jit.trace`d model with BatchNorm folded; ours runs the runtime modes chosen
  (re-parameterisable models fused, as by default).

Explicit arguments (`--warmup`, `--reps`, `--batch`, ...) override the preset's values.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    name: str
    warmup: int = 3  # untimed calls first ...
    warmup_s: float = 0.0  # ... continued until this many seconds passed
    reps: int = 10  # timed calls ...
    min_time_s: float = 0.0  # ... continued until they sum to this many seconds
    latency_batch: int | None = 1  # batch of the latency measurement (None: the throughput batch)
    batch: int = 8  # throughput batch on CPU
    gpu_batch: int | None = None  # throughput batch on GPU (None: `batch`)
    threads: int | None = None  # CPU threads (None: torch's default)
    amp_dtype: str = "bfloat16"  # autocast dtype of the `amp` mode
    test_size: bool = False  # the model's test input size where its cfg has one (timm's default)
    timer: str = "wall"  # wall, or cpu: process CPU time (steadier on a shared machine; with one thread)

    def throughput_batch(self, device: str) -> int:
        return self.gpu_batch if device == "cuda" and self.gpu_batch else self.batch

    def timing(self) -> dict:
        """Keyword arguments of `timing.latency`."""
        return dict(warmup=self.warmup, warmup_s=self.warmup_s, reps=self.reps, min_time_s=self.min_time_s,
                    timer=self.timer)

    def fields(self, device: str) -> dict:
        """What every row records about the protocol."""
        batch = self.throughput_batch(device)
        return {"protocol": self.name, "warmup": self.warmup, "warmup_s": self.warmup_s, "reps": self.reps,
                "min_time_s": self.min_time_s, "timer": self.timer, "latency_batch": self.latency_batch or batch,
                "batch": batch}


PRESETS = {
    "default": Protocol("default"),
    "timm": Protocol("timm", warmup=10, reps=40, latency_batch=None, batch=256, test_size=True),
    "shvit": Protocol("shvit", warmup=1, warmup_s=10.0, reps=1, min_time_s=60.0, latency_batch=None, batch=16,
                      gpu_batch=256, threads=1, amp_dtype="float16"),
}
OVERRIDES = ("warmup", "warmup_s", "reps", "min_time_s", "latency_batch", "batch", "threads", "amp_dtype", "timer")


def resolve(name: str, device: str = "cpu", **overrides) -> Protocol:
    """The preset `name` with the given (non-None) fields replaced. An explicit `batch` sets the GPU batch too."""
    if name not in PRESETS:
        raise ValueError(f"protocol must be one of {sorted(PRESETS)}, got {name!r}")
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown protocol fields {sorted(unknown)}; allowed: {OVERRIDES}")
    if "batch" in given:
        given["gpu_batch"] = None
    proto = dataclasses.replace(PRESETS[name], **given)
    if device != "cpu":
        proto = dataclasses.replace(proto, threads=overrides.get("threads"))  # CPU threads only where asked
    return proto
