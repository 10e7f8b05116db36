"""The settings visionattn takes from environment variables, read once at import (as NATTEN's ``_environment``).

    VISIONATTN_CACHE=DIR           cache_dir         where the NA CPU kernel is built (default ~/.cache/visionattn)
    VISIONATTN_NA_CPU=0            na_cpu            never build or run the compiled NA CPU kernel
    VISIONATTN_NA_CPU_MARCH=M      na_cpu_march      the -march the NA CPU kernel is built for (default None: chosen
                                                     per machine, x86-64-v4 / v3 / v2 or armv8-a; "": the compiler's)
    VISIONATTN_NA_CPU_CALIBRATE=0  na_cpu_calibrate  backend="auto" on CPU runs the NA CPU kernel wherever it can,
                                                     without timing it against the torch path once per shape class
    CXX=PATH                       cxx               the C++ compiler that builds the NA CPU kernel (default c++)
    VISIONATTN_NA_AUTO_TRITON=1    na_auto_triton    backend="auto" runs NA on CUDA with the fused Triton kernel
    TRITON_INTERPRET=1             triton_interpret  Triton kernels run in Triton's CPU interpreter (Triton reads it)
    VISIONATTN_ONEDNN_LINEAR=0|1   onednn_linear     FusedLinear / FusedMlp take oneDNN's fused matmul in fp32 CPU
                                                     inference (default None: only on AVX-512 CPUs, where it is the
                                                     faster matmul; on AVX2 MKL's F.linear is)

Two more settings have no variable: ``na_triton_tiles_2d`` (2-D tile shapes of the fused NA kernel, for benchmarks)
and ``na_triton_device_tiles`` (the GPU's tile shapes in the interpreter, for tests). Change a setting with
``override(...)`` (a context manager) or ``update(...)``, never through ``os.environ`` after import.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = ["Settings", "from_environ", "override", "settings", "update"]


@dataclasses.dataclass(frozen=True)
class Settings:
    cache_dir: Path
    na_cpu: bool = True
    na_cpu_march: str | None = None
    na_cpu_calibrate: bool = True
    cxx: str = "c++"
    na_auto_triton: bool = False
    triton_interpret: bool = False
    na_triton_tiles_2d: tuple | None = None  # ((1, tx, ty), (1, bx, by)): owned tile, iterated block
    na_triton_device_tiles: bool = False
    onednn_linear: bool | None = None


def from_environ(env: Mapping[str, str]) -> Settings:
    """The settings an environment (``os.environ``, or any mapping) asks for."""
    return Settings(
        cache_dir=Path(env.get("VISIONATTN_CACHE") or Path.home() / ".cache" / "visionattn"),
        na_cpu=env.get("VISIONATTN_NA_CPU", "1") != "0",
        na_cpu_march=None if env.get("VISIONATTN_NA_CPU_MARCH") is None else env["VISIONATTN_NA_CPU_MARCH"].strip(),
        na_cpu_calibrate=env.get("VISIONATTN_NA_CPU_CALIBRATE", "1") != "0",
        cxx=env.get("CXX") or "c++",
        na_auto_triton=env.get("VISIONATTN_NA_AUTO_TRITON", "0") == "1",
        triton_interpret=env.get("TRITON_INTERPRET", "0") not in ("", "0"),
        onednn_linear=_tristate(env, "VISIONATTN_ONEDNN_LINEAR"),
    )


def _tristate(env: Mapping[str, str], name: str) -> bool | None:
    value = env.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{name} must be 0 or 1 (or unset for the default), got {value!r}")
    return None if not value else value == "1"


_current = from_environ(os.environ)


def settings() -> Settings:
    """The settings in force."""
    return _current


def update(**changes) -> Settings:
    """Change settings by name (ValueError for an unknown name); returns the previous settings."""
    global _current
    names = [f.name for f in dataclasses.fields(Settings)]
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; the settings are {names}")
    previous, _current = _current, dataclasses.replace(_current, **changes)
    return previous


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """``update(**changes)`` for the duration of a ``with`` block, then the previous settings again."""
    global _current
    previous = update(**changes)
    try:
        yield _current
    finally:
        _current = previous
