"""Dense-backbone parity fixtures from the official downstream code (issue 24).

    python tools/make_dense_fixtures.py --cache .cache/official-dense          # every case
    python tools/make_dense_fixtures.py --cases agent_swin gcvit --out tests/fixtures/dense

Each case runs, in a worker process of its own, the official detection / segmentation backbone file of a family
*unmodified*, imported from a checkout under --cache (`<owner>+<name>/`, with a COMMIT file or a .git naming the
commit: e.g. `git --git-dir MIRROR archive HEAD | tar -x -C .cache/official-dense/<owner>+<name>`). What those
files import from mmcv 1.x / mmdet 2.x / mmseg 0.x (a registry decorator, a logger, a checkpoint loader) is
installed as small modules in that worker's `sys.modules` (`install_mm_shims`; the mmcv checkpoint loader is
mmcv's rule: a weights-only read, then a non-strict load_state_dict); NAT / DiNAT run on
`visionattn.compat.natten_legacy` (their NATTEN 0.14 - 0.17 cannot be installed on current torch).

Per case: the official constructor with a small configuration, seed, weights perturbed deterministically (norm
weights 1 + 0.1 N, biases 0.05 N, matrices + N / sqrt(fan_in), tables and embeddings + 0.2 N, BN statistics
moved), then eval-mode outputs at several input sizes: non-square multiples of 32, an image zero-padded to 32
as mmdet's preprocessor pads it, and an unpadded odd size as mmseg's whole-image inference feeds it. Written to
`--out/<family>/<case>.safetensors` (`state_dict.<official key>`, `input.<k>`, `features.<k>.<i>`) and
`<case>.json` (repository, commit, file, builder, exact kwargs, the inputs, tolerance, how it was made). A case
`*_from_cls` stores an official *classification* checkpoint instead and builds the dense backbone from it
through the official constructor's `pretrained` path (its own key handling and table resizing).
User errors: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import subprocess
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

_AGENT = "LeapLabTHU+Agent-Attention"
_NAT = "SHI-Labs+Neighborhood-Attention-Transformer"
_SIZES = [dict(hw=(128, 192)), dict(hw=(256, 352)), dict(hw=(100, 150), pad_to=32), dict(hw=(111, 145))]
_INPUT_SEED = 2024

# name -> case. `packages`: module name -> folder (in the checkout) imported as a package without running its
# __init__ (so relative imports inside the official files resolve); `path`: folders put on sys.path.
CASES: dict[str, dict] = {
    "agent_swin": dict(
        family="agent_attention", repo=_AGENT, file="downstream/detection/mmdet/models/backbones/agent_swin.py",
        packages={"mmdet.models.backbones": "downstream/detection/mmdet/models/backbones"},
        module="mmdet.models.backbones.agent_swin", builder="AgentSwinTransformer", ours="AgentSwinDense",
        kwargs=dict(img_size=224, patch_size=4, in_chans=3, num_classes=80, embed_dim=8, depths=[1, 1, 2, 2],
                    num_heads=[1, 2, 4, 8], window_size=56, mlp_ratio=2, out_indices=[0, 1, 2, 3], qkv_bias=True,
                    qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, ape=False,
                    patch_norm=True, use_checkpoint=False, agent_num=[9, 16, 49, 49],
                    downstream_agent_shapes=[[9, 9], [12, 12], [14, 14], [7, 7]], kernel_size=3,
                    attn_type="AAAB", scale=-0.5),
        modelled_on="agent_swin_t (Mask R-CNN 1x/3x configs: agent shapes 9-12-14-7, attn_type AAAB)"),
    "agent_swin_mixed": dict(
        family="agent_attention", repo=_AGENT, file="downstream/detection/mmdet/models/backbones/agent_swin.py",
        packages={"mmdet.models.backbones": "downstream/detection/mmdet/models/backbones"},
        module="mmdet.models.backbones.agent_swin", builder="AgentSwinTransformer", ours="AgentSwinDense",
        kwargs=dict(img_size=224, embed_dim=8, depths=[1, 1, 3, 2], num_heads=[1, 2, 4, 8], window_size=56,
                    mlp_ratio=2, out_indices=[1, 2, 3], qkv_bias=True, drop_path_rate=0.0,
                    agent_num=[9, 16, 49, 49], downstream_agent_shapes=[[9, 9], [12, 12], [14, 14], [7, 7]],
                    attn_type="AAMB1"),
        modelled_on="agent_swin_b (attn_type AAMB2: agent then window blocks in stage 3; out_indices 1-3)"),
    "agent_pvt": dict(
        family="agent_attention", repo=_AGENT, file="downstream/detection/mmdet/models/backbones/agent_pvt.py",
        packages={"mmdet.models.backbones": "downstream/detection/mmdet/models/backbones"},
        module="mmdet.models.backbones.agent_pvt", builder="AgentPVT", ours="AgentPVTDense",
        kwargs=dict(img_size=224, patch_size=4, in_chans=3, num_classes=80, embed_dims=[8, 16, 32, 48],
                    num_heads=[1, 2, 4, 6], mlp_ratios=[4, 4, 2, 2], qkv_bias=True, qk_scale=None, drop_rate=0.0,
                    attn_drop_rate=0.0, drop_path_rate=0.0, depths=[1, 2, 1, 1], sr_ratios=[8, 4, 2, 1],
                    agent_sr_ratios="1111", num_stages=4, agent_num=[9, 16, 49, 49],
                    downstream_agent_shapes=[[12, 12], [16, 16], [28, 28], [28, 28]], kernel_size=3,
                    attn_type="AAAA", scale=-0.5),
        modelled_on="agent_pvt_t (Mask R-CNN / RetinaNet 1x configs: agent shapes 12-16-28-28)"),
    "gcvit": dict(
        family="gcvit", repo="NVlabs+GCVit", file="detection/models/gc_vit.py", path=["detection"],
        module="models.gc_vit", builder="GCViT", ours="GCViTDense",
        kwargs=dict(dim=8, depths=[2, 2, 2, 2], mlp_ratio=2.0, num_heads=[1, 2, 4, 8], drop_path_rate=0.0,
                    out_indices=[0, 1, 2, 3], qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                    frozen_stages=-1),
        modelled_on="gcvit_tiny (Mask R-CNN / Cascade 3x: window 24, window_size_pre 7-7-14-7)"),
    "gcvit_ls_from_cls": dict(
        family="gcvit", repo="NVlabs+GCVit", file="detection/models/gc_vit.py", path=["detection"],
        module="models.gc_vit", builder="GCViT", ours="GCViTDense",
        cls=dict(file="models/gc_vit.py", module="gc_vit_cls", builder="GCViT",
                 kwargs=dict(dim=8, depths=[2, 2, 2, 2], mlp_ratio=2.0, num_heads=[1, 2, 4, 8],
                             window_size=[7, 7, 14, 7], resolution=224, drop_path_rate=0.0, layer_scale=1e-5,
                             num_classes=10)),
        kwargs=dict(dim=8, depths=[2, 2, 2, 2], mlp_ratio=2.0, num_heads=[1, 2, 4, 8], drop_path_rate=0.0,
                    layer_scale=1e-5, out_indices=[0, 1, 2, 3]),
        modelled_on="gcvit_small / base (layer scale) built from an official classification checkpoint"),
    "slab_swin": dict(
        family="slab", repo="xinghaochen+SLAB", file="detection/mmdet_custom/swin_transformer_slab.py",
        packages={"mmdet_custom": "detection/mmdet_custom"}, module="mmdet_custom.swin_transformer_slab",
        builder="SwinTransformer_SLAB", ours="SLABSwinDense", dtype="float32",  # official SLA casts to fp32
        kwargs=dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7, ape=False,
                    drop_path_rate=0.0, patch_norm=True, use_checkpoint=False, out_indices=[0, 1, 2, 3]),
        modelled_on="slab_swin_t (Mask R-CNN 1x: SLA windows 56/28, softmax window 7, LLSS)"),
    "swin_prepbn": dict(
        family="slab", repo="xinghaochen+SLAB", file="detection/mmdet_custom/swin_transformer_prepbn.py",
        packages={"mmdet_custom": "detection/mmdet_custom"}, module="mmdet_custom.swin_transformer_prepbn",
        builder="SwinTransformer_PRepBN", ours="SLABSwinDense", ours_kwargs=dict(attn_type="SSSS"),
        kwargs=dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7, ape=False,
                    drop_path_rate=0.0, patch_norm=True, out_indices=[0, 1, 2, 3]),
        modelled_on="swin_t_prepbn (Mask R-CNN 1x / 3x)"),
    "nat": dict(
        family="nat", repo=_NAT, file="detection/nat.py", path=["detection"], module="nat", builder="NAT",
        ours="NATDense", natten=True, dtype="float32",
        kwargs=dict(embed_dim=8, mlp_ratio=2.0, depths=[1, 2, 2, 1], num_heads=[1, 2, 4, 8], drop_path_rate=0.0,
                    kernel_size=7, layer_scale=None),
        modelled_on="nat_mini / nat_tiny (Mask R-CNN / Cascade 3x, UPerNet 160k)"),
    "dinat": dict(
        family="dinat", repo=_NAT, file="detection/dinat.py", path=["detection"], module="dinat", builder="DiNAT",
        ours="NATDense", natten=True, dtype="float32",
        kwargs=dict(embed_dim=8, mlp_ratio=2.0, depths=[2, 2, 2, 1], num_heads=[1, 2, 4, 8], drop_path_rate=0.0,
                    kernel_size=7, dilations=[[1, 16], [1, 8], [1, 4], [1]], layer_scale=1e-5),
        modelled_on="dinat_tiny dense (dilations 1-16 / 1-8 / 1-4 / 1-2, larger than the classification ones)"),
    "dinat_s": dict(
        family="dinat", repo=_NAT, file="detection/dinats.py", path=["detection"], module="dinats",
        builder="DiNAT_s", ours="DiNATsDense", natten=True, dtype="float32",
        kwargs=dict(embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], kernel_size=7, mlp_ratio=2.0,
                    dilations=[[1, 16], [1, 8], [1, 4], [1, 2]], drop_path_rate=0.0),
        modelled_on="dinat_s_tiny dense"),
    "biformer_mm": dict(
        family="biformer", repo="rayleizhu+BiFormer", file="object_detection/models_mm/biformer_mm.py",
        path=[".", "object_detection"], packages={"models_mm": "object_detection/models_mm"},
        module="models_mm.biformer_mm", builder="BiFormer_mm", ours="BiFormerDense",
        kwargs=dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 48, 64], mlp_ratios=[3, 3, 3, 3], n_win=7,
                    kv_downsample_mode="identity", kv_per_wins=[-1, -1, -1, -1], topks=[1, 4, 16, -2],
                    side_dwconv=5, before_attn_dwconv=3, layer_scale_init_value=-1, qk_dims=[16, 32, 48, 64],
                    head_dim=16, param_routing=False, diff_routing=False, soft_routing=False, pre_norm=True,
                    pe=None, auto_pad=True, drop_path_rate=0.0, norm_eval=True),
        modelled_on="biformer_s (Mask R-CNN / RetinaNet 1x, UPerNet / Semantic FPN; auto_pad)"),
}


# ------------------------------------------------------------------------------------------------ worker side


def _module(name: str, package_path: str | None = None, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__file__ = f"<shim for {name} (tools/make_dense_fixtures.py)>"
    if package_path is not None:
        mod.__path__ = [package_path]
    sys.modules[name] = mod
    return mod


class _Registry:
    """mmcv 1.x `Registry.register_module` as a decorator (with or without a call); records the classes."""

    def __init__(self):
        self.module_dict = {}

    def register_module(self, *args, **kwargs):
        if args and isinstance(args[0], type):
            self.module_dict[args[0].__name__] = args[0]
            return args[0]

        def deco(cls):
            self.module_dict[cls.__name__] = cls
            return cls
        return deco


def _mmcv_load_checkpoint(model, filename, map_location="cpu", strict=False, logger=None, **kwargs):
    """mmcv 1.x `load_checkpoint`: read the file (weights only here), take `state_dict` / `model`, strip
    `module.`, load non-strictly -- where mmcv's own `load_state_dict` only warns about a tensor of another
    shape and leaves the module's."""
    import torch

    ckpt = torch.load(filename, map_location=map_location, weights_only=True)
    sd = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else ckpt
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    own = model.state_dict()
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing, unexpected = model.load_state_dict({k: v for k, v in sd.items() if k not in skipped}, strict=strict)
    logging.getLogger("fixtures").info("missing %s unexpected %s size mismatch %s", missing, unexpected, skipped)
    return ckpt


def install_mm_shims() -> list[str]:
    """mmcv 1.x / mmdet 2.x / mmseg 0.x / mmcv_custom names the official backbone files import."""
    registry = _Registry()
    logger = lambda *a, **k: logging.getLogger("official")  # noqa: E731
    runner = _module("mmcv.runner", load_checkpoint=_mmcv_load_checkpoint,
                     _load_checkpoint=lambda f, **k: __import__("torch").load(f, map_location="cpu",
                                                                               weights_only=True))
    _module("mmcv", runner=runner)
    _module("mmcv_custom", load_checkpoint=_mmcv_load_checkpoint)
    for scope in ("mmdet", "mmseg"):
        _module(scope, package_path="")
        models = _module(f"{scope}.models", package_path="")
        models.builder = _module(f"{scope}.models.builder", BACKBONES=registry)
        _module(f"{scope}.utils", get_root_logger=logger)
    return ["mmcv", "mmcv.runner", "mmcv_custom", "mmdet(.models.builder, .utils)", "mmseg(.models.builder, .utils)"]


def _perturb(model, seed: int) -> None:
    """Every floating-point entry, in state-dict order, moved by one N(0, 1) draw (see the module docstring)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            if not v.is_floating_point():
                continue
            n = torch.randn(v.shape, generator=g)
            leaf = k.rsplit(".", 1)[-1]
            if leaf == "running_var":
                v.copy_(1 + 0.2 * n.abs())
            elif leaf == "running_mean":
                v.copy_(0.1 * n)
            elif leaf in ("weight", "alpha") and v.ndim == 1:
                v.copy_(1 + 0.1 * n)
            elif leaf.startswith("gamma") and v.ndim == 1:
                v.copy_(0.5 + 0.1 * n)
            elif leaf == "bias":
                v.add_(0.05 * n)
            elif leaf == "weight":
                v.add_(n / math.sqrt(v[0].numel()))
            else:  # bias tables, agent biases, position embeddings / encodings
                v.add_(0.2 * n)


def _import(case: dict, root: Path):
    for p in reversed(case.get("path", [])):
        sys.path.insert(0, str(root / p))
    for name, folder in case.get("packages", {}).items():
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent not in sys.modules:
                _module(parent, package_path="")
        _module(name, package_path=str(root / folder))
    return importlib.import_module(case["module"])


def make_inputs(out: Path) -> dict:
    """The inputs every case runs (`out/inputs.safetensors`, written once)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    path = out / "inputs.safetensors"
    if path.is_file():
        return load_file(str(path))
    g = torch.Generator().manual_seed(_INPUT_SEED)
    tensors = {}
    for i, size in enumerate(_SIZES):
        h, w = size["hw"]
        x = torch.randn(1, 3, h, w, generator=g)
        if size.get("pad_to"):
            m = size["pad_to"]
            x = F.pad(x, (0, -w % m, 0, -h % m))
        tensors[f"input.{i}"] = x
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"sizes": json.dumps(_SIZES), "seed": str(_INPUT_SEED)})
    return tensors


def run_worker(case_name: str, cache: Path, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(HERE))
    from bench.official import install_shims  # torch._six, fairscale, timm 0.4 names

    case = CASES[case_name]
    root = cache / case["repo"]
    shims = install_mm_shims() + install_shims()
    runs_on = None
    if case.get("natten"):
        import visionattn.compat as compat

        compat.install_natten_legacy()
        runs_on = "visionattn.compat.natten_legacy (NATTEN 0.17 API with 0.14/0.15 small-map padding)"
    torch.set_num_threads(min(2, torch.get_num_threads()))
    module = _import(case, root)
    builder = getattr(module, case["builder"])
    seed = sum(map(ord, case_name)) * 7
    kwargs = {k: ([tuple(s) for s in v] if k == "downstream_agent_shapes" else v)
              for k, v in case["kwargs"].items()}
    if "cls" in case:  # an official classification checkpoint, loaded by the official dense constructor
        spec = importlib.util.spec_from_file_location(case["cls"]["module"], root / case["cls"]["file"])
        cls_mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = cls_mod
        spec.loader.exec_module(cls_mod)
        torch.manual_seed(seed)
        cls_model = getattr(cls_mod, case["cls"]["builder"])(**case["cls"]["kwargs"])
        _perturb(cls_model, seed + 1)
        stored = {k: v.clone() for k, v in cls_model.state_dict().items()}
        ckpt = out / f".{case_name}.cls.pth"
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": stored}, ckpt)
        torch.manual_seed(seed)
        try:
            model = builder(**kwargs, pretrained=str(ckpt))
        finally:
            ckpt.unlink()
    else:
        torch.manual_seed(seed)
        model = builder(**kwargs)
        _perturb(model, seed + 1)
        stored = {k: v.clone() for k, v in model.state_dict().items()}
    # float64: these small random models amplify float32 rounding strongly (sharp attention); in float64 the
    # stored (float32) outputs are the official function to ~1e-7, whatever the summation order
    dtype = getattr(torch, case.get("dtype", "float64"))
    model.to(dtype).eval()
    # index buffers the constructors rebuild are not stored (GC ViT's are 576^2 int64 each)
    stored = {k: v for k, v in stored.items() if not k.endswith("relative_position_index")}
    tensors = {f"state_dict.{k}": v.contiguous() for k, v in stored.items()}
    shared = make_inputs(out)
    inputs = []
    n_out = None
    for i, size in enumerate(_SIZES):
        h, w = size["hw"]
        x = shared[f"input.{i}"]
        with torch.no_grad():
            ys = [y.float() for y in model(x.to(dtype))]
        n_out = len(ys)
        for j, y in enumerate(ys):
            tensors[f"features.{i}.{j}"] = y.contiguous()
        inputs.append(dict(key=f"inputs.safetensors:input.{i}", shape=list(x.shape), image_hw=[h, w],
                           padded_to=size.get("pad_to"), outputs=[list(y.shape) for y in ys]))
    commit_file = root / "COMMIT"
    commit = commit_file.read_text().strip() if commit_file.is_file() else subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    owner, name = case["repo"].split("+", 1)
    meta = dict(
        family=case["family"], case=case_name, official_repo=f"https://github.com/{owner}/{name}",
        official_commit=commit, official_file=case["file"], official_builder=f"{case['file']}:{case['builder']}",
        official_kwargs=case["kwargs"], modelled_on=case["modelled_on"], ours=case["ours"],
        ours_kwargs=case.get("ours_kwargs", {}), seed=seed, mode="eval", dtype=case.get("dtype", "float64"),
        tolerance=1e-4, inputs=inputs,
        outputs_per_input=n_out, state_dict_order=list(stored), shims=shims, official_runs_on=runs_on,
        from_classification_checkpoint=case.get("cls"),
        notes=("Official file imported unmodified from the checkout; mmcv/mmdet/mmseg names shimmed in the worker "
               "only. Weights: torch.manual_seed(seed), the official constructor, then every float state-dict "
               "entry perturbed in state-dict order with Generator(seed + 1) (tools/make_dense_fixtures.py "
               "_perturb). Inputs: the shared inputs.safetensors beside the family folders (randn, Generator("
               f"{_INPUT_SEED}), one per size; `padded_to`: zero-padded right/bottom to that multiple as mmdet's "
               "preprocessor pads, before the backbone). CPU, eval, no_grad. features.<input>.<output> "
               "are the backbone's returned NCHW maps in order, computed in `dtype` (float64 unless the official "
               "code casts inside; model and input cast), stored as float32; compare in `dtype`. "
               "relative_position_index buffers are not stored (rebuilt by every constructor)."),
    )
    target = out / case["family"]
    target.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target / f"{case_name}.safetensors"),
              metadata={"state_dict_order": json.dumps(list(stored))})
    (target / f"{case_name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return dict(case=case_name, file=str(target / f"{case_name}.safetensors"),
                size_kb=round((target / f"{case_name}.safetensors").stat().st_size / 1024))


# ------------------------------------------------------------------------------------------------ parent side


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=str(REPO / ".cache" / "official-dense"),
                   help="folder of official checkouts named <owner>+<name>")
    p.add_argument("--out", default=str(REPO / "tests" / "fixtures" / "dense"))
    p.add_argument("--cases", nargs="+", default=list(CASES), metavar="CASE", help=f"of {list(CASES)}")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cache, out = Path(args.cache), Path(args.out)
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args.worker, cache, out)), flush=True)
        return 0
    bad = [c for c in args.cases if c not in CASES]
    if bad:
        print(f"make_dense_fixtures.py: error: unknown case {bad[0]!r} (choose from {list(CASES)})", file=sys.stderr)
        return 2
    missing = sorted({CASES[c]["repo"] for c in args.cases if not (cache / CASES[c]["repo"]).is_dir()})
    if missing:
        print(f"make_dense_fixtures.py: error: no official checkout {cache / missing[0]} (see --help)",
              file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"make_dense_fixtures.py: error: --out {out} is not a folder", file=sys.stderr)
        return 2
    make_inputs(out)
    failed = 0
    for c in args.cases:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        res = subprocess.run([sys.executable, __file__, "--cache", str(cache), "--out", str(out), "--worker", c],
                             capture_output=True, text=True, env=env)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if res.returncode or line is None:
            failed += 1
            print(f"{c}: FAILED\n{res.stderr[-3000:]}")
        else:
            print(f"{c}: {json.loads(line[7:])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
