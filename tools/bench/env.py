"""What a figure was measured on: CPU model and ISA, the ISA the compiled NA kernel was built for, threads, GPU,
package versions and the commit. Every suite puts these fields into each row of its JSON and CSV.

Versions are read from the installed distributions' metadata (no import), for the packages in `PACKAGES` plus
those the runtime modes declare (`runtimes.RUNTIMES[...].packages`), so a new runtime brings its version along.
"""
from __future__ import annotations

import functools
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "timm", "triton", "natten")
# x86 / ARM feature flags that decide which vector code runs, widest first (the summary keeps those present)
_ISA_FLAGS = ("amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "fma", "sve2", "sve", "asimd", "neon")


def versions(packages) -> dict:
    """{package: version} of the installed ones among `packages` (distribution names)."""
    out = {}
    for name in dict.fromkeys(packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict:
    """First-processor fields of /proc/cpuinfo (empty where there is none)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    name = info.get("model name") or info.get("Model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:  # e.g. AMD EPYC, family 25 model 1: Zen 3
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name or "unknown"


def cpu_isa() -> str:
    """The vector ISA features present, widest first (`avx2 fma`, `avx512f avx2 fma`, `asimd`, ...)."""
    flags = set((_cpuinfo().get("flags") or _cpuinfo().get("Features") or "").split())
    have = [f for f in _ISA_FLAGS if f in flags]
    if not have and platform.machine() in ("arm64", "aarch64"):
        have = ["neon"]  # every AArch64 CPU has it (macOS has no /proc/cpuinfo)
    return " ".join(have) or "-"


def na_cpu_build() -> dict:
    """The ISA the compiled NA CPU kernel is built for: its `build_info()` where it has one, else what its compiler
    flags imply (`-march=native`: this CPU's ISA). Never builds the kernel."""
    try:
        from visionattn.kernels import _na_cpu
    except Exception as err:  # noqa: BLE001
        return {"na_cpu_isa": f"unavailable ({type(err).__name__})"}
    if hasattr(_na_cpu, "build_info"):
        try:
            info = _na_cpu.build_info()
        except Exception as err:  # noqa: BLE001
            return {"na_cpu_isa": f"build_info failed ({type(err).__name__}: {err})"}
        if isinstance(info, dict):
            isa = info.get("isa") or info.get("march") or info.get("target") or "?"
            return {"na_cpu_isa": str(isa), "na_cpu_build": json.dumps(info, sort_keys=True, default=str)}
        return {"na_cpu_isa": str(info)}
    flags = [f for f in getattr(_na_cpu, "_CFLAGS", ()) if f.startswith("-march=")]
    march = flags[-1] if flags else "-march=?"
    isa = cpu_isa() if march == "-march=native" else march.removeprefix("-march=")
    return {"na_cpu_isa": isa, "na_cpu_build": march}


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                             timeout=10)
        return out.stdout.strip() or "-"
    except Exception:  # noqa: BLE001
        return "-"


def environment(device="cpu", packages=()) -> dict:
    """The fields every row carries: date, commit, CPU model / ISA, NA kernel ISA, threads, GPU, versions."""
    import torch

    dev = torch.device(device)
    env = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "visionattn_commit": git_commit(),
           "python": platform.python_version(), "cpu_model": cpu_model(), "cpu_isa": cpu_isa(),
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    env.update(na_cpu_build())
    env["threads"] = torch.get_num_threads()
    if dev.type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(dev)
        env["cuda"] = torch.version.cuda
    env.update(versions((*PACKAGES, *packages)))
    return env
