"""The benchmarks: one front door (`python -m tools.bench <suite>`, `__main__.py`) over a registry of suites
(`suites/`), one timer (`timing`), one latency protocol with presets (`protocol`), the runtime modes a model is
timed in (`runtimes`), what a figure was measured on (`env`), every report rendered in one place (`report`), the
kernel cases and baselines (`na`, `bra`, `gemm`), model-level measurements (`models`, `gmacs`), the official-code
worker (`official`) and argument helpers (`cli`: one-line errors, exit code 2).

Not part of the installed package. Importing this package imports no torch (the GPU check's orchestrator and
`--render` run without it).
"""
