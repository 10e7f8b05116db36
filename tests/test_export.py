"""ONNX export with onnxruntime parity (its latency: the benchmarks' timer) and the adopted timm families; the zoo
benchmark itself is tested in test_bench.py."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import visionattn
from visionattn.adopted import shvit_checkpoint_filter_fn
from visionattn.export import ONNX_OPSETS, export_onnx, is_own_export, onnx_opset, ort_session, save_onnx
from visionattn.utils import fuse_for_inference, is_reparameterizable

REPO = Path(__file__).resolve().parents[1]

# Smallest variant of each family: the CI export set.
SMALLEST = {
    "biformer": "biformer_t",
    "nat": "nat_mini",
    "dinat": "dinat_mini",
    "agent_attention": "agent_deit_t",
    "slab": "slab_deit_t",
    "gcvit": "gcvit_xxtiny",
    "shvit": "shvit_s1",
    "efficientvim": "efficientvim_m1",
}


def test_every_family_has_a_smallest_variant():
    """Both ways: a new family needs an export case, and a lost registration fails here (never a skip)."""
    models = visionattn.list_models()
    families = {m.family for m in models}
    assert families <= set(SMALLEST), families - set(SMALLEST)
    missing = {fam: name for fam, name in SMALLEST.items() if name not in {str(m) for m in models}}
    assert not missing, f"not registered: {missing}"


# SHViT's smallest variant is exported by the CLI test below; GC ViT, built for one input size by timm,
# is rebuilt for a non-default size to show export works there too.
_CLI_FAMILY = "shvit"
_SIZES = {"gcvit": (256, 320)}


@pytest.mark.parametrize("family", sorted(set(SMALLEST) - {_CLI_FAMILY}))
def test_export_smallest_per_family(family, tmp_path):
    name = SMALLEST[family]
    torch.manual_seed(0)
    size = _SIZES.get(family)
    kwargs = {"img_size": size} if size else {}
    model = timm.create_model(name, num_classes=10, **kwargs)
    res = export_onnx(model, tmp_path / f"{name}.onnx", img_size=size, batch=2, atol=1e-4)
    assert res["max_abs_diff"] <= 1e-4
    assert Path(res["onnx"]).is_file()


@pytest.mark.full
@pytest.mark.parametrize("name", [str(m) for m in visionattn.list_models()])
def test_export_every_variant(name, tmp_path):
    """Within 1e-4 of PyTorch. Where the random-init model amplifies fp32 rounding beyond that (the deep PRepBN
    models evaluated with untrained BN statistics: pvt_m_prepbn, slab_swin_s/b, slab_cswin_s, whose PyTorch fp32
    logits are 6e-3 ... 5e2 off their own fp64 result), onnxruntime must be as close to the fp64 logits as
    PyTorch's fp32 run is."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    if is_reparameterizable(model):
        model = fuse_for_inference(model)
    res = export_onnx(model, tmp_path / f"{name}.onnx", fuse=False, check=False)
    if res["max_abs_diff"] <= 1e-4:
        return
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn(1, *size)
    with torch.no_grad():
        want = model.double()(x.double())
        torch_err = (model.float()(x).double() - want).abs().max().item()
    sess = ort_session(res["onnx"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]).double()
    ort_err = (got - want).abs().max().item()
    assert ort_err <= 2 * torch_err + 1e-4, (res["max_abs_diff"], ort_err, torch_err)


def test_export_cli_last_line_is_json(tmp_path):
    """The CLI with the optional onnxslim pass; the slimmed graph still matches PyTorch; latency of both runtimes
    as p50 / p90 / p99 with what it was measured on."""
    out = subprocess.run(
        [sys.executable, str(REPO / "tools/export_onnx.py"), SMALLEST[_CLI_FAMILY], "--img-size", "160", "--reps", "2",
         "--out", str(tmp_path / "m.onnx"), "--num-classes", "7", "--slim"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"model", "onnx", "max_abs_diff", "opset", "batch", "warmup", "reps", "threads", "cpu_model", "cpu_isa",
            "na_cpu_isa", "torch", "onnxruntime"} <= set(res)
    for rt in ("onnx", "eager"):
        assert 0 < res[f"{rt}_p50_ms"] <= res[f"{rt}_p90_ms"] <= res[f"{rt}_p99_ms"] and res[f"{rt}_iters"] == 2
    assert res["model"] == "shvit_s1" and res["max_abs_diff"] <= 1e-4 and res["opset"] == 20


def test_export_cli_unknown_model():
    out = subprocess.run([sys.executable, str(REPO / "tools/export_onnx.py"), "no_such_model"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and "unknown model" in out.stderr and "Traceback" not in out.stderr


def _tool(name, *args, timeout=600):
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


def _assert_user_error(out, *words):
    """Exit 2 and exactly one line on stderr (no traceback), containing `words`."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, (out.returncode, out.stderr[-2000:])
    for word in words:
        assert word in lines[0], lines[0]


def _tiny_net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()


@pytest.mark.parametrize("opset", [ONNX_OPSETS[0], 21])
def test_export_writes_the_requested_opset(opset, tmp_path):
    res = export_onnx(_tiny_net(), tmp_path / "m.onnx", img_size=32, opset=opset)
    assert res["opset"] == opset == onnx_opset(tmp_path / "m.onnx")


@pytest.mark.parametrize("kwargs", [dict(opset=5), dict(opset=17), dict(opset=99), dict(batch=0), dict(img_size=0),
                                    dict(img_size=(-32, 32)), dict(img_size=(40, 50, 60))])
def test_export_rejects_bad_arguments(kwargs, tmp_path):
    """Issue 15 item 7: an opset the dynamo exporter does not write is refused, not reported as written."""
    with pytest.raises(ValueError, match=next(iter(kwargs)).split("_")[0]):
        export_onnx(_tiny_net(), tmp_path / "m.onnx", **{"img_size": 32, **kwargs})
    assert not (tmp_path / "m.onnx").exists()


def test_own_exports_are_marked(tmp_path):
    save_onnx(_tiny_net(), torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    (tmp_path / "photo.onnx").write_bytes(b"not an onnx file")
    assert is_own_export(tmp_path / "m.onnx") and not is_own_export(tmp_path / "photo.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "photo.onnx"]  # no temporary file left


@pytest.mark.parametrize("args,words", [
    (["--opset", "5"], ["--opset", "18..25", "dynamo"]),
    (["--img-size", "0"], ["--img-size"]),
    (["--img-size", "-32"], ["--img-size"]),
    (["--img-size", "40", "50", "60"], ["--img-size", "H W"]),
    (["--batch", "0"], ["--batch"]),
    (["--reps", "0"], ["--reps"]),
    (["--out", "{tmp}"], ["--out", "directory"]),
    (["--out", "{tmp}/photo.onnx"], ["--out", "--overwrite"]),
], ids=["opset5", "img0", "img-32", "img3values", "batch0", "reps0", "out-dir", "out-foreign-file"])
def test_export_cli_user_errors(args, words, tmp_path):
    """Issue 15 items 7 and 10: one line on stderr, exit 2; a file the tool did not write is left untouched."""
    foreign = tmp_path / "photo.onnx"
    foreign.write_bytes(b"someone else's file")
    out = _tool("export_onnx.py", "nat_mini", "--reps", "1", *(a.format(tmp=tmp_path) for a in args))
    _assert_user_error(out, *words)
    assert foreign.read_bytes() == b"someone else's file"


def test_reparameterizable_models_are_fused(tmp_path):
    model = timm.create_model("efficientvim_m1", num_classes=4).eval()
    assert is_reparameterizable(model)
    fused = fuse_for_inference(model)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())


def _timm_to_official_shvit(key):
    """Inverse of the official -> timm rename, so the test does not depend on any download."""
    m = re.match(r"stages\.0\.blocks\.(\d+)\.(.*)", key)
    if m:
        return f"blocks1.{m[1]}.{m[2]}"
    m = re.match(r"stages\.([12])\.downsample\.(\d)\.(.*)", key)
    if m:
        k, i, rest = int(m[1]) + 1, int(m[2]), m[3]
        return {0: f"blocks{k}.0.0.", 1: f"blocks{k}.0.1.", 2: f"blocks{k}.1.", 3: f"blocks{k}.2.0.",
                4: f"blocks{k}.2.1."}[i] + rest
    m = re.match(r"stages\.([12])\.blocks\.(\d+)\.(.*)", key)
    if m:
        return f"blocks{int(m[1]) + 1}.{int(m[2]) + 3}.{m[3]}"
    return key


@pytest.mark.parametrize("name", ["shvit_s1", "shvit_s4"])
def test_shvit_official_checkpoint_loads(name, tmp_path):
    torch.manual_seed(0)
    src = timm.create_model(name).eval()
    for p in src.parameters():
        p.data.normal_(0, 0.02)
    official = {"model": {_timm_to_official_shvit(k): v for k, v in src.state_dict().items()}, "epoch": 299}
    assert not any(k.startswith("stages.") for k in official["model"])
    path = tmp_path / f"{name}.pth"
    torch.save(official, path)
    dst = visionattn.load_official(timm.create_model(name).eval(), path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    # the official builder's arguments give the same model
    kwargs = dict(embed_dim=[128, 224, 320], partial_dim=[32, 48, 68], qk_dim=[16, 16, 16], depth=[2, 4, 5],
                  types=["i", "s", "s"], down_ops=[["subsample", 2], ["subsample", 2], [""]])
    if name == "shvit_s1":
        m = visionattn.from_official("shvit", "model/shvit.py:SHViT", kwargs, official["model"]).eval()
        with torch.no_grad():
            assert torch.equal(m(x), src(x))


def test_shvit_filter_matches_official_key_dump():
    dump = REPO.parent / "shared" / "specs" / "shvit_keys.txt"
    if not dump.is_file():
        pytest.skip("official SHViT key dump not available")
    body = dump.read_text().split("=== official")[1]
    body = body[body.index("\n") + 1:].split("===")[0]
    keys = [line.split("\t")[0] for line in body.strip().splitlines() if "\t" in line]
    mapped = shvit_checkpoint_filter_fn({k: torch.zeros(1) for k in keys})
    assert set(mapped) == set(timm.create_model("shvit_s1").state_dict())
