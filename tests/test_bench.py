"""The benchmark runner (tools/bench/, tools/bench_kernels.py, tools/gpu_check.py): baselines verified against
the reference, rows measured and written, arguments validated. Driven through the command lines, as users do."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name, *args, timeout=900, env=None):
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env=env)


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _assert_user_error(out, *words):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stderr[-2000:])
    for word in words:
        assert word in lines[0], lines[0]


def test_na_baselines_match_reference(tmp_path):
    """The FlexAttention rows (NA block mask, clamped RPB score_mod), gather and natten compute NA exactly:
    1-D, dilated 2-D and a window close to the map size, with and without RPB."""
    out = _tool("bench_kernels.py", "--op", "na", "--verify-only", "--device", "cpu", "--jsonl", tmp_path / "v.jsonl",
                "--na-backends", "flex", "flex_rpb", "gather", "torch", "torch_norpb")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = _rows(tmp_path / "v.jsonl")
    assert {r["backend"] for r in rows} == {"flex", "flex_rpb", "gather", "torch", "torch_norpb"}
    assert {r["case"] for r in rows} == {"verify_19_k5_d3", "verify_9x11_k3_d2", "verify_7x6_k5"}
    for r in rows:
        assert "error" not in r and r["max_abs_diff"] <= 1e-5, r


def test_bra_baselines_match_reference(tmp_path):
    out = _tool("bench_kernels.py", "--op", "bra", "--verify-only", "--device", "cpu", "--jsonl", tmp_path / "v.jsonl")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = _rows(tmp_path / "v.jsonl")
    assert {r["backend"] for r in rows} == {"reference", "torch"} and len(rows) == 6
    assert all(r["max_abs_diff"] <= 1e-5 for r in rows), rows


def test_kernel_rows_are_measured(tmp_path):
    """Every (case, implementation, mode) gives a time, a peak and the same-run ratios; CSV and JSON lines."""
    out = _tool("bench_kernels.py", "--op", "all", "--device", "cpu", "--cases", "quick_12x14_k5", "--sizes", "56",
                "--stages", "0", "--iters", "1", "--warmup", "0", "--na-backends", "torch", "torch_norpb", "gather",
                "--jsonl", tmp_path / "rows.jsonl", "--csv", tmp_path / "rows.csv")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path / "rows.jsonl")
    na = [r for r in rows if r["op"] == "na"]
    bra = [r for r in rows if r["op"] == "bra"]
    assert len(na) == 6 and len(bra) == 4
    assert all(r["time_ms"] > 0 and r["peak_mb"] >= 0 for r in rows), rows
    with open(tmp_path / "rows.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 10
    torch_fwd = next(r for r in table if r["backend"] == "torch" and r["mode"] == "fwd")
    assert float(torch_fwd["speedup_vs_gather"]) > 0 and float(torch_fwd["rpb_cost"]) > 0, torch_fwd
    assert all(float(r["speedup_vs_gather"]) > 0 for r in table if r["op"] == "bra" and r["backend"] == "torch")
    assert "time_ms" in out.stdout.splitlines()[1]


@pytest.mark.parametrize("args,words", [
    (["--cases", "nope"], ["--cases"]),
    (["--batch", "0"], ["--batch"]),
    (["--device", "tpu9"], ["--device"]),
    (["--na-backends", "cuda_magic"], ["--na-backends"]),
    (["--iters", "0"], ["--iters"]),
])
def test_bench_kernels_user_errors(args, words):
    _assert_user_error(_tool("bench_kernels.py", *args), *words)
