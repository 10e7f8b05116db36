"""Test harness: Triton interpreter on CPU-only machines, markers, parity-fixture discovery."""
import importlib.util
import os

import torch

# Must be set before triton is imported anywhere: without a GPU the kernels run in Triton's interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Under pytest-xdist each worker gets one intra-op thread: the workers already fill the cores, and torch's
# thread pools oversubscribed across processes spin instead of working.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
from parity_utils import parity_dir  # noqa: E402


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    # find_spec, not import: importing the real natten would stop visionattn.compat.install_natten_legacy() in-process
    has_natten = importlib.util.find_spec("natten") is not None
    try:
        import mmdet  # noqa: F401
        import mmseg  # noqa: F401

        has_mm = True
    except Exception:
        has_mm = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "natten" in item.keywords and not has_natten:
            item.add_marker(pytest.mark.skip(reason="natten is not installed"))
        if "mm" in item.keywords and not has_mm:
            item.add_marker(pytest.mark.skip(reason="mm extra (mmdet/mmseg) is not installed"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def parity_root():
    root = parity_dir()
    if root is None:
        pytest.skip("parity fixtures not found (set VISIONATTN_PARITY_DIR)")
    return root
