"""NATTEN 0.17.4's public API on the visionattn kernels, with relative positional bias, CPU backward and ONNX.

Install it as ``natten`` (``visionattn.compat.install_natten_legacy()``) and unmodified code written for
NATTEN 0.14-0.17 runs on current PyTorch: the official NAT/DiNAT files, ``natten.functional.natten2dqkrpb``
/ ``na2d_qk(..., rpb=)``, ``natten.flops.add_natten_handle``. Emulated version: 0.17.4, the last release that
has both the 0.17 API (``natten.context``, ``na*d_qk``/``na*d_av`` with ``rpb=``, ``rel_pos_bias=``, fused
``na*d``) and the deprecated 0.14/0.15 ops (``natten*dqkrpb``, ``natten*dav``); the modules also accept
0.14/0.15's ``bias=`` and keep 0.15's zero-padding of maps smaller than kernel_size * dilation (0.17 raised
there; the NAT/DiNAT checkpoints were trained with it). Submodules: ``functional``, ``flops``, ``context``,
``na1d``/``na2d``/``na3d`` and the old paths ``natten1d``/``natten2d``/``natten3d``.
"""
from . import context, flops, functional, na1d, na2d, na3d, natten1d, natten2d, natten3d  # noqa: F401
from ._modules import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D
from .context import (  # noqa: F401
    are_deterministic_algorithms_enabled,
    disable_autotuner,
    disable_gemm_na,
    disable_tf32,
    disable_tiled_na,
    enable_gemm_na,
    enable_tf32,
    enable_tiled_na,
    get_memory_usage_preference,
    has_bfloat,
    has_cuda,
    has_fna,
    has_fp32_gemm,
    has_fp64_gemm,
    has_fused_na,
    has_gemm,
    has_half,
    has_tf32_gemm,
    is_autotuner_enabled,
    is_autotuner_enabled_for_backward,
    is_autotuner_enabled_for_forward,
    is_autotuner_thorough_for_backward,
    is_autotuner_thorough_for_forward,
    is_fna_enabled,
    is_fused_na_enabled,
    is_gemm_na_enabled,
    is_kv_parallelism_in_fused_na_enabled,
    is_memory_usage_default,
    is_memory_usage_strict,
    is_memory_usage_unrestricted,
    is_tf32_in_gemm_na_enabled,
    is_tiled_na_enabled,
    set_memory_usage_preference,
    use_autotuner,
    use_deterministic_algorithms,
    use_fna,
    use_fused_na,
    use_gemm_na,
    use_kv_parallelism_in_fused_na,
    use_tf32_in_gemm_na,
    use_tiled_na,
)

__version__ = "0.17.4"
# what code can check to tell this emulation from a NATTEN build
__visionattn_compat__ = True

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D",
           *(n for n in context.__all__ if not n[0].isupper())]
