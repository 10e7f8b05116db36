"""The suites of `python -m tools.bench`, registered by name: each is a module with a docstring (its help) and
`main(argv) -> exit code`. A new suite is one module here and one line in `SUITES`."""
from __future__ import annotations

import importlib

# name -> (module in this package, one-line summary)
SUITES = {
    "models": ("models", "zoo models: params, GMACs, latency p50/p90/p99 and throughput per runtime mode "
                         "(eager, compile, onnx, amp) under a protocol (default, timm, shvit)"),
    "kernels": ("kernels", "NA and BRA kernels per implementation vs natten, compiled FlexAttention, SDPA dense, "
                           "the gather formulation; --verify checks each against the reference"),
    "na-cpu": ("na_cpu", "NA on CPU against the machine's GEMM rate and timm's Swin-T GMAC/s, at 1 and 2 threads"),
    "official": ("official", "ours vs the official code (fetched by tools/fetch_official.py): same weights, one "
                             "process, alternating calls"),
    "gpu-check": ("gpu_check", "the prepared GPU check: pytest -m gpu, NA / BRA kernels, model table, one summary "
                               "(tools/gpu_check.sh, make gpu-check)"),
}


def load(name: str):
    """The module of suite `name`."""
    return importlib.import_module(f".{SUITES[name][0]}", __name__)
