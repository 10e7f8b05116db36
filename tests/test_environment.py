"""visionattn._environment: settings read once from the environment, changed through setters, no side effects."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from visionattn import _environment as env


def test_from_environ_reads_every_variable(tmp_path):
    s = env.from_environ({"VISIONATTN_CACHE": str(tmp_path), "VISIONATTN_NA_CPU": "0",
                          "VISIONATTN_NA_CPU_MARCH": " x86-64-v3 ", "VISIONATTN_NA_CPU_CALIBRATE": "0",
                          "CXX": "g++-12", "VISIONATTN_NA_AUTO_TRITON": "1", "TRITON_INTERPRET": "1"})
    assert (s.cache_dir, s.na_cpu, s.na_cpu_march, s.na_cpu_calibrate, s.cxx, s.na_auto_triton,
            s.triton_interpret) == (tmp_path, False, "x86-64-v3", False, "g++-12", True, True)
    d = env.from_environ({"TRITON_INTERPRET": "0"})
    assert (d.cache_dir, d.na_cpu, d.na_cpu_march, d.na_cpu_calibrate, d.cxx, d.na_auto_triton,
            d.triton_interpret) == (Path.home() / ".cache" / "visionattn", True, None, True, "c++", False, False)
    assert env.from_environ({"VISIONATTN_NA_CPU_MARCH": ""}).na_cpu_march == ""  # the compiler's default target
    assert env.from_environ({"CXX": ""}).cxx == "c++"
    assert env.from_environ({"TRITON_INTERPRET": ""}).triton_interpret is False


def test_onednn_linear_setting():
    assert [env.from_environ(e).onednn_linear for e in ({}, {"VISIONATTN_ONEDNN_LINEAR": "0"},
                                                         {"VISIONATTN_ONEDNN_LINEAR": "1"})] == [None, False, True]
    with pytest.raises(ValueError, match="VISIONATTN_ONEDNN_LINEAR must be 0 or 1"):
        env.from_environ({"VISIONATTN_ONEDNN_LINEAR": "yes"})


def test_override_restores_and_update_names_unknown_settings():
    before = env.settings()
    with env.override(na_auto_triton=not before.na_auto_triton, na_triton_tiles_2d=((1, 8, 8), (1, 4, 16))) as s:
        assert env.settings() is s and s.na_auto_triton is not before.na_auto_triton
        assert s.na_triton_tiles_2d == ((1, 8, 8), (1, 4, 16))
    assert env.settings() is before
    with pytest.raises(ValueError, match="na_cpu_threads"):
        env.update(na_cpu_threads=2)
    assert env.settings() is before


def test_read_once_at_import_and_no_side_effects():
    """Importing visionattn (and with it the kernels) leaves os.environ alone; a variable set after import does not
    change the settings (they are read once)."""
    code = (
        "import json, os\n"
        "os.environ['VISIONATTN_NA_AUTO_TRITON'] = '1'\n"
        "before = dict(os.environ)\n"
        "import visionattn\n"
        "from visionattn._environment import settings\n"
        "same = dict(os.environ) == before\n"
        "os.environ['VISIONATTN_NA_AUTO_TRITON'] = '0'\n"
        "print(json.dumps([same, settings().na_auto_triton]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True]
