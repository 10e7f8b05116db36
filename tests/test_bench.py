"""The benchmark runner (tools/bench/, tools/bench_kernels.py, tools/gpu_check.py): baselines verified against
the reference, rows measured and written, arguments validated. Driven through the command lines, as users do."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from parity_utils import parity_dir

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


# ------------------------------------------------------------------------------------------------ gpu_check


@pytest.mark.parametrize("args,words", [
    (["--sections", "tests,bogus"], ["--sections", "bogus"]),
    (["--budget", "0"], ["--budget"]),
    (["--device", "tpu"], ["--device"]),
    (["--out-dir", "{file}"], ["--out-dir", "not a directory"]),
    (["--render", "--out-dir", "{missing}"], ["--out-dir", "nothing to render"]),
])
def test_gpu_check_user_errors(args, words, tmp_path):
    (tmp_path / "file").write_text("x")
    args = [a.format(file=tmp_path / "file", missing=tmp_path / "missing") for a in args]
    _assert_user_error(_tool("gpu_check.py", *args), *words)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_gpu_check_summary_from_rows(tmp_path):
    """The Markdown writer: same-run ratios computed from the rows, a killed run's partial pytest log counted,
    a line cut short by a kill ignored."""
    (tmp_path / "env.json").write_text(json.dumps({
        "date": "2026-01-01 00:00 UTC", "gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "12.8", "triton": "3.5.0",
        "timm": "1.0.31", "git": "abc1234", "total_s": 401.5,
        "sections": {"tests": {"rc": None, "seconds": 100.0}, "na": {"rc": 0, "seconds": 90.0, "restarts": 1}}}))
    (tmp_path / "pytest_gpu.log").write_text(
        "[gw0] [ 10%] PASSED tests/test_na_triton.py::test_a[float16]\n"
        "[gw1] [ 20%] FAILED tests/test_na_triton.py::test_b[bfloat16]\n"
        "[gw0] [ 30%] PASSED tests/test_bra_triton.py::test_c\n")
    case = dict(op="na", case="nat_tiny_s1_56x56_k7", dtype="float16", device="cuda", shape="56x56")
    _jsonl(tmp_path / "na.jsonl", [
        dict(case, backend="triton", mode="verify", max_abs_diff=1e-3),
        dict(case, backend="flex_rpb", mode="verify", max_abs_diff=0.5),
        dict(case, backend="triton", mode="fwdbwd", time_ms=2.0, peak_mb=100.0),
        dict(case, backend="triton_norpb", mode="fwdbwd", time_ms=1.6, peak_mb=90.0),
        dict(case, backend="flex", mode="fwdbwd", time_ms=3.0, peak_mb=120.0, compile_s=7.5),
        dict(case, backend="sdpa_dense", mode="fwdbwd", time_ms=1.0, peak_mb=50.0),
        dict(case, backend="flex_rpb", mode="fwdbwd", error="InductorError: boom"),
    ])
    stage = dict(op="bra", case="biformer_s_512px_stage1", size=512, stage=1, shape="70x70", dtype="float16",
                 device="cuda")
    _jsonl(tmp_path / "bra.jsonl", [
        dict(stage, backend="reference", mode="fwdbwd", time_ms=9.0, peak_mb=300.0),
        dict(stage, backend="triton", mode="fwdbwd", time_ms=3.0, peak_mb=50.0),
    ])
    _jsonl(tmp_path / "models.jsonl", [
        dict(op="model", model="nat_tiny", backend="triton", compile=False, mode="train", batch=64, img_size=224,
             amp="bfloat16", img_s=800.0, peak_mb=9000.0),
        dict(op="model", model="swin_tiny_patch4_window7_224", backend="-", compile=False, mode="train", batch=64,
             img_size=224, amp="bfloat16", img_s=1000.0, peak_mb=8000.0),
        dict(op="model", model="nat_tiny", backend="triton", compile=True, mode="train",
             note="skipped: too little time left to compile"),
    ])
    with open(tmp_path / "models.jsonl", "a") as f:
        f.write('{"op": "model", "model": "convnext_ti')  # killed mid-line
    out = _tool("gpu_check.py", "--render", "--out-dir", tmp_path)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "summary.md").read_text()
    assert out.stdout == md
    assert "NVIDIA H200" in md and "tests: killed at its time limit" in md and "1 restart(s)" in md
    assert "2 passed (run killed" in md and "1 failed (run killed" in md
    assert "FAILED tests/test_na_triton.py::test_b[bfloat16]" in md
    assert "1/2" in md and "flex_rpb" in md and "0.5000" in md  # the mismatching check is named
    lines = md.splitlines()
    target = next(line for line in lines if line.startswith("| nat_tiny_s1_56x56_k7 | float16 | 1.50"))
    assert target.split(" | ")[3:5] == ["1.25", "0.50 |"]  # RPB cost 2.0/1.6, SDPA 1.0/2.0
    assert any(line.startswith("| nat_tiny_s1_56x56_k7 | float16 | flex_rpb |") and "InductorError" in line
               for line in lines)
    assert any(line.startswith("| 512 | 1 | 70x70 | triton | — | 3.00 | 50.0 | 3.00 | 6.00 |") for line in lines)
    assert "nat_tiny / swin_tiny training img/s (best of each): 0.80" in md
    assert "skipped: too little time left to compile" in md and "convnext" not in md


def _gpu_check(tmp_path, *args, env=None, timeout=900):
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--out-dir", str(tmp_path), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The whole script on CPU with tiny shapes: every section runs, at most 8 files, the summary printed last."""
    out = _gpu_check(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["bra.jsonl", "env.json", "gpu_check.log", "models.jsonl", "na.jsonl", "pytest_gpu.log",
                     "summary.md"], files
    md = (tmp_path / "summary.md").read_text()
    assert out.stdout.endswith(md)
    for section in ("tests: exit 0", "na: exit 0", "bra: exit 0", "models: exit 0", "## pytest -m gpu",
                    "## Neighborhood attention", "## Bi-level routing attention", "## Models"):
        assert section in md, section
    rows = _rows(tmp_path / "models.jsonl")
    assert {(r["model"], r["mode"]) for r in rows} == {(m, mode) for m in ("nat_mini", "convnext_atto")
                                                       for mode in ("train", "infer")}
    assert all(r["img_s"] > 0 and "error" not in r for r in rows), rows
    assert all("time_ms" in r for r in _rows(tmp_path / "na.jsonl") if r["mode"] != "verify")


@pytest.mark.slow
def test_gpu_check_sections_survive_each_other(tmp_path):
    """A crashing section, a hanging one (killed at its limit) and a fatal error (restarted without the rows it
    has) lose nothing of the others; the summary is still written."""
    crash = _gpu_check(tmp_path / "crash", "--sections", "na,bra", env={"GPU_CHECK_FAULT": "na:crash"})
    md = (tmp_path / "crash" / "summary.md").read_text()
    assert crash.returncode == 1 and "na: exit 1" in md and "bra: exit 0" in md and "## Bi-level routing" in md
    hang = _gpu_check(tmp_path / "hang", "--sections", "bra", "--budget", "12", env={"GPU_CHECK_FAULT": "bra:hang"})
    assert hang.returncode == 1 and "bra: killed at its time limit" in (tmp_path / "hang" / "summary.md").read_text()
    fatal = _gpu_check(tmp_path / "fatal", "--sections", "bra", "--budget", "300",
                       env={"GPU_CHECK_FAULT": "bra:fatal"})
    md = (tmp_path / "fatal" / "summary.md").read_text()
    assert fatal.returncode == 0 and "bra: exit 0" in md and "1 restart(s)" in md and "## Bi-level routing" in md


# ------------------------------------------------------------------------------------------------ official code


def _git(*args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _fake_official(tmp_path):
    """A local 'official' repository with two commits and a fixtures folder pinning the first."""
    src = tmp_path / "mirror"
    src.mkdir()
    _git("init", "-q", cwd=src)
    (src / "model.py").write_text("VERSION = 1\n")
    _git("add", "model.py", cwd=src)
    _git("commit", "-q", "-m", "one", cwd=src)
    pinned = _git("rev-parse", "HEAD", cwd=src)
    (src / "model.py").write_text("VERSION = 2\n")
    _git("commit", "-q", "-am", "two", cwd=src)
    fixtures = tmp_path / "parity" / "biformer"
    fixtures.mkdir(parents=True)
    (fixtures / "case.json").write_text(json.dumps({"official_repo": "https://github.com/someone/Official",
                                                    "official_commit": pinned}))
    return src, pinned, {**os.environ, "VISIONATTN_PARITY_DIR": str(tmp_path / "parity")}


def test_fetch_official_pins_the_commit_and_touches_nothing_else(tmp_path):
    src, pinned, env = _fake_official(tmp_path)
    cache = tmp_path / "cache"
    args = ["--family", "biformer", "--cache", cache, "--mirror", f"someone/Official={src}"]
    out = _tool("fetch_official.py", *args, env=env)
    assert out.returncode == 0, out.stderr
    assert _git("rev-parse", "HEAD", cwd=cache / "Official") == pinned
    assert (cache / "Official" / "model.py").read_text() == "VERSION = 1\n"
    again = _tool("fetch_official.py", *args, env=env)
    assert again.returncode == 0 and "already at the pinned commit" in again.stdout
    assert sorted(p.name for p in cache.iterdir()) == ["Official"]  # no temporary folder left
    # a folder the tool did not make is left alone
    (cache / "Official").rename(cache / "mine")
    (cache / "Official").mkdir()
    (cache / "Official" / "notes.txt").write_text("keep me")
    _assert_user_error(_tool("fetch_official.py", *args, env=env), "Official", "neither a git checkout")
    assert (cache / "Official" / "notes.txt").read_text() == "keep me"
    # an export whose COMMIT file names the pinned commit is reused as it is
    (cache / "Official" / "COMMIT").write_text(pinned + "\n")
    assert _tool("fetch_official.py", *args, env=env).returncode == 0


@pytest.mark.parametrize("args,words", [
    (["--mirror", "no-slash=/tmp"], ["--mirror"]),
    (["--mirror-root", "/nonexistent/mirrors"], ["--mirror-root"]),
    (["--family", "nope"], ["--family"]),
])
def test_fetch_official_user_errors(args, words):
    _assert_user_error(_tool("fetch_official.py", *args), *words)


@pytest.mark.parametrize("args,words", [
    (["--reps", "5"], ["--reps", "7"]),
    (["--models", "resnet50"], ["--models"]),
    (["--batches", "0"], ["--batches"]),
])
def test_bench_official_user_errors(args, words):
    _assert_user_error(_tool("bench_official.py", *args), *words)


def test_bench_official_without_checkouts_says_so(tmp_path):
    """No official code fetched: every model is reported as skipped with the command that fetches it."""
    root = parity_dir()  # the manifests name the official constructors (skip / error as every parity test does)
    if root is None:
        pytest.skip("parity fixtures not found (set VISIONATTN_PARITY_DIR)")
    out = _tool("bench_official.py", "--models", "biformer_t", "slab_deit_t", "--cache", tmp_path / "empty",
                "--out-dir", tmp_path / "out", env={**os.environ, "VISIONATTN_PARITY_DIR": str(root)})
    assert out.returncode == 0, out.stderr
    rows = _rows(tmp_path / "out" / "official.jsonl")
    assert [r["model"] for r in rows] == ["biformer_t", "slab_deit_t"]
    assert all("fetch_official.py" in r["note"] for r in rows)
    assert "rayleizhu/BiFormer @" in out.stdout and "skipped" in out.stdout


def test_official_import_shims(tmp_path):
    """A file written for timm 0.4 / torch 1.x imports unchanged in a worker with the shims, and registering an
    official function never replaces a zoo model of the same name in timm's registry."""
    pkg = tmp_path / "models"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "legacy.py").write_text(
        "import torch\n"
        "from torch._six import inf\n"
        "from fairscale.nn.checkpoint import checkpoint_wrapper\n"
        "from timm.models.layers import DropPath, trunc_normal_\n"
        "from timm.models.registry import register_model\n"
        "default_cfgs = {'legacy_tiny_xyz': dict(url='', hf_hub='someone/legacy', num_classes=10)}\n"
        "@register_model\n"
        "def legacy_tiny_xyz(**kw):\n"
        "    return torch.nn.Linear(2, 2)\n"
        "@register_model\n"
        "def nat_mini(**kw):\n"
        "    return torch.nn.Identity()\n")
    code = (
        "import timm, visionattn\n"
        "from bench.official import install_shims, load_official\n"
        "install_shims()\n"
        "fn = load_official(dict(builder='models/legacy.py:legacy_tiny_xyz', import_root='.'))\n"
        "assert type(fn()).__name__ == 'Linear'\n"
        "assert timm.models.get_pretrained_cfg('legacy_tiny_xyz').hf_hub_id == 'someone/legacy'\n"
        "assert type(timm.create_model('nat_mini')).__module__.startswith('visionattn')\n"
        "import fairscale.nn.checkpoint as c\n"
        "try:\n"
        "    c.checkpoint_wrapper(None)\n"
        "except NotImplementedError:\n"
        "    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tools", capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
