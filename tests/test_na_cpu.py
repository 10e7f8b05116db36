"""The compiled NA CPU kernel (``backend="cpu"``, what ``auto`` picks on CPU): forward and backward against the
dense reference (fp32, fp64, gradcheck), both of its paths (the lane path for stride 1 along the last axis, the
generic path otherwise), every feature (1-D/2-D/3-D, dilation, stride, causal, RPB, GQA, extra keys, logsumexp,
value head_dim, odd sizes, batch 0, non-contiguous inputs, low precision), non-finite values, thread counts,
opcheck / torch.compile, and the fallback when it cannot be built.

Where a C++ compiler exists (CI), a kernel that does not build fails these tests instead of skipping them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from na_cases import NA_CASES, assert_matches_reference, case_id, make_inputs, run_na

from visionattn._environment import override, settings
from visionattn.kernels import _na_cpu, dispatch, na, na1d, na2d, na3d
from visionattn.kernels.checks import NAConfig, na_args

FNS = {1: na1d, 2: na2d, 3: na3d}


@pytest.fixture(scope="module", autouse=True)
def kernel():
    if not settings().na_cpu:
        pytest.skip("the NA CPU kernel is disabled (VISIONATTN_NA_CPU=0)")
    if not _na_cpu.available():
        if shutil.which(os.environ.get("CXX", "c++")):
            pytest.fail(f"a C++ compiler exists but the NA CPU kernel did not build: {_na_cpu.load_error()}")
        pytest.skip(f"no C++ compiler: {_na_cpu.load_error()}")


# the lane path's own corners: rows longer than one vector block (4 to 16 fp32 lanes by target) with a partial
# last block, dilation groups of unequal length along the last axis, causal + dilation there, even kernels, a
# window as long as the axis, kernel 1 on the last axis, wide head_dim, long rows with wide windows
LANE_CASES = [
    dict(spatial=(70,), kernel_size=9, dilation=3, heads=2),
    dict(spatial=(70,), kernel_size=9, dilation=3, is_causal=True, heads=2),
    dict(spatial=(41,), kernel_size=4, heads=1),
    dict(spatial=(33,), kernel_size=33, heads=2),
    dict(spatial=(5, 40), kernel_size=(3, 1), heads=2),
    dict(spatial=(9, 37), kernel_size=(3, 6), dilation=(2, 5), is_causal=(True, True), heads=2),
    dict(spatial=(7, 7), kernel_size=7, heads=3, head_dim=32, batch=2),
    dict(spatial=(4, 5, 19), kernel_size=(3, 3, 5), dilation=(1, 1, 3), is_causal=(False, True, True), heads=2,
         batch=2),
    dict(spatial=(30, 33), kernel_size=7, heads=2, head_dim=40),
    # long rows / wide windows: the backward's second pass gathers key blocks straight from the first pass's rows
    dict(spatial=(200,), kernel_size=31, heads=2, head_dim=32),
    dict(spatial=(150,), kernel_size=21, dilation=2, is_causal=True, heads=2, head_dim=32),
    dict(spatial=(5, 120), kernel_size=(3, 31), dilation=(1, 2), heads=2, head_dim=16),
]
# the generic path (stride > 1 on the last axis), with every other feature
GENERIC_CASES = [
    dict(spatial=(13, 17), kernel_size=5, stride=(1, 2), dilation=(2, 1), is_causal=(False, True), heads=2),
    dict(spatial=(40,), kernel_size=7, dilation=3, stride=3, is_causal=True, heads=2),
    dict(spatial=(5, 6, 7), kernel_size=3, dilation=(1, 2, 1), stride=(1, 1, 2), is_causal=(False, True, False),
         heads=2),
]


@pytest.mark.parametrize("case", NA_CASES + LANE_CASES + GENERIC_CASES, ids=case_id)
def test_matches_reference_fp32(case):
    assert_matches_reference("cpu", **case)


@pytest.mark.parametrize("case", NA_CASES[::2] + LANE_CASES + GENERIC_CASES, ids=case_id)
def test_matches_reference_fp64(case):
    assert_matches_reference("cpu", **case, dtype=torch.float64)


@pytest.mark.parametrize("case", [
    dict(spatial=(6, 7), kernel_size=3, dilation=(1, 2), is_causal=(True, False)),  # lane path
    dict(spatial=(6, 7), kernel_size=3, stride=(1, 2), is_causal=(False, True)),  # generic path
    dict(spatial=(11,), kernel_size=4, dilation=2),
    dict(spatial=(3, 4, 5), kernel_size=(3, 3, 3), is_causal=(False, False, True)),
], ids=case_id)
def test_gradcheck_fp64(case):
    from torch.autograd import gradcheck

    q, k, v, rpb = make_inputs(case["spatial"], case["kernel_size"], heads=2, head_dim=3, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (q, k, v, rpb)]
    kw = {a: case[a] for a in ("stride", "dilation", "is_causal") if a in case}
    fn = FNS[len(case["spatial"])]
    assert gradcheck(lambda q, k, v, r: fn(q, k, v, case["kernel_size"], rpb=r, backend="cpu", **kw), leaves,
                     fast_mode=len(case["spatial"]) == 3)


@pytest.mark.parametrize("stride", [1, 2], ids=["lane", "generic"])
def test_gqa_extra_keys_lse_and_value_head_dim(stride):
    """NATTEN >= 0.20 features through the op: GQA (kv heads dividing heads), extra keys / values merged into
    one softmax, the logsumexp (and its gradient), value head_dim != head_dim."""
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    q, k, v = t(2, 11, 20, 6, 12), t(2, 11, 20, 2, 12), t(2, 11, 20, 2, 20)
    rpb, ak, av = t(6, 9, 9), t(2, 3, 2, 12), t(2, 3, 2, 20)
    leaves = (q, k, v, rpb, ak, av)
    kw = dict(stride=(1, stride), dilation=(2, 1), rpb=rpb, additional_keys=ak, additional_values=av,
              return_lse=True)
    out_ref, lse_ref = na2d(q, k, v, 5, backend="reference", **kw)
    out, lse = na2d(q, k, v, 5, backend="cpu", **kw)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(lse, lse_ref)
    go, gl = torch.randn_like(out), torch.randn_like(lse)
    want = torch.autograd.grad((out_ref * go).sum() + (lse_ref * gl).sum(), leaves)
    got = torch.autograd.grad((out * go).sum() + (lse * gl).sum(), leaves)
    for name, a, b in zip(("q", "k", "v", "rpb", "additional_keys", "additional_values"), got, want):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"grad of {name}: {m}")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_batch_zero(n):
    spatial = (5,) * n
    q, k = (torch.randn(0, *spatial, 2, 16, requires_grad=True) for _ in range(2))
    v = torch.randn(0, *spatial, 2, 8, requires_grad=True)
    rpb = torch.randn(2, *([5] * n), requires_grad=True)
    out = FNS[n](q, k, v, 3, is_causal=n == 1, rpb=rpb, backend="cpu")
    assert out.shape == (0, *spatial, 2, 8)
    out.sum().backward()
    assert q.grad.shape == q.shape and v.grad.shape == v.shape and torch.equal(rpb.grad, torch.zeros_like(rpb))


def test_strided_inputs_and_gradients():
    """q, k, v as views of one qkv projection (NAT's layout) and an expanded (stride 0) output gradient."""
    qkv = torch.randn(2, 11, 23, 3, 2, 16, dtype=torch.float64, requires_grad=True)
    rpb = torch.randn(2, 9, 9, dtype=torch.float64, requires_grad=True)
    grads = []
    for be in ("reference", "cpu"):
        q, k, v = qkv.unbind(-3)
        out = na2d(q, k, v, 5, dilation=(1, 2), rpb=rpb, backend=be)
        grads.append((out, *torch.autograd.grad(out.sum(), (qkv, rpb))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    q, k, v, rpb = make_inputs((11, 19), 5, heads=2, head_dim=16)
    ref = na2d(q, k, v, 5, dilation=2, rpb=rpb, backend="reference")
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v, rpb)]
    out = na2d(*leaves[:3], 5, dilation=2, rpb=leaves[3], backend="cpu")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    out.sum().backward()
    assert all(t.grad.dtype == dtype and torch.isfinite(t.grad).all() for t in leaves)


_NONFINITE = [
    dict(spatial=(13, 40), kernel_size=5),
    dict(spatial=(13, 40), kernel_size=5, dilation=2),
    dict(spatial=(13, 40), kernel_size=5, is_causal=True),
    dict(spatial=(13, 40), kernel_size=5, stride=(1, 3)),
]


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("which", ["query", "key", "value"])
@pytest.mark.parametrize("cfg", _NONFINITE, ids=case_id)
def test_nonfinite_stays_in_windows(cfg, which, value):
    """Forward: the reference's NaN / inf pattern; backward: the exact window formulation's (``gather``): a
    non-finite value reaches only the queries (and their keys) whose windows hold it."""
    q, k, v, rpb = make_inputs(cfg["spatial"], cfg["kernel_size"], heads=2, dtype=torch.float64)
    {"query": q, "key": k, "value": v}[which][0, 6, 20, 1, 3] = value
    kw = {a: cfg[a] for a in ("stride", "dilation", "is_causal") if a in cfg}
    res = {}
    for be in ("reference", "gather", "cpu"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = run_na(be, *leaves, rpb, cfg["kernel_size"], **kw)
        res[be] = (out, *torch.autograd.grad(out.sum(), leaves))
    ref, cpu = res["reference"][0], res["cpu"][0]
    assert torch.equal(ref.isnan(), cpu.isnan()) and torch.equal(ref.isinf(), cpu.isinf())
    fin = torch.isfinite(ref)
    assert (~fin).any() and fin.any()
    torch.testing.assert_close(cpu[fin], ref[fin])
    for a, b in zip(res["gather"][1:], res["cpu"][1:]):
        assert torch.equal(a.isfinite(), b.isfinite())
        torch.testing.assert_close(b[a.isfinite()], a[a.isfinite()])


def test_results_do_not_depend_on_threads():
    """Fixed summation order: outputs and q / k / v / RPB gradients are bitwise equal at 1 and 2 threads, and from
    run to run at 2 threads (the work is handed to the threads dynamically), on both paths."""
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(3, 19, 37, 4, 16, generator=g).requires_grad_() for _ in range(3)]
    rpb = torch.randn(4, 9, 9, generator=g).requires_grad_()
    threads = torch.get_num_threads()
    res = {}
    try:
        for run, n in enumerate((1, 2, 2)):
            torch.set_num_threads(n)
            for stride in (1, 2):
                out = na2d(*leaves, 5, stride=(1, stride), dilation=(1, 2), rpb=rpb, backend="cpu")
                res[run, stride] = (out, *torch.autograd.grad(out.square().sum(), [*leaves, rpb]))
    finally:
        torch.set_num_threads(threads)
    for stride in (1, 2):
        for run in (1, 2):
            assert all(torch.equal(x, y) for x, y in zip(res[0, stride], res[run, stride])), (stride, run)


def test_auto_picks_the_kernel_on_cpu_but_not_while_exporting(monkeypatch):
    """Without calibration (VISIONATTN_NA_CPU_CALIBRATE=0) `auto` runs the kernel wherever it can: not while
    exporting."""
    with override(na_cpu_calibrate=False):
        seen = []
        run = na._RUN["cpu"]
        monkeypatch.setitem(na._RUN, "cpu", lambda *a: seen.append(1) or run(*a))
        q, k, v, _ = make_inputs((9, 10), 3)
        want = na2d(q, k, v, 3, backend="reference")
        torch.testing.assert_close(na2d(q, k, v, 3), want)
        assert seen == [1]
        # while exporting (ONNX, torch.jit.trace) the graph holds the torch path
        monkeypatch.setattr(dispatch, "exporting", lambda: True)
        monkeypatch.setattr(_na_cpu, "exporting", lambda: True)
        torch.testing.assert_close(na2d(q, k, v, 3), want)
        assert seen == [1]


def test_auto_asks_the_kernel_preference(monkeypatch):
    """On CPU `auto` runs the kernel only where `_na_cpu.preferred` chooses it, told whether a gradient is needed."""
    asked = []
    monkeypatch.setattr(_na_cpu, "preferred", lambda q, k, v, rpb, cfg, needs_grad: asked.append(needs_grad) or False)
    q, k, v, rpb = make_inputs((9, 10), 3)
    cfg = na_args(2, q, k, v, 3, 1, 1, False, None, rpb)
    assert dispatch.na_backend("auto", q, k, v, rpb, cfg) == "torch"
    rpb.requires_grad_()
    assert dispatch.na_backend("auto", q, k, v, rpb, cfg) == "torch"
    with torch.no_grad():
        assert dispatch.na_backend("auto", q, k, v, rpb, cfg) == "torch"
    assert asked == [False, True, False]
    monkeypatch.setattr(_na_cpu, "preferred", lambda *a: True)
    assert dispatch.na_backend("auto", q, k, v, rpb, cfg) == "cpu"
    assert dispatch.na_backend("cpu", q, k, v, rpb, cfg) == "cpu"  # an explicit backend is never second-guessed


def test_opcheck():
    ops = torch.ops.visionattn_cpu
    q, k, v, rpb = make_inputs((6, 19), 3, heads=2, head_dim=4, dtype=torch.float64)
    for stride in ([1, 1], [1, 2]):
        args = (q, k, v, rpb, [3, 3], stride, [2, 1], [False, True], 0.5)
        # the op has no autograd of its own (visionattn::na_forward's runs its backward op)
        torch.library.opcheck(ops.na_forward.default, args, test_utils=("test_schema", "test_faketensor"))
        with torch.no_grad():
            out, lse = ops.na_forward(*args)
        bargs = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), rpb.detach(), lse,
                 torch.randn_like(lse), [3, 3], stride, [2, 1], [False, True], 0.5)
        torch.library.opcheck(ops.na_backward.default, bargs)
    # and the package's op running this kernel
    cfg = [[3, 3], [1, 1], [2, 1], [False, True], 0.5]
    q, k, v, rpb = (t.requires_grad_() for t in (q, k, v, rpb))
    torch.library.opcheck(torch.ops.visionattn.na_forward.default, (q, k, v, rpb, None, None, *cfg, "cpu", True, True))


def test_compile_fullgraph_keeps_the_op():
    from torch._dynamo.testing import CompileCounterWithBackend

    q, k, v, rpb = (t.requires_grad_() for t in make_inputs((9, 20), 5, heads=2, head_dim=8))

    def f(q, k, v, rpb):
        return na2d(q, k, v, 5, dilation=(1, 2), rpb=rpb, backend="cpu").square().sum()

    counter = CompileCounterWithBackend("eager")
    got = torch.compile(f, fullgraph=True, backend=counter)(q, k, v, rpb)
    assert counter.frame_count == 1
    ops = {str(n.target) for gm in counter.graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert any("visionattn.na_forward" in o for o in ops), ops
    want = f(q, k, v, rpb)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, q)[0], torch.autograd.grad(want, q)[0])


def test_unavailable_kernel_falls_back_with_one_warning(tmp_path):
    """No compiler: one RuntimeWarning, `auto` runs the torch path, backend="cpu" is a ValueError naming why."""
    script = textwrap.dedent("""
        import warnings
        import torch
        from visionattn.kernels import na2d
        q = torch.randn(1, 9, 10, 2, 8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = na2d(q, q, q, 3)
            b = na2d(q, q, q, 3)
        torch.testing.assert_close(a, na2d(q, q, q, 3, backend="torch"))
        ours = [w for w in caught if "NA CPU kernel is unavailable" in str(w.message)]
        assert len(ours) == 1, [str(w.message) for w in caught]
        try:
            na2d(q, q, q, 3, backend="cpu")
        except ValueError as e:
            assert "unavailable" in str(e), e
        else:
            raise AssertionError("backend='cpu' ran without its kernel")
        print("ok")
    """)
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), VISIONATTN_CACHE=str(tmp_path / "cache"))
    env.pop("VISIONATTN_NA_CPU", None)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_flop_counter_counts_the_op():
    """torch.utils.flop_counter sees the custom op (a registered formula): the same count as the explicit window
    matmuls of `gather`, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for be in ("gather", "cpu", "torch"):
        q, k, v, rpb = (t.requires_grad_() for t in make_inputs((9, 20), 5, heads=2, head_dim=8))
        with FlopCounterMode(display=False) as fc:
            out = na2d(q, k, v, 5, rpb=rpb, backend=be)
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            out.sum().backward()
        counts[be] = (fwd, fc.get_total_flops())
    window = 2 * 2 * 9 * 20 * 2 * 25 * 8  # 2 (q.k, p.v) x 2 flops x queries x heads x window x head_dim
    assert counts["gather"][0] == counts["cpu"][0] == counts["torch"][0] == window
    assert counts["cpu"][1] == counts["torch"][1] == 2 * window


def test_kernel_benchmark_rows_with_gemm_rate(tmp_path):
    """`python -m tools.bench kernels`: `cpu` rows verified against the reference, timed beside `torch`, with the
    GEMM rate of the same run (`--gemm-rate`: gflops / pct_gemm per NA row, speedup_vs_torch)."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    jsonl = tmp_path / "kernels.jsonl"
    out = subprocess.run([sys.executable, "-m", "tools.bench", "kernels", "--op", "na", "--device", "cpu",
                          "--verify", "--cases", "quick_12x14_k5", "--na-backends", "cpu", "cpu_norpb", "torch",
                          "--gemm-rate", "--reps", "1", "--warmup", "0", "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=repo, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    verified = [r for r in rows if r["mode"] == "verify"]
    assert {r["backend"] for r in verified} == {"cpu", "cpu_norpb", "torch"}
    assert all(r["max_abs_diff"] <= 1e-5 for r in verified), verified
    gemm = [r for r in rows if r["op"] == "gemm"]
    assert len(gemm) == 4 and all(r["gflops"] > 0 for r in gemm)
    table = out.stdout
    assert "pct_gemm" in table and "speedup_vs_torch" in table


def test_bench_na_cpu_tool(tmp_path):
    """`python -m tools.bench na-cpu`: kernel rows with pct_gemm, model rows with GMAC/s beside the yardstick; user
    errors are one line and exit 2."""
    import csv
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = lambda *a: subprocess.run([sys.executable, "-m", "tools.bench", "na-cpu", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=repo, timeout=900)
    out = run("--threads", "1", "--cases", "quick_12x14_k5", "--reps", "1", "--models", "nat_mini", "--batch", "1",
              "--model-reps", "1", "--model-modes", "infer", "--out-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    with open(tmp_path / "na_cpu.csv") as f:
        rows = list(csv.DictReader(f))
    na = [r for r in rows if r["op"] == "na"]
    assert {r["backend"] for r in na} == {"cpu", "cpu_norpb", "torch", "torch_norpb"}
    assert all(float(r["pct_gemm"]) > 0 for r in na)
    models = {(r["model"], r["backend"]): r for r in rows if r.get("model")}
    assert set(models) == {("swin_tiny_patch4_window7_224", "-"), ("nat_mini", "torch"), ("nat_mini", "cpu")}
    assert float(models[("swin_tiny_patch4_window7_224", "-")]["vs_yardstick"]) == 1.0
    assert abs(float(models[("nat_mini", "cpu")]["gmacs"]) - 2.695) < 0.01
    for args in (["--threads", "0"], ["--models", "no_such_model"], ["--timer", "cpu", "--threads", "2"]):
        bad = run(*args)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# ------------------------------------------------------------------------------------------------ builds per target


def test_build_info_names_the_target_it_was_built_for():
    """The loaded build: the -march chosen for this machine and the vectors the compiled code uses (read from it)."""
    info = _na_cpu.build_info()
    assert info["march"] == (_na_cpu.host_march() or None)
    expected = {"x86-64-v4": ("avx512", 512), "x86-64-v3": ("avx2", 256), "x86-64-v2": ("sse2", 128),
                "x86-64": ("sse2", 128), "armv8-a": ("neon", 128)}.get(info["march"])
    if expected is not None:
        assert (info["isa"], info["vector_bits"]) == expected, info
    assert info["compiler"] and info["cpu"] and info["march"] in info["folder"]


def test_build_folder_is_keyed_by_target():
    """One cache folder per target (and source, compiler, torch): builds for other targets never collide."""
    cxx = settings().cxx
    src = b"int x;"
    folders = {_na_cpu._build_dir(cxx, m, kind, src) for m in ("x86-64-v3", "x86-64-v4", "") for kind in ("lib", "obj")}
    assert len(folders) == 6
    assert _na_cpu._build_dir(cxx, "x86-64-v3", "lib", src) == _na_cpu._build_dir(cxx, "x86-64-v3", "lib", src)
    assert _na_cpu._build_dir(cxx, "x86-64-v3", "lib", src) != _na_cpu._build_dir(cxx, "x86-64-v3", "lib", b"int y;")
    assert "x86-64-v4" in _na_cpu._build_dir(cxx, "x86-64-v4", "lib", src).name


@pytest.mark.parametrize("target", list(_na_cpu.TARGETS))
def test_kernel_compiles_for_target(target):
    """AVX2, AVX-512 and aarch64 (NEON, SVE) builds compile on any machine (object files; a cross compiler for the
    other architecture: Debian's g++-aarch64-linux-gnu), each with that target's vectors. CI installs the cross
    compiler and sets VISIONATTN_REQUIRE_CROSS=1: a missing compiler fails there instead of skipping."""
    triplet, march, _ = _na_cpu.TARGETS[target]
    info = _na_cpu.build_info()
    if triplet == _na_cpu._host_triplet() and march == info["march"]:
        pytest.skip(f"the kernel loaded here is the {target} build: this file's tests ran on it")
    try:
        obj = _na_cpu.compile_check(target)
    except RuntimeError as e:
        if "no C++ compiler" in str(e) and os.environ.get("VISIONATTN_REQUIRE_CROSS") != "1":
            pytest.skip(str(e))
        raise
    assert obj.stat().st_size > 0


def test_kernel_tests_pass_on_the_x86_64_v3_build():
    """Where the loaded build is not the AVX2 one (an AVX-512 machine), this file's numerical tests run again in a
    process that builds and loads the x86-64-v3 kernel."""
    if _na_cpu._host_triplet() != "x86_64-linux-gnu":
        pytest.skip("x86-64 only")
    if _na_cpu.build_info()["march"] == "x86-64-v3":
        pytest.skip("the kernel loaded here is the x86-64-v3 build: this file's tests ran on it")
    env = dict(os.environ, VISIONATTN_NA_CPU_MARCH="x86-64-v3")
    keep = "matches_reference or gradcheck or gqa or strided or nonfinite or threads or low_precision or build_info"
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-n", "0", __file__,
                          "-k", keep], env=env, capture_output=True, text=True, timeout=3000)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ auto's choice


@pytest.fixture
def calibration(monkeypatch, tmp_path):
    """An empty timing table written to tmp_path; `measured` lists the shape classes timed."""
    measured = []
    monkeypatch.setattr(_na_cpu, "_cal", {})
    monkeypatch.setattr(_na_cpu, "_cal_read", set())
    monkeypatch.setattr(_na_cpu, "_calibration_file", lambda: tmp_path / "calibration.json")
    with override(na_cpu_calibrate=True):
        yield measured


def _cfg(ks, n=2, stride=1, dilation=1, causal=False):
    return NAConfig((ks,) * n, (stride,) * n, (dilation,) * n, (causal,) * n, 0.25)


def test_preferred_follows_the_measured_timings(calibration, monkeypatch, tmp_path):
    """auto's choice per shape class is the faster of the timed backends; each class is timed once, kept in
    memory and in the file, which a fresh table reads instead of timing again."""
    speeds = {}  # (needs_grad, rpb) -> (cpu seconds, torch seconds)

    def fake(q, k, v, rpb, cfg, needs_grad):
        calibration.append(_na_cpu.shape_class(q, k, v, rpb, cfg, needs_grad))
        cpu, tor = speeds[needs_grad, rpb is not None]
        return {"cpu": cpu, "torch": tor}

    monkeypatch.setattr(_na_cpu, "_measure", fake)
    speeds.update({(False, True): (1.0, 2.0), (True, True): (3.0, 2.0), (False, False): (2.0, 2.0)})
    q, k, v, rpb = make_inputs((9, 10), 3)
    cfg = _cfg(3)
    assert _na_cpu.preferred(q, k, v, rpb, cfg, needs_grad=False) is True
    assert _na_cpu.preferred(q, k, v, rpb, cfg, needs_grad=True) is False  # slower in training: the torch path
    assert _na_cpu.preferred(q, k, v, None, cfg, needs_grad=False) is True  # a tie keeps the kernel
    for _ in range(3):
        assert _na_cpu.preferred(q, k, v, rpb, cfg, needs_grad=True) is False
    assert len(calibration) == 3 == len(set(calibration))
    # the same class at another size bucket or thread count is another class
    big = make_inputs((40, 40), 3, batch=4)
    speeds[False, True] = (5.0, 1.0)
    assert _na_cpu.preferred(*big[:3], big[3], cfg, needs_grad=False) is False
    assert len(calibration) == 4
    # a new process (empty table) reads the file
    saved = json.loads((tmp_path / "calibration.json").read_text())["classes"]
    assert set(saved) == set(calibration)
    monkeypatch.setattr(_na_cpu, "_cal", {})
    monkeypatch.setattr(_na_cpu, "_cal_read", set())
    assert _na_cpu.preferred(q, k, v, rpb, cfg, needs_grad=True) is False
    assert len(calibration) == 4


def test_calibration_times_cpu_time_at_one_thread(monkeypatch):
    """At one thread the calibration reads this thread's CPU time (a loaded machine's wall clock once kept the
    slower backend for a class); both backends get a finite best time."""
    import time as time_mod

    reads = []
    real = time_mod.thread_time
    monkeypatch.setattr(time_mod, "thread_time", lambda: reads.append(1) or real())
    q, k, v, rpb = make_inputs((9, 10), 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        timing = _na_cpu._measure(q, k, v, rpb, _cfg(3), False)
    finally:
        torch.set_num_threads(threads)
    assert set(timing) == {"cpu", "torch"} and all(0 < t < 60 for t in timing.values())
    assert len(reads) >= 4 * _na_cpu._REPEATS  # two reads per timed call, both backends, at least one round


def test_shape_class_separates_what_changes_the_speed():
    q, k, v, rpb = make_inputs((9, 10), 3, heads=4)
    base = _na_cpu.shape_class(q, k, v, rpb, _cfg(3), False)
    others = [
        _na_cpu.shape_class(q, k, v, rpb, _cfg(3), True),
        _na_cpu.shape_class(q, k, v, None, _cfg(3), False),
        _na_cpu.shape_class(q, k, v, rpb, _cfg(5), False),
        _na_cpu.shape_class(q, k, v, rpb, _cfg(3, stride=2), False),
        _na_cpu.shape_class(q, k, v, rpb, _cfg(3, dilation=2), False),
        _na_cpu.shape_class(q, k, v, rpb, _cfg(3, causal=True), False),
        _na_cpu.shape_class(q.double(), k.double(), v.double(), rpb.double(), _cfg(3), False),
        _na_cpu.shape_class(q, k[..., :2, :], v[..., :2, :], rpb, _cfg(3), False),  # GQA
        _na_cpu.shape_class(q.repeat(16, 1, 1, 1, 1), k, v, rpb, _cfg(3), False),  # 16x the queries
    ]
    assert len({base, *others}) == len(others) + 1
    assert _na_cpu.shape_class(q[..., :9, :, :], k, v, rpb, _cfg(3), False) == base  # 10% fewer: same bucket
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert _na_cpu.shape_class(q, k, v, rpb, _cfg(3), False) != base
    finally:
        torch.set_num_threads(threads)


def test_preferred_times_nothing_where_it_must_not(calibration, monkeypatch):
    """No timing under graph capture (the kernel), with VISIONATTN_NA_CPU_CALIBRATE=0 (the kernel), for an empty
    batch; False where the kernel cannot run the call (exporting)."""
    monkeypatch.setattr(_na_cpu, "_measure", lambda *a: calibration.append(a) or {"cpu": 1.0, "torch": 0.5})
    q, k, v, rpb = make_inputs((9, 10), 3)
    monkeypatch.setattr(_na_cpu, "capturing", lambda: True)
    assert _na_cpu.preferred(q, k, v, rpb, _cfg(3), False) is True
    monkeypatch.setattr(_na_cpu, "capturing", lambda: False)
    with override(na_cpu_calibrate=False):
        assert _na_cpu.preferred(q, k, v, rpb, _cfg(3), False) is True
    assert _na_cpu.preferred(q[:0], k[:0], v[:0], rpb, _cfg(3), False) is True
    assert calibration == []
    monkeypatch.setattr(_na_cpu, "exporting", lambda: True)
    assert _na_cpu.preferred(q, k, v, rpb, _cfg(3), False) is False
    assert calibration == []
    monkeypatch.setattr(_na_cpu, "exporting", lambda: False)
    assert _na_cpu.preferred(q, k, v, rpb, _cfg(3), False) is False  # measured: the torch path is faster
    assert len(calibration) == 1


def test_calibration_runs_apart_from_the_callers_state(calibration):
    """A real timing from inside no_grad / inference mode / autocast still times forward + backward in the call's
    dtype, leaves the global RNG alone, and gives a decision."""
    q, k, v, rpb = make_inputs((11, 13), 3, heads=2, head_dim=8, batch=2)
    state = torch.random.get_rng_state()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        timing = _na_cpu._in_fresh_thread(_na_cpu._measure, q, k, v, rpb, _cfg(3), True)
        choice = _na_cpu.preferred(q, k, v, rpb, _cfg(3), needs_grad=True)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(0 < t < 60 for t in timing.values()), timing
    assert isinstance(choice, bool)
