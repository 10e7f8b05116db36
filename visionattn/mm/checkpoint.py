"""Reading mmcv 1.x / mmdet 2.x / mmseg 0.x checkpoints with torch's weights-only unpickler.

Their `meta` holds plain Python values (config text, env info, `CLASSES` tuples, `PALETTE` lists, epoch / iter,
`hook_msgs`) and, written by evaluation hooks and dataset code, numpy scalars and arrays (e.g. a `best_score`
numpy float). `mm_checkpoint_globals()` allows exactly what those need -- numpy's array / scalar reconstructors
and dtypes -- inside a `torch.serialization.safe_globals` scope; everything else stays refused (no arbitrary
unpickling). `tools/det_*.py` / `seg_*.py` run inside that scope, and `ZooBackboneMM` loads its files in it.
"""
from __future__ import annotations

import contextlib
import importlib

import numpy as np
import torch

__all__ = ["MM_CHECKPOINT_GLOBALS", "mm_checkpoint_globals"]


def _numpy_globals() -> list:
    out = [np.ndarray, np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        out += [m._reconstruct, m.scalar]
    # dtype classes numpy >= 1.25 pickles with its dtypes (bool, ints, floats, str)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType",
                     "UInt16DType", "UInt32DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType",
                     "StrDType", "BytesDType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


MM_CHECKPOINT_GLOBALS = _numpy_globals()


@contextlib.contextmanager
def mm_checkpoint_globals():
    """Allow the numpy reconstructors mmcv 1.x checkpoints pickle, for `torch.load(weights_only=True)`."""
    with torch.serialization.safe_globals(MM_CHECKPOINT_GLOBALS):
        yield
