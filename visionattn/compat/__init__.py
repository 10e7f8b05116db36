"""Compatibility layers for code written against other libraries.

``install_natten_legacy()`` makes ``import natten`` (and ``natten.functional``, ``natten.flops``,
``natten.context``, ...) resolve to ``visionattn.compat.natten_legacy``, NATTEN 0.17.4's API on the visionattn
kernels, so unmodified NAT/DiNAT code written for NATTEN 0.14-0.17 runs on current PyTorch::

    import visionattn.compat
    visionattn.compat.install_natten_legacy()   # before anything imports natten
    from nat import nat_mini                    # the official file, unchanged
"""
from __future__ import annotations

import contextlib
import importlib
import sys
from types import ModuleType

__all__ = ["install_natten_legacy", "uninstall_natten_legacy", "natten_legacy_installed", "NATTEN_SUBMODULES"]

_PACKAGE = "visionattn.compat.natten_legacy"
# natten.<name> -> visionattn.compat.natten_legacy.<name>
NATTEN_SUBMODULES = ("context", "flops", "functional", "na1d", "na2d", "na3d", "natten1d", "natten2d", "natten3d")


def _ours(module) -> bool:
    name = getattr(module, "__name__", "")
    return name == _PACKAGE or name.startswith(_PACKAGE + ".")


def _describe(module) -> str:
    version = getattr(module, "__version__", None)
    where = getattr(module, "__file__", None) or "no file"
    return f"natten {version or '(unknown version)'} from {where}"


def install_natten_legacy() -> ModuleType:
    """Register the NATTEN 0.17.4 emulation as ``natten`` in ``sys.modules``; returns the package.

    Idempotent. Raises RuntimeError when another ``natten`` (a real NATTEN build) is already imported: two
    ``natten`` modules in one process would silently mix. Call it before any import of natten; an installed
    but not yet imported NATTEN is simply shadowed.
    """
    foreign = {k: m for k, m in sys.modules.items()
               if (k == "natten" or k.startswith("natten.")) and m is not None and not _ours(m)}
    if foreign:
        top = foreign.get("natten") or next(iter(foreign.values()))
        raise RuntimeError(
            f"cannot install the NATTEN 0.17 emulation: {_describe(top)} is already imported "
            f"({len(foreign)} natten module(s) in sys.modules). Call visionattn.compat.install_natten_legacy() "
            "before anything imports natten, or run without NATTEN (pip uninstall natten).")
    package = importlib.import_module(_PACKAGE)
    sys.modules["natten"] = package
    for name in NATTEN_SUBMODULES:
        sys.modules[f"natten.{name}"] = importlib.import_module(f"{_PACKAGE}.{name}")
    return package


def uninstall_natten_legacy() -> None:
    """Remove the emulation's ``natten`` entries from ``sys.modules`` (nothing else); a no-op when absent.

    Modules that already imported it keep their references.
    """
    for key in ["natten", *(f"natten.{name}" for name in NATTEN_SUBMODULES)]:
        if key in sys.modules and _ours(sys.modules[key]):
            del sys.modules[key]


@contextlib.contextmanager
def natten_legacy_installed():
    """``with natten_legacy_installed() as natten:`` — installed inside the block, removed after it (unless it
    was installed before the block)."""
    was_installed = _ours(sys.modules.get("natten"))
    package = install_natten_legacy()
    try:
        yield package
    finally:
        if not was_installed:
            uninstall_natten_legacy()
