"""Neighborhood attention on NATTEN >= 0.20's own ops (``backend="natten"``), when NATTEN is installed (no RPB)."""
from __future__ import annotations

from torch import Tensor

from .checks import NAConfig

__all__ = ["forward", "unsupported"]


def unsupported(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg: NAConfig) -> str | None:
    """None when NATTEN runs these (validated) arguments, else the reason, naming the argument."""
    if rpb is not None:
        return "rpb is not supported by NATTEN >= 0.20 (no positional bias); use backend='torch' or 'triton'"
    if any(kk < 2 for kk in cfg.kernel_size):
        return f"kernel_size must be >= 2 for NATTEN, got {cfg.kernel_size}"
    try:
        import natten
    except ImportError:
        return "needs natten installed"
    if getattr(natten, "__visionattn_compat__", False):
        # visionattn.compat's NATTEN 0.17 emulation sits in sys.modules: it is these kernels, not NATTEN >= 0.20
        return "needs NATTEN >= 0.20, but 'natten' is visionattn.compat's 0.17 emulation"
    return None


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg: NAConfig, ak: Tensor | None = None,
            av: Tensor | None = None, need_lse: bool = False) -> tuple[Tensor, Tensor | None]:
    """(out, natural logsumexp or None) from ``natten.na{1,2,3}d``."""
    import natten

    fn = {1: natten.na1d, 2: natten.na2d, 3: natten.na3d}[q.dim() - 3]
    res = fn(q, k, v, kernel_size=cfg.kernel_size, stride=cfg.stride, dilation=cfg.dilation,
             is_causal=cfg.is_causal, scale=cfg.scale, additional_keys=ak, additional_values=av,
             return_lse=need_lse)
    return res if need_lse else (res, None)
