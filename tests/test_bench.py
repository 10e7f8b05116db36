"""The benchmarks' front door (`python -m tools.bench <suite>`, tools/bench/): suites registered and reachable,
one timer and one latency protocol (p50 / p90 / p99, presets), the environment each figure was measured on in
the JSON and CSV, baselines verified against the reference, the GPU check's CPU dry run. Driven through the
command lines, as users do, with tiny shapes and few calls."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from parity_utils import parity_dir

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tools.bench` in-process (the suites themselves run as `python -m tools.bench`)
    sys.path.append(str(REPO))

# what every row of every suite says about where and how it was measured
ENV_FIELDS = ("cpu_model", "cpu_isa", "na_cpu_isa", "threads", "torch", "timm", "python", "visionattn_commit", "date")


def _bench(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "tools.bench", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env)


def _tool(name, *args, timeout=900, env=None):
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout, env=env)


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _assert_user_error(out, *words):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stderr[-2000:])
    for word in words:
        assert word in lines[0], lines[0]


def _assert_environment(row):
    missing = [k for k in ENV_FIELDS if row.get(k) in (None, "")]
    assert not missing, (missing, row)


def _assert_percentiles(row, prefix=""):
    p50, p90, p99 = (float(row[f"{prefix}p{q}_ms"]) for q in (50, 90, 99))
    assert 0 < p50 <= p90 <= p99, row


# ------------------------------------------------------------------------------------------------ front door


def test_front_door_lists_every_suite_and_refuses_others():
    from tools.bench.suites import SUITES

    out = _bench("--help")
    assert out.returncode == 0 and all(f"  {name}" in out.stdout for name in SUITES)
    assert set(SUITES) == {"models", "kernels", "na-cpu", "official", "gpu-check"}
    _assert_user_error(_bench(), "name a suite", "models")
    _assert_user_error(_bench("benchmark"), "unknown suite 'benchmark'", "kernels")
    for name in SUITES:
        help_ = _bench(name, "--help")
        assert help_.returncode == 0 and f"python -m tools.bench {name}" in help_.stdout, help_.stderr[-2000:]
    old = ["benchmark.py", "bench_kernels.py", "bench_na_cpu.py", "bench_official.py", "gpu_check.py"]
    assert not [n for n in old if (REPO / "tools" / n).exists()]  # one front door, no second copy


def test_one_timer():
    """Every benchmark times through tools/bench/timing.py; the package has no timer of its own."""
    import visionattn.export

    assert not hasattr(visionattn.export, "time_fn")
    for path in sorted((REPO / "tools").rglob("*.py")):
        text = path.read_text()
        if path.name == "timing.py":
            continue
        assert "statistics.median" not in text and "process_time" not in text, path


# ------------------------------------------------------------------------------------------------ timer, protocol


def test_percentiles_and_latency_protocol():
    import numpy as np

    from tools.bench.timing import latency, percentile, summarize

    xs = [3.0, 1.0, 7.0, 2.0, 10.0, 4.0]
    for q in (0, 25, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    stats = summarize([0.001, 0.002, 0.003])
    assert stats["p50_ms"] == pytest.approx(2.0) and stats["mean_ms"] == pytest.approx(2.0) and stats["iters"] == 3
    calls = []
    out = latency(lambda: calls.append(1), warmup=3, reps=5)
    assert len(calls) == 8 and out["iters"] == 5 and set(out) == {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "iters"}
    calls.clear()  # the time-based protocol (SHViT's): warm-up and timed calls go on until their seconds passed
    out = latency(lambda: calls.append(1) or sum(range(2000)), warmup=0, warmup_s=0.02, reps=1, min_time_s=0.02)
    assert out["iters"] > 1 and len(calls) > out["iters"] and out["mean_ms"] * out["iters"] >= 20 * 0.99


def test_protocol_presets_match_the_papers_scripts():
    """timm's benchmark.py defaults (--num-warm-iter 10, --num-bench-iter 40, --batch-size 256, test size) and
    SHViT's speed_test.py (T0 = 10 s warm-up, T1 = 60 s timed; CPU: 1 thread, batch 16; GPU: batch 256 under
    float16 autocast)."""
    from tools.bench.protocol import PRESETS, resolve

    timm_ = PRESETS["timm"]
    assert (timm_.warmup, timm_.reps, timm_.batch, timm_.throughput_batch("cuda"), timm_.test_size) == \
        (10, 40, 256, 256, True)
    assert timm_.fields("cpu")["latency_batch"] == 256
    shvit = PRESETS["shvit"]
    assert (shvit.warmup_s, shvit.min_time_s, shvit.threads, shvit.batch, shvit.gpu_batch, shvit.amp_dtype) == \
        (10.0, 60.0, 1, 16, 256, "float16")
    assert shvit.fields("cpu")["latency_batch"] == 16 and shvit.fields("cuda")["batch"] == 256
    assert resolve("shvit", "cuda").threads is None  # CPU threads only where asked
    mine = resolve("timm", "cpu", reps=3, batch=2)
    assert (mine.warmup, mine.reps, mine.batch, mine.throughput_batch("cuda")) == (10, 3, 2, 2)
    with pytest.raises(ValueError, match="protocol"):
        resolve("mlperf")


def test_environment_fields(monkeypatch):
    """CPU model and ISA, the NA kernel's ISA (its build_info() where it has one), versions of the runtimes."""
    from tools.bench import env
    from visionattn.kernels import _na_cpu

    fields = env.environment("cpu", ("onnxruntime",))
    _assert_environment(fields)
    assert fields["onnxruntime"] and fields["torch_cpu_capability"]
    monkeypatch.setattr(_na_cpu, "build_info", lambda: {"isa": "avx512f", "march": "x86-64-v4"}, raising=False)
    assert env.na_cpu_build()["na_cpu_isa"] == "avx512f"
    assert env.versions(["torch", "no-such-dist-xyz"]).keys() == {"torch"}


# ------------------------------------------------------------------------------------------------ models suite


def _models(tmp_path, *args):
    return _bench("models", "--filter", "shvit_s1", "--img-size", "64", "--reps", "2", "--warmup", "1",
                  "--out-dir", tmp_path, *args)


def test_models_suite_rows_carry_the_protocol(tmp_path):
    """Per mode p50 / p90 / p99 and img/s; JSON and CSV with the protocol, threads, CPU model and ISA, the NA
    kernel's ISA and the runtimes' versions; Markdown with a header line saying the same; the plot."""
    out = _models(tmp_path, "--modes", "eager,onnx", "--batch", "2", "--threads", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.csv", "models.jsonl", "models.md", "models.png"]
    (row,) = _rows(tmp_path / "models.jsonl")
    (table,) = _csv(tmp_path / "models.csv")
    for r in (row, table):
        _assert_environment(r)
        for mode in ("eager", "onnx"):
            _assert_percentiles(r, f"{mode}_")
            assert float(r[f"{mode}_ips"]) > 0 and int(r[f"{mode}_iters"]) == 2
        assert r["onnxruntime"] and r["onnx"] and r["protocol"] == "default" and int(r["threads"]) == 1
        assert int(r["latency_batch"]) == 1 and int(r["batch"]) == 2 and int(r["reps"]) == 2
    assert float(row["onnx_vs_eager"]) > 0 and row["onnx_threads"] == 1
    md = (tmp_path / "models.md").read_text()
    assert "protocol default" in md and row["cpu_model"] in md and "eager_p99_ms" in md


def test_models_suite_protocol_presets(tmp_path):
    """--protocol shvit (CPU: 1 thread, batch 16, latency per call at batch 16) and timm (batch 256 by default),
    explicit arguments overriding the preset's fields (here: no 10 s / 60 s loops)."""
    out = _models(tmp_path / "shvit", "--modes", "eager", "--protocol", "shvit", "--warmup-s", "0",
                  "--min-time-s", "0")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = _rows(tmp_path / "shvit" / "models.jsonl")
    assert (row["protocol"], row["threads"], row["batch"], row["latency_batch"]) == ("shvit", 1, 16, 16)
    assert row["eager_ms_per_img"] == pytest.approx(row["eager_mean_ms"] / 16, rel=1e-2)
    out = _models(tmp_path / "timm", "--modes", "eager", "--protocol", "timm", "--batch", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = _rows(tmp_path / "timm" / "models.jsonl")
    assert (row["protocol"], row["warmup"], row["reps"], row["batch"], row["latency_batch"]) == ("timm", 1, 2, 2, 2)



def test_models_suite_interleaved_modes(tmp_path):
    """--interleave: the modes timed side by side, same fields per mode, plus each mode's best throughput call."""
    out = _models(tmp_path, "--modes", "eager,onnx", "--batch", "2", "--threads", "1", "--timer", "cpu",
                  "--interleave")
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = _rows(tmp_path / "models.jsonl")
    for mode in ("eager", "onnx"):
        _assert_percentiles(row, f"{mode}_")
        assert int(row[f"{mode}_iters"]) == 2 and 0 < row[f"{mode}_tput_best_ms"] <= row[f"{mode}_mean_ms"] * 2
        assert row[f"{mode}_best_ms"] <= row[f"{mode}_p50_ms"]
    assert row["onnx_vs_eager"] > 0 and "onnx_tput_best_ms" in (tmp_path / "models.md").read_text()


def test_interleaved_timer_alternates_and_reverses():
    from tools.bench.timing import interleaved

    order = []
    stats = interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, reps=3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert stats["a"]["iters"] == stats["b"]["iters"] == 3 and 0 <= stats["a"]["best_ms"] <= stats["a"]["p50_ms"]

@pytest.mark.parametrize("args,words", [
    (["--img-size", "0"], ["--img-size"]),
    (["--batch", "0"], ["--batch"]),
    (["--modes", "bogus"], ["--modes", "bogus"]),
    (["--modes", "eager,onx"], ["--modes", "onx"]),
    (["--modes", "amp"], ["--modes", "amp", "cpu"]),
    (["--family", "nope"], ["--family"]),
    (["--device", "tpu9"], ["--device"]),
    (["--protocol", "mlperf"], ["--protocol"]),
    (["--min-time-s", "-1"], ["--min-time-s"]),
], ids=["img0", "batch0", "modes-bogus", "modes-typo", "amp-on-cpu", "family", "device", "protocol", "min-time"])
def test_models_suite_user_errors(args, words, tmp_path):
    """Validated up front, one line on stderr, exit 2, nothing measured or written."""
    _assert_user_error(_bench("models", "--filter", "shvit_s1", "--out-dir", tmp_path / "bench", *args), *words)
    assert not (tmp_path / "bench").exists()


@pytest.mark.full
def test_models_suite_with_compile(tmp_path):
    out = _models(tmp_path, "--modes", "eager,compile,onnx", "--batch", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    (row,) = _rows(tmp_path / "models.jsonl")
    _assert_percentiles(row, "compile_")
    assert row["compile_setup_s"] > 0 and row["compile_vs_eager"] > 0


# ------------------------------------------------------------------------------------------------ kernels suites


def test_na_baselines_match_reference(tmp_path):
    """The FlexAttention rows (NA block mask, clamped RPB score_mod), gather and natten compute NA exactly:
    1-D, dilated 2-D and a window close to the map size, with and without RPB."""
    out = _bench("kernels", "--op", "na", "--verify-only", "--device", "cpu", "--out-dir", tmp_path,
                 "--na-backends", "flex", "flex_rpb", "gather", "torch", "torch_norpb")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = _rows(tmp_path / "kernels.jsonl")
    assert {r["backend"] for r in rows} == {"flex", "flex_rpb", "gather", "torch", "torch_norpb"}
    assert {r["case"] for r in rows} == {"verify_19_k5_d3", "verify_9x11_k3_d2", "verify_7x6_k5"}
    for r in rows:
        assert "error" not in r and r["max_abs_diff"] <= 1e-5 and r["mode"] == "verify", r


def test_bra_baselines_match_reference(tmp_path):
    out = _bench("kernels", "--op", "bra", "--verify-only", "--device", "cpu", "--out-dir", tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = _rows(tmp_path / "kernels.jsonl")
    assert {r["backend"] for r in rows} == {"reference", "torch"} and len(rows) == 6
    assert all(r["max_abs_diff"] <= 1e-5 for r in rows), rows


def test_kernel_rows_are_measured(tmp_path):
    """Every (case, implementation, mode) gives p50 / p90 / p99, a peak and the same-run ratios, with the timer,
    warm-up, timed calls, threads, CPU and the NA kernel's ISA; JSON lines, CSV and Markdown."""
    out = _bench("kernels", "--op", "all", "--device", "cpu", "--cases", "quick_12x14_k5", "--sizes", "56",
                 "--stages", "0", "--reps", "2", "--warmup", "0", "--na-backends", "torch", "torch_norpb", "gather",
                 "--threads", "1", "--out-dir", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path / "kernels.jsonl")
    na = [r for r in rows if r["op"] == "na"]
    bra = [r for r in rows if r["op"] == "bra"]
    assert len(na) == 6 and len(bra) == 4
    table = _csv(tmp_path / "kernels.csv")
    assert len(table) == 10
    for r in rows + table:
        _assert_percentiles(r)
        _assert_environment(r)
        assert float(r["peak_mb"]) >= 0 and int(r["iters"]) == 2 and int(r["threads"]) == 1
        assert r["timer"] == "wall" and int(r["warmup"]) == 0 and int(r["reps"]) == 2
    torch_fwd = next(r for r in table if r["backend"] == "torch" and r["mode"] == "fwd")
    assert float(torch_fwd["speedup_vs_gather"]) > 0 and float(torch_fwd["rpb_cost"]) > 0, torch_fwd
    assert all(float(r["speedup_vs_gather"]) > 0 for r in table if r["op"] == "bra" and r["backend"] == "torch")
    assert "p99_ms" in out.stdout and "p99_ms" in (tmp_path / "kernels.md").read_text()


@pytest.mark.parametrize("args,words", [
    (["--cases", "nope"], ["--cases"]),
    (["--batch", "0"], ["--batch"]),
    (["--device", "tpu9"], ["--device"]),
    (["--na-backends", "cuda_magic"], ["--na-backends"]),
    (["--reps", "0"], ["--reps"]),
    (["--out-dir", "{file}"], ["--out-dir", "not a directory"]),
])
def test_kernels_suite_user_errors(args, words, tmp_path):
    (tmp_path / "file").write_text("x")
    _assert_user_error(_bench("kernels", *[a.format(file=tmp_path / "file") for a in args]), *words)


# ------------------------------------------------------------------------------------------------ gpu-check


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
    _assert_user_error(_bench("gpu-check", *args), *words)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_gpu_check_summary_from_rows(tmp_path):
    """The Markdown writer (tools/bench/report.py): same-run ratios of p50 times computed from the rows, a killed
    run's partial pytest log counted, a line cut short by a kill ignored."""
    (tmp_path / "env.json").write_text(json.dumps({
        "date": "2026-01-01 00:00 UTC", "gpu": "NVIDIA H200", "torch": "2.11.0", "cuda": "12.8", "triton": "3.5.0",
        "timm": "1.0.31", "visionattn_commit": "abc1234", "total_s": 401.5, "cpu_model": "AMD EPYC 9654",
        "cpu_isa": "avx512f avx2 fma", "na_cpu_isa": "avx512f avx2 fma",
        "sections": {"tests": {"rc": None, "seconds": 100.0}, "na": {"rc": 0, "seconds": 90.0, "restarts": 1}}}))
    (tmp_path / "pytest_gpu.log").write_text(
        "[gw0] [ 10%] PASSED tests/test_na_triton.py::test_a[float16]\n"
        "[gw1] [ 20%] FAILED tests/test_na_triton.py::test_b[bfloat16]\n"
        "[gw0] [ 30%] PASSED tests/test_bra_triton.py::test_c\n")
    case = dict(op="na", case="nat_tiny_s1_56x56_k7", dtype="float16", device="cuda", shape="56x56")
    _jsonl(tmp_path / "na.jsonl", [
        dict(case, backend="triton", mode="verify", max_abs_diff=1e-3),
        dict(case, backend="flex_rpb", mode="verify", max_abs_diff=0.5),
        dict(case, backend="triton", mode="fwdbwd", p50_ms=2.0, p90_ms=2.2, p99_ms=2.5, peak_mb=100.0),
        dict(case, backend="triton_norpb", mode="fwdbwd", p50_ms=1.6, peak_mb=90.0),
        dict(case, backend="flex", mode="fwdbwd", p50_ms=3.0, peak_mb=120.0, compile_s=7.5),
        dict(case, backend="sdpa_dense", mode="fwdbwd", p50_ms=1.0, peak_mb=50.0),
        dict(case, backend="flex_rpb", mode="fwdbwd", error="InductorError: boom"),
    ])
    stage = dict(op="bra", case="biformer_s_512px_stage1", size=512, stage=1, shape="70x70", dtype="float16",
                 device="cuda")
    _jsonl(tmp_path / "bra.jsonl", [
        dict(stage, backend="reference", mode="fwdbwd", p50_ms=9.0, peak_mb=300.0),
        dict(stage, backend="triton", mode="fwdbwd", p50_ms=3.0, peak_mb=50.0),
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
    out = _bench("gpu-check", "--render", "--out-dir", tmp_path)
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "summary.md").read_text()
    assert out.stdout == md
    assert "NVIDIA H200" in md and "tests: killed at its time limit" in md and "1 restart(s)" in md
    assert "AMD EPYC 9654, ISA avx512f avx2 fma" in md and "commit abc1234" in md
    assert "2 passed (run killed" in md and "1 failed (run killed" in md
    assert "FAILED tests/test_na_triton.py::test_b[bfloat16]" in md
    assert "1/2" in md and "flex_rpb" in md and "0.5000" in md  # the mismatching check is named
    lines = md.splitlines()
    assert "| nat_tiny_s1_56x56_k7 | float16 | triton | — | 2.00 | 2.20 / 2.50 |" in md
    target = next(line for line in lines if line.startswith("| nat_tiny_s1_56x56_k7 | float16 | 1.50"))
    assert target.split(" | ")[3:5] == ["1.25", "0.50 |"]  # RPB cost 2.0/1.6, SDPA 1.0/2.0
    assert any(line.startswith("| nat_tiny_s1_56x56_k7 | float16 | flex_rpb |") and "InductorError" in line
               for line in lines)
    assert any(line.startswith("| 512 | 1 | 70x70 | triton | — | 3.00 | 50.0 | 3.00 | 6.00 |") for line in lines)
    assert "nat_tiny / swin_tiny training img/s (best of each): 0.80" in md
    assert "skipped: too little time left to compile" in md and "convnext" not in md


def _gpu_check(tmp_path, *args, env=None, timeout=900, python=sys.executable):
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--out-dir", str(tmp_path), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "PYTHON": str(python), **(env or {})})


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The whole script (`make gpu-check`) on CPU with tiny shapes: every section runs through the front door, 7
    files, the summary printed last, every row with the environment and its warm-up / timed-call counts."""
    out = _gpu_check(tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["bra.jsonl", "env.json", "gpu_check.log", "models.jsonl", "na.jsonl", "pytest_gpu.log",
                     "summary.md"], files
    md = (tmp_path / "summary.md").read_text()
    assert out.stdout.endswith(md)
    for section in ("tests: exit 0", "na: exit 0", "bra: exit 0", "models: exit 0", "## pytest -m gpu",
                    "## Neighborhood attention", "## Bi-level routing attention", "## Models", "Host CPU"):
        assert section in md, section
    _assert_environment(json.loads((tmp_path / "env.json").read_text()))
    rows = _rows(tmp_path / "models.jsonl")
    assert {(r["model"], r["mode"]) for r in rows} == {(m, mode) for m in ("nat_mini", "convnext_atto")
                                                       for mode in ("train", "infer")}
    assert all(r["img_s"] > 0 and "error" not in r for r in rows), rows
    for r in rows + [r for r in _rows(tmp_path / "na.jsonl") if r["mode"] != "verify"]:
        _assert_percentiles(r)
        _assert_environment(r)
        assert (r["warmup"], r["reps"], r["timer"]) == (1, 1, "wall")


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


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info < (3, 11), reason="the fallback needs PYTHONSAFEPATH (Python >= 3.11)")
def test_gpu_check_without_an_installed_package(tmp_path):
    """A GPU machine's Python where visionattn is not installed and pip cannot install it (no registry there):
    the script falls back to a folder of links, and the front door still imports the package, not the source
    folder visionattn/ of the working directory (which lacks visionattn.kernels)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # this interpreter's packages, without processing their .pth files (so no editable install of visionattn)
    (site / "deps.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    (site / "pip").mkdir()
    (site / "pip" / "__init__.py").write_text("")
    (site / "pip" / "__main__.py").write_text("raise SystemExit('no package registry here')\n")
    out = _gpu_check(tmp_path / "out", "--sections", "na", python=venv / "bin" / "python")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "pip install failed" in log and "PYTHONSAFEPATH=1" in log
    env = json.loads((tmp_path / "out" / "env.json").read_text())
    assert "/site/visionattn" in env["visionattn"], env["visionattn"]
    assert "na: exit 0" in (tmp_path / "out" / "summary.md").read_text()


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
    _assert_user_error(_bench("official", *args), *words)


def test_bench_official_without_checkouts_says_so(tmp_path):
    """No official code fetched: every model is reported as skipped with the command that fetches it."""
    root = parity_dir()  # the manifests name the official constructors (skip / error as every parity test does)
    if root is None:
        pytest.skip("parity fixtures not found (set VISIONATTN_PARITY_DIR)")
    out = _bench("official", "--models", "biformer_t", "slab_deit_t", "--cache", tmp_path / "empty",
                 "--out-dir", tmp_path / "out", env={**os.environ, "VISIONATTN_PARITY_DIR": str(root)})
    assert out.returncode == 0, out.stderr
    rows = _rows(tmp_path / "out" / "official.jsonl")
    assert [r["model"] for r in rows] == ["biformer_t", "slab_deit_t"]
    assert all("fetch_official.py" in r["note"] for r in rows)
    _assert_environment(rows[0])
    assert _csv(tmp_path / "out" / "official.csv")[0]["cpu_model"] == rows[0]["cpu_model"]
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
        "from tools.bench.official import install_shims, load_official\n"
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
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
