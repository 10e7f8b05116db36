"""The benchmark runner shared by tools/benchmark.py, tools/bench_kernels.py and tools/gpu_check.py.

Not part of the installed package: the tools put this folder's parent (tools/) on the path by being run
as scripts (`python tools/<tool>.py`). `timing` holds the one timing / sync / peak-memory helper,
`na` / `bra` the kernel cases and their baselines, `models` the model-level measurements, `report` the
table writers, `cli` the argument helpers (one-line errors, exit code 2).
"""
