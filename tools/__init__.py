"""The project's scripts; `tools.bench` is the benchmark front door (`python -m tools.bench <suite>`)."""
