"""``natten.context`` of NATTEN 0.17.4: the switches downstream code calls, and capability queries.

Its presence is how the official NAT/DiNAT files detect NATTEN >= 0.17 (``hasattr(natten, "context")``, then
they pass ``rel_pos_bias=True``). The switches are recorded and reported back but change nothing: visionattn
chooses its kernel per call (fused Triton on CUDA when enabled there, the tiled torch path elsewhere), always
deterministic, and needs no auto-tuner, GEMM/tiled toggles or KV parallelism. The ``has_*`` queries describe
this machine as a NATTEN build would (CPU-only: all False).
"""
from __future__ import annotations

from enum import Enum

import torch

__all__ = [
    "MemoryUsagePreference", "NattenContext", "AutotunerContext",
    "are_deterministic_algorithms_enabled", "use_deterministic_algorithms",
    "use_kv_parallelism_in_fused_na", "is_kv_parallelism_in_fused_na_enabled",
    "use_fna", "is_fna_enabled", "use_fused_na", "is_fused_na_enabled",
    "use_autotuner", "disable_autotuner", "is_autotuner_enabled", "is_autotuner_enabled_for_forward",
    "is_autotuner_enabled_for_backward", "is_autotuner_thorough_for_forward", "is_autotuner_thorough_for_backward",
    "has_cuda", "has_half", "has_bfloat", "has_gemm", "has_fna", "has_fused_na", "has_tf32_gemm", "has_fp32_gemm",
    "has_fp64_gemm", "use_tf32_in_gemm_na", "use_tiled_na", "use_gemm_na", "is_tf32_in_gemm_na_enabled",
    "is_tiled_na_enabled", "is_gemm_na_enabled", "set_memory_usage_preference", "get_memory_usage_preference",
    "is_memory_usage_default", "is_memory_usage_strict", "is_memory_usage_unrestricted",
    "enable_tf32", "disable_tf32", "enable_gemm_na", "disable_gemm_na", "enable_tiled_na", "disable_tiled_na",
]


class MemoryUsagePreference(Enum):
    Default = 0
    Strict = 1
    Unrestricted = 2


class NattenContext:
    is_deterministic_mode_enabled: bool = False
    is_fused_na_enabled: bool = False
    is_kv_parallelism_enabled: bool = False
    training_memory_preference: MemoryUsagePreference = MemoryUsagePreference.Default
    # libnatten's global switches in 0.17 (GEMM-based NA, tiled NA, TF32 in GEMM NA); on by default there
    gemm_na: bool = True
    tiled_na: bool = True
    tf32_in_gemm_na: bool = True

    @staticmethod
    def reset():
        NattenContext.is_deterministic_mode_enabled = False
        NattenContext.is_fused_na_enabled = False
        NattenContext.is_kv_parallelism_enabled = False
        NattenContext.training_memory_preference = MemoryUsagePreference.Default
        NattenContext.gemm_na = NattenContext.tiled_na = NattenContext.tf32_in_gemm_na = True


class AutotunerContext:
    enabled_for_forward: bool = False
    enabled_for_backward: bool = False
    thorough_mode_forward: bool = False
    thorough_mode_backward: bool = False

    @staticmethod
    def reset():
        AutotunerContext.enabled_for_forward = AutotunerContext.enabled_for_backward = False
        AutotunerContext.thorough_mode_forward = AutotunerContext.thorough_mode_backward = False


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


_PREFERENCES = {"default": MemoryUsagePreference.Default, "strict": MemoryUsagePreference.Strict,
                "unrestricted": MemoryUsagePreference.Unrestricted}


def set_memory_usage_preference(pref: str = "default"):
    if pref not in _PREFERENCES:
        raise ValueError(f"pref must be one of {tuple(_PREFERENCES)}, got {pref!r}")
    NattenContext.training_memory_preference = _PREFERENCES[pref]


def get_memory_usage_preference() -> MemoryUsagePreference:
    return NattenContext.training_memory_preference


def is_memory_usage_default() -> bool:
    return get_memory_usage_preference() == MemoryUsagePreference.Default


def is_memory_usage_strict() -> bool:
    return get_memory_usage_preference() == MemoryUsagePreference.Strict


def is_memory_usage_unrestricted() -> bool:
    return get_memory_usage_preference() == MemoryUsagePreference.Unrestricted


def use_deterministic_algorithms(mode: bool = True):
    NattenContext.is_deterministic_mode_enabled = _check_bool("mode", mode)


def are_deterministic_algorithms_enabled() -> bool:
    return NattenContext.is_deterministic_mode_enabled


def use_kv_parallelism_in_fused_na(mode: bool = True):
    if _check_bool("mode", mode) and are_deterministic_algorithms_enabled():
        raise RuntimeError("NATTEN's deterministic mode is enabled; KV parallelism is non-deterministic in NATTEN")
    NattenContext.is_kv_parallelism_enabled = mode


def is_kv_parallelism_in_fused_na_enabled() -> bool:
    return NattenContext.is_kv_parallelism_enabled


def use_fused_na(mode: bool = True, kv_parallel: bool = True):
    if not _check_bool("mode", mode):
        NattenContext.is_fused_na_enabled = False
        use_kv_parallelism_in_fused_na(False)
        return
    use_kv_parallelism_in_fused_na(kv_parallel)
    NattenContext.is_fused_na_enabled = True


def is_fused_na_enabled() -> bool:
    return NattenContext.is_fused_na_enabled


use_fna = use_fused_na
is_fna_enabled = is_fused_na_enabled


def use_autotuner(forward_pass: bool | None = None, backward_pass: bool | None = None,
                  thorough_mode_forward: bool | None = None, thorough_mode_backward: bool | None = None,
                  warmup_steps_forward: int | None = None, warmup_steps_backward: int | None = None,
                  steps_forward: int | None = None, steps_backward: int | None = None):
    for name, value in (("forward_pass", forward_pass), ("backward_pass", backward_pass),
                        ("thorough_mode_forward", thorough_mode_forward),
                        ("thorough_mode_backward", thorough_mode_backward)):
        if value is not None:
            _check_bool(name, value)
    if forward_pass is not None:
        AutotunerContext.enabled_for_forward = forward_pass
    if backward_pass is not None:
        AutotunerContext.enabled_for_backward = backward_pass
    if thorough_mode_forward is not None:
        AutotunerContext.thorough_mode_forward = thorough_mode_forward
    if thorough_mode_backward is not None:
        AutotunerContext.thorough_mode_backward = thorough_mode_backward


def disable_autotuner():
    AutotunerContext.reset()


def is_autotuner_enabled() -> bool:
    return AutotunerContext.enabled_for_forward or AutotunerContext.enabled_for_backward


def is_autotuner_enabled_for_forward() -> bool:
    return AutotunerContext.enabled_for_forward


def is_autotuner_enabled_for_backward() -> bool:
    return AutotunerContext.enabled_for_backward


def is_autotuner_thorough_for_forward() -> bool:
    return AutotunerContext.thorough_mode_forward


def is_autotuner_thorough_for_backward() -> bool:
    return AutotunerContext.thorough_mode_backward


def _cc(device_index=None) -> int:
    major, minor = torch.cuda.get_device_capability(device_index)
    return major * 10 + minor


def has_cuda() -> bool:
    return torch.cuda.is_available()


def has_half(device_index=None) -> bool:
    return has_cuda() and _cc(device_index) >= 50


def has_bfloat(device_index=None) -> bool:
    return has_cuda() and _cc(device_index) >= 80


def has_gemm(device_index=None) -> bool:
    return has_cuda() and _cc(device_index) >= 70


def has_fna(device_index=None) -> bool:
    return has_cuda() and _cc(device_index) >= 50


has_fused_na = has_fna


def has_tf32_gemm(device_index=None) -> bool:
    return has_cuda() and _cc(device_index) >= 80


has_fp32_gemm = has_tf32_gemm


def has_fp64_gemm(device_index=None) -> bool:
    return has_cuda() and _cc(device_index) >= 80


def use_tf32_in_gemm_na(mode: bool = True):
    NattenContext.tf32_in_gemm_na = _check_bool("mode", mode)


def is_tf32_in_gemm_na_enabled() -> bool:
    return NattenContext.tf32_in_gemm_na


def use_tiled_na(mode: bool = True):
    NattenContext.tiled_na = _check_bool("mode", mode)


def is_tiled_na_enabled() -> bool:
    return NattenContext.tiled_na


def use_gemm_na(mode: bool = True):
    NattenContext.gemm_na = _check_bool("mode", mode)


def is_gemm_na_enabled() -> bool:
    return NattenContext.gemm_na


def enable_tf32() -> bool:
    use_tf32_in_gemm_na(True)
    return is_tf32_in_gemm_na_enabled()


def disable_tf32() -> bool:
    use_tf32_in_gemm_na(False)
    return is_tf32_in_gemm_na_enabled()


def enable_gemm_na() -> bool:
    use_gemm_na(True)
    return is_gemm_na_enabled()


def disable_gemm_na() -> bool:
    use_gemm_na(False)
    return is_gemm_na_enabled()


def enable_tiled_na() -> bool:
    use_tiled_na(True)
    return is_tiled_na_enabled()


def disable_tiled_na() -> bool:
    use_tiled_na(False)
    return is_tiled_na_enabled()
