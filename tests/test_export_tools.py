"""Issue 27, the tool half: dynamic batch / height / width at any export batch (checked, never silently one-size),
both exporters, fp16 graphs against fp32, OpenVINO beside onnxruntime, the provider option, the preprocessing in
the file's metadata read by tools/validate_onnx.py, and one-line exit-2 user errors."""
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from visionattn.export import (
    FP16_RTOL,
    ExportUnsupported,
    dynamic_axes,
    export_onnx,
    onnx_runner,
    preprocessing,
    read_metadata,
    save_onnx,
)

REPO = Path(__file__).resolve().parents[1]


def _tool(name, *args, timeout=900):
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def _user_error(out, *words):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stderr[-3000:])
    for word in words:
        assert word in lines[0], lines[0]


def _net(classes=5):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, classes)).eval()


class _SizeBaked(torch.nn.Module):
    """Runs at any size in eager, but its trace bakes the input width in (a Python int from a shape)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        half = int(x.shape[-1]) // 2
        return self.conv(x)[..., :half].mean((2, 3))


def _eager_vs_file(model, path, x, runtime="onnxruntime"):
    with torch.no_grad():
        ref = model(x)
    got = onnx_runner(path, runtime)(x.numpy())
    return float(np.abs(got - ref.numpy()).max())


@pytest.mark.parametrize("exporter,opset", [("dynamo", 18), ("torchscript", 17)])
def test_dynamic_batch_from_a_batch1_export_runs_at_batch3(exporter, opset, tmp_path):
    net = _net()
    res = export_onnx(net, tmp_path / "m.onnx", img_size=32, batch=1, opset=opset, dynamic="batch", exporter=exporter)
    assert res["exporter"] == exporter and res["checked"] == [(1, 3, 32, 32), (3, 3, 32, 32)]
    assert dynamic_axes(tmp_path / "m.onnx") == {0: "batch"}
    assert _eager_vs_file(net, tmp_path / "m.onnx", torch.randn(3, 3, 32, 32)) <= 1e-5


@pytest.mark.parametrize("exporter,opset", [("dynamo", 18), ("torchscript", 17)])
def test_dynamic_height_width_at_a_second_size(exporter, opset, tmp_path):
    net = _net()
    res = export_onnx(net, tmp_path / "m.onnx", img_size=32, batch=2, opset=opset, dynamic="all", exporter=exporter,
                      runtimes=("onnxruntime", "openvino"))
    assert set(dynamic_axes(tmp_path / "m.onnx")) == {0, 2, 3}
    assert res["openvino_max_abs_diff"] <= 1e-5 and res["onnxruntime_max_abs_diff"] <= 1e-5
    for rt in ("onnxruntime", "openvino"):
        assert _eager_vs_file(net, tmp_path / "m.onnx", torch.randn(5, 3, 48, 40), rt) <= 1e-5


@pytest.mark.parametrize("exporter,opset", [("dynamo", 18), ("torchscript", 17)])
def test_a_size_baked_into_the_graph_is_refused_and_nothing_written(exporter, opset, tmp_path):
    """torchscript traces the width as a constant (the file would run at other sizes with wrong results); dynamo
    specializes it: both are ExportUnsupported, and no file appears."""
    with pytest.raises(ExportUnsupported, match="nothing written|fixed the"):
        export_onnx(_SizeBaked().eval(), tmp_path / "m.onnx", img_size=32, opset=opset, dynamic="hw",
                    exporter=exporter)
    assert list(tmp_path.iterdir()) == []


def test_fp16_graph_against_fp32_in_both_runtimes(tmp_path):
    net = _net()
    res = export_onnx(net, tmp_path / "m.onnx", img_size=32, batch=2, dtype="fp16",
                      runtimes=("onnxruntime", "openvino"), dynamic="batch")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = net(x).double()
    bound = FP16_RTOL * max(1.0, ref.abs().max().item())
    for rt in ("onnxruntime", "openvino"):
        got = torch.from_numpy(onnx_runner(tmp_path / "m.onnx", rt)(x.half().numpy()).astype(np.float64))
        diff = (got - ref).abs().max().item()
        assert 0 < diff <= bound, (rt, diff)  # fp16 rounding is there, within the stated tolerance
    assert res["dtype"] == "fp16" and read_metadata(tmp_path / "m.onnx")["visionattn.dtype"] == "fp16"


def test_unavailable_provider_is_refused_before_export(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(ExportUnsupported, match="provider 'cuda'.*not available"):
        export_onnx(_net(), tmp_path / "m.onnx", img_size=32, provider="cuda")
    assert not (tmp_path / "m.onnx").exists()


def test_preprocessing_metadata_round_trip(tmp_path):
    import timm

    model = timm.create_model("shvit_s1", num_classes=3)  # no export: only its data config is written
    cfg = timm.data.resolve_model_data_config(model)
    save_onnx(_net(3), torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    assert preprocessing(tmp_path / "m.onnx") == {}  # a plain save carries none
    export_onnx(_net(3), tmp_path / "n.onnx", img_size=(32, 40))
    got = preprocessing(tmp_path / "n.onnx")
    assert got["input_size"] == [3, 32, 40] and set(got) == {"input_size", "interpolation", "mean", "std", "crop_pct",
                                                            "crop_mode"}
    assert isinstance(cfg["mean"], tuple) and got["interpolation"] in ("bicubic", "bilinear")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from visionattn.data import digits_to_folder

    return digits_to_folder(tmp_path_factory.mktemp("d") / "digits", size=16, limit=40, val_fraction=0.5) / "val"


def test_validate_onnx_reads_the_metadata_and_warns_on_override(digits, tmp_path):
    export_onnx(_net(10), tmp_path / "m.onnx", img_size=24, batch=4)  # a fixed batch of 4: the last batch is padded
    out = _tool("validate_onnx.py", tmp_path / "m.onnx", digits, "--workers", "0")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["preprocess_from"] == "file" and res["preprocess"]["input_size"] == [3, 24, 24]
    assert res["images"] == sum(1 for p in digits.rglob("*.png")) > 0 and out.stderr == ""
    assert 0 <= res["top1"] <= res["top5"] <= 100
    out = _tool("validate_onnx.py", tmp_path / "m.onnx", digits, "--workers", "0", "--crop-pct", "1.0",
                "--runtime", "openvino")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["overridden"] == ["crop_pct"] and res["preprocess"]["crop_pct"] == 1.0
    assert out.stderr.startswith("warning: --crop-pct overrides the file's preprocessing")


def test_validate_onnx_user_errors(digits, tmp_path):
    export_onnx(_net(10), tmp_path / "m.onnx", img_size=24)
    save_onnx(_net(10), torch.randn(1, 3, 24, 24), tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"no")
    _user_error(_tool("validate_onnx.py", tmp_path / "none.onnx", digits), "not a file")
    _user_error(_tool("validate_onnx.py", tmp_path / "m.onnx", tmp_path / "nodir"), "data_dir")
    _user_error(_tool("validate_onnx.py", tmp_path / "junk.onnx", digits), "not a readable ONNX")
    _user_error(_tool("validate_onnx.py", tmp_path / "plain.onnx", digits), "no preprocessing metadata", "--mean")
    _user_error(_tool("validate_onnx.py", tmp_path / "m.onnx", digits, "--img-size", "32"), "fixed 24x24")
    _user_error(_tool("validate_onnx.py", tmp_path / "m.onnx", digits, "--crop-pct", "2"), "--crop-pct")
    _user_error(_tool("validate_onnx.py", tmp_path / "m.onnx", digits, "--runtime", "openvino", "--provider", "cuda"),
                "--provider")


def test_issue_command_nat_mini_dynamic_at_batch1(tmp_path):
    """The issue's failing command (`--dynamic` at the default batch 1): written, and the file runs at batch 3."""
    out = _tool("export_onnx.py", "nat_mini", "--dynamic", "--img-size", "64", "--num-classes", "10", "--no-timing",
                "--out", tmp_path / "nat.onnx")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["dynamic"] == "batch" and [1, 3, 64, 64] in res["checked"] and [3, 3, 64, 64] in res["checked"]
    assert dynamic_axes(tmp_path / "nat.onnx") == {0: "batch"}


@pytest.mark.parametrize("name,kwargs", [("nat_mini", dict(depths=(1, 1, 1, 1))),
                                         ("dinat_mini", dict(depths=(1, 1, 2, 1))),
                                         ("biformer_t", dict(depths=(1, 1, 1, 1)))])
def test_na_bra_models_dynamic_height_width(name, kwargs, tmp_path):
    """NAT, DiNAT (a dilated layer in stage 3) and BiFormer with a dynamic batch, height and width (the dynamo
    exporter): checked by the tool at a larger and a smaller size, then right at sizes where NA pads maps smaller
    than its window and BiFormer pads to whole regions (odd sides, 1 x 1 final maps)."""
    pytest.importorskip("onnxscript")
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    path = tmp_path / f"{name}.onnx"
    res = export_onnx(model, path, img_size=96, batch=1, dynamic="all")
    assert set(dynamic_axes(path)) == {0, 2, 3}
    assert res["checked"] == [(1, 3, 96, 96), (3, 3, 96, 96), (2, 3, 128, 160), (2, 3, 32, 64)]
    for shape in ((1, 3, 33, 47), (2, 3, 160, 72), (1, 3, 20, 20)):
        assert _eager_vs_file(model, path, torch.randn(*shape)) <= 1e-4, shape


def test_na_model_dynamic_height_width_torchscript_refused(tmp_path):
    """The TorchScript exporter cannot keep NAT's size arithmetic symbolic: refused (the exporter stops, or the check
    at a second size catches a fixed size), one ExportUnsupported and nothing written (the dynamo exporter is the
    way)."""
    import timm

    model = timm.create_model("nat_mini", num_classes=10, depths=(1, 1, 1, 1)).eval()
    with pytest.raises(ExportUnsupported, match="cannot export NAT with a dynamic hw|does not hold at size"):
        export_onnx(model, tmp_path / "nat.onnx", img_size=64, dynamic="hw", exporter="torchscript", opset=17)
    assert list(tmp_path.iterdir()) == []


def test_cli_zoo_model_dynamic_all_fp16_torchscript_openvino(tmp_path):
    """A zoo model whose size is free (SHViT): dynamic batch, height and width, the graph in fp16, the TorchScript
    exporter, checked and timed in onnxruntime and OpenVINO with the benchmarks' protocol fields."""
    out = _tool("export_onnx.py", "shvit_s1", "--img-size", "64", "--dynamic", "all", "--dtype", "fp16",
                "--exporter", "torchscript", "--runtimes", "onnxruntime,openvino", "--reps", "2", "--warmup", "1",
                "--num-classes", "10", "--out", tmp_path / "s.onnx")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["dtype"] == "fp16" and res["exporter"] == "torchscript" and res["opset"] == 17
    # the example, batch + 2, one stride larger and about half the size
    assert len(res["checked"]) == 4 and all(c[2:] != [64, 64] for c in res["checked"][2:])
    for key in ("onnx", "openvino", "eager"):
        assert 0 < res[f"{key}_p50_ms"] <= res[f"{key}_p90_ms"] <= res[f"{key}_p99_ms"] and res[f"{key}_iters"] == 2
    assert {"protocol", "threads", "cpu_model", "cpu_isa", "torch", "onnxruntime", "openvino",
            "onnx_version"} <= set(res)
    assert set(dynamic_axes(tmp_path / "s.onnx")) == {0, 2, 3}
    assert preprocessing(tmp_path / "s.onnx")["input_size"] == [3, 64, 64]


def test_cli_model_fixed_to_its_size_exit2_nothing_written(tmp_path):
    """SLAB-DeiT is built for one token grid: --dynamic hw is one line, exit 2, and no file."""
    out = _tool("export_onnx.py", "slab_deit_t", "--img-size", "64", "--dynamic", "hw", "--no-timing",
                "--out", tmp_path / "s.onnx")
    _user_error(out, "slab_deit_t", "--dynamic hw")
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize("args,words", [
    (["--dynamic", "rows"], ["--dynamic", "batch"]),
    (["--check-size", "64", "64"], ["--check-size", "hw"]),
    (["--exporter", "torchscript", "--opset", "21"], ["--opset", "14..20"]),
    (["--dtype", "int8"], ["--dtype"]),
    (["--runtimes", "tensorrt"], ["--runtimes"]),
    (["--provider", "cuda", "--runtimes", "onnxruntime,openvino"], ["--provider", "OpenVINO"]),
    (["--provider", "rocm"], ["--provider"]),
], ids=["dynamic", "check-size", "ts-opset", "dtype", "runtimes", "provider-openvino", "provider-bad"])
def test_export_cli_new_user_errors(args, words, tmp_path):
    _user_error(_tool("export_onnx.py", "nat_mini", "--out", tmp_path / "m.onnx", *args), *words)
    assert not (tmp_path / "m.onnx").exists()


def test_export_cli_unavailable_provider(tmp_path):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT provider installed")
    _user_error(_tool("export_onnx.py", "nat_mini", "--provider", "tensorrt", "--out", tmp_path / "m.onnx"),
                "tensorrt", "not available")


def test_bench_openvino_mode_matches_eager():
    """The `openvino` runtime mode of tools/bench (one register call) runs the exported file like eager."""
    sys.path.insert(0, str(REPO))
    from tools.bench.protocol import resolve
    from tools.bench.runtimes import RUNTIMES, Context

    net, x = _net(), torch.randn(3, 3, 32, 32)
    assert RUNTIMES["openvino"].packages == ("onnx", "openvino") and RUNTIMES["openvino"].devices == ("cpu",)
    shared, files = {}, set()
    with contextlib.ExitStack() as row:
        for mode in ("onnx", "openvino"):
            ctx = Context(device=torch.device("cpu"), size=32, protocol=resolve("default"), threads=1, shared=shared,
                          shared_stack=row)
            with ctx.stack:
                got = RUNTIMES[mode].prepare(net, ctx)(x)()
            files.add(shared["onnx_file"])
            with torch.no_grad():
                assert np.abs(np.asarray(got) - net(x).numpy()).max() <= 1e-5, mode
    assert len(files) == 1 and not next(iter(files)).exists()  # one export for both modes, removed with the row
