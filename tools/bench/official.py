"""Our models against the official implementations, in one process, same weights (issue 19).

The official code is a cached checkout (tools/fetch_official.py) imported unmodified: its root folder is put on
PYTHONPATH by the parent process for the worker process of one model (the repositories' top-level names,
`models`, `nat`, clash with each other), and what the official files import that no longer exists on current
torch / timm is shimmed in `sys.modules` of that worker only (`install_shims`). Ours is built by
`visionattn.from_official` from the official constructor's keyword arguments and loads the official model's
state dict through the family's checkpoint filter, so both compute the same function from the same weights.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# our name -> (family, manifest): the official builder and its kwargs come from the fixtures' manifests
MODELS = {
    "biformer_s": ("biformer", "biformer_s"),
    "biformer_t": ("biformer", "biformer_t"),
    "agent_swin_t": ("agent_attention", "agent_swin_t"),
    "agent_pvt_t": ("agent_attention", "agent_pvt_t"),
    "agent_deit_t": ("agent_attention", "agent_deit_t"),
    "slab_deit_t": ("slab", "slab_deit_t"),
    "slab_swin_t": ("slab", "slab_swin_t"),
    "nat_mini": ("nat", "nat_mini"),
    "dinat_mini": ("dinat", "dinat_mini"),
    "nat_tiny": ("nat", "nat_tiny"),
    "dinat_tiny": ("dinat", "dinat_tiny"),
}
DEFAULT_MODELS = ("biformer_s", "biformer_t", "agent_swin_t", "agent_pvt_t", "slab_deit_t", "slab_swin_t",
                  "nat_mini", "dinat_mini")
# the folder of each official repository its files import from (their imports are relative to it)
IMPORT_ROOTS = {
    "rayleizhu/BiFormer": ".",
    "LeapLabTHU/Agent-Attention": "agent_transformer",
    "xinghaochen/SLAB": "classification",
    "SHI-Labs/Neighborhood-Attention-Transformer": "classification",
}
NATTEN_FAMILIES = ("nat", "dinat")


def parity_dir() -> Path:
    return Path(os.environ.get("VISIONATTN_PARITY_DIR", REPO.parent / "shared" / "parity"))


def pins(root: Path, families) -> dict[str, str]:
    """{"owner/name": commit} of the official code behind the families' fixtures (NATTEN's own cases excluded)."""
    out = {}
    for family in families:
        for path in sorted((root / family).glob("*.json")) + sorted((root / family / "manifests").glob("*.json")):
            meta = json.loads(path.read_text())
            url, commit = meta.get("official_repo"), meta.get("official_commit")
            if not url or not commit or url.rstrip("/").endswith("/NATTEN"):
                continue
            slug = "/".join(url.rstrip("/").removesuffix(".git").split("/")[-2:])
            if out.setdefault(slug, commit) != commit:
                raise ValueError(f"fixtures pin {slug} at two commits: {out[slug]} and {commit} ({path})")
    return out


def model_spec(name: str, root: Path | None = None) -> dict:
    """family, builder, kwargs (plain JSON), repo slug, commit and import root of one model."""
    root = root or parity_dir()
    family, manifest = MODELS[name]
    meta = json.loads((root / family / "manifests" / f"{manifest}.json").read_text())
    kwargs = meta["official_kwargs"]
    if any(isinstance(v, str) and ("(" in v or v.startswith("default")) for v in kwargs.values()):
        raise ValueError(f"{name}: the manifest's kwargs describe Python objects; decode them first")
    (slug, commit), = pins(root, [family]).items()
    return dict(model=name, family=family, builder=meta["official_builder"], kwargs=kwargs, repo=slug,
                commit=commit, import_root=IMPORT_ROOTS[slug])


# ------------------------------------------------------------------------------------------------ worker side


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__file__ = f"<shim for {name} (tools/bench/official.py)>"
    return mod


def install_shims() -> list[str]:
    """sys.modules entries for what the official files import and current torch / timm / the environment lack.

    Only modules that fail to import are shimmed; each shim offers just what those files use, and a use that
    would change the computation (fairscale's activation checkpointing) raises instead. Returns the names.
    """
    shimmed = []

    def missing(name):
        try:
            importlib.import_module(name)
            return False
        except ImportError:
            return True

    if missing("torch._six"):
        import collections.abc

        sys.modules["torch._six"] = _module("torch._six", inf=math.inf, string_classes=(str, bytes),
                                            container_abcs=collections.abc, int_classes=int)
        shimmed.append("torch._six")
    if missing("fairscale"):
        def checkpoint_wrapper(module, *args, **kwargs):
            raise NotImplementedError("fairscale is not installed; the benchmark runs without activation "
                                      "checkpointing (use_checkpoint_stages must stay empty)")

        ckpt = _module("fairscale.nn.checkpoint", checkpoint_wrapper=checkpoint_wrapper)
        nn = _module("fairscale.nn", checkpoint=ckpt, checkpoint_wrapper=checkpoint_wrapper)
        sys.modules.update({"fairscale": _module("fairscale", nn=nn), "fairscale.nn": nn,
                            "fairscale.nn.checkpoint": ckpt})
        shimmed.append("fairscale.nn.checkpoint")
    for old, new in (("timm.models.layers", "timm.layers"), ("timm.models.registry", "timm.models"),
                     ("timm.models.helpers", "timm.models")):
        if missing(old):
            sys.modules[old] = importlib.import_module(new)
            shimmed.append(f"{old} -> {new}")
    # timm >= 0.9 turns a module's `default_cfgs` entry into a PretrainedCfg and rejects timm 0.4's keys
    # (`hf_hub`): the official files register through timm.models.registry, which gets a tolerant wrapper. It
    # also leaves a name timm already knows (ours: nat_mini, ...) to its owner; the benchmark calls the
    # official builder function directly, never through timm's registry.
    import dataclasses

    from timm.models import PretrainedCfg, is_model
    from timm.models import register_model as timm_register_model

    fields = {f.name for f in dataclasses.fields(PretrainedCfg)}

    def register_model(fn):
        if is_model(fn.__name__):
            return fn
        cfgs = getattr(sys.modules.get(fn.__module__), "default_cfgs", None)
        cfg = cfgs.get(fn.__name__) if isinstance(cfgs, dict) else None
        if isinstance(cfg, dict) and not set(cfg) <= fields:
            cfg = dict(cfg)
            if "hf_hub" in cfg:
                cfg.setdefault("hf_hub_id", cfg.pop("hf_hub"))
            cfgs[fn.__name__] = {k: v for k, v in cfg.items() if k in fields}
        return timm_register_model(fn)

    # timm 0.4's build_model_with_cfg took `default_cfg` (and `pretrained_custom_load`) and built
    # `model_cls(**kwargs)`; timm 1.0's passes unknown keywords on to the model class, which refuses them (the
    # official agent_deit_* builders). The benchmark never loads pretrained weights, so the 0.4 behaviour is just
    # that: build, then attach the cfg.
    def build_model_with_cfg(model_cls, variant, pretrained, default_cfg=None, feature_cfg=None,
                             pretrained_strict=True, pretrained_filter_fn=None, pretrained_custom_load=False,
                             **kwargs):
        if pretrained:
            raise NotImplementedError(f"{variant}: the benchmark builds official models without pretrained weights")
        if kwargs.pop("features_only", False) or kwargs.pop("pruned", False):
            raise NotImplementedError(f"{variant}: features_only / pruned are not shimmed")
        model = model_cls(**kwargs)
        model.default_cfg = dict(default_cfg or {})
        return model

    helpers = _module("timm.models.helpers", build_model_with_cfg=build_model_with_cfg)
    helpers.__dict__.update({k: v for k, v in vars(importlib.import_module("timm.models")).items()
                             if not k.startswith("_") and k != "build_model_with_cfg"})
    sys.modules["timm.models.helpers"] = helpers
    shimmed.append("timm.models.helpers.build_model_with_cfg (timm 0.4 default_cfg keyword)")

    legacy = _module("timm.models.registry", register_model=register_model)
    legacy.__dict__.update({k: v for k, v in vars(importlib.import_module("timm.models")).items()
                            if k in ("is_model", "list_models", "model_entrypoint", "get_pretrained_cfg")})
    sys.modules["timm.models.registry"] = legacy
    shimmed.append("timm.models.registry.register_model (timm 0.4 default_cfgs keys)")
    return shimmed


def load_official(spec: dict):
    """The official builder (class or registered function), imported from the checkout on PYTHONPATH."""
    file, name = spec["builder"].split(":")
    rel = Path(file) if spec["import_root"] == "." else Path(file).relative_to(spec["import_root"])
    return getattr(importlib.import_module(".".join(rel.with_suffix("").parts)), name)


def compare_timing(ours, official, x, warmup: int, reps: int, timer: str = "wall") -> dict:
    """Alternating calls (the order flips every pair) after `warmup` pairs: p50 / p90 / p99 / mean ms of each side
    (`ours_*`, `official_*`), `ratio` of the p50 times and the quartiles of the per-pair ratios.

    `timer="cpu"`: process CPU time, steadier than wall time on a shared machine (with one thread)."""
    import torch

    from .timing import clock, percentile, summarize

    tick = clock(timer)

    def _timed(fn) -> float:
        t0 = tick()
        fn()
        return tick() - t0

    with torch.no_grad():
        for _ in range(warmup):
            ours(x)
            official(x)
        t_ours, t_off = [], []
        for i in range(reps):
            if i % 2 == 0:
                t_ours.append(_timed(lambda: ours(x)))
                t_off.append(_timed(lambda: official(x)))
            else:
                t_off.append(_timed(lambda: official(x)))
                t_ours.append(_timed(lambda: ours(x)))
    pair = [a / b for a, b in zip(t_ours, t_off)]
    row = {**summarize(t_ours, "ours_"), **summarize(t_off, "official_")}
    return dict(row, ratio=row["ours_p50_ms"] / row["official_p50_ms"], ratio_q1=percentile(pair, 25),
                ratio_q3=percentile(pair, 75), reps=reps)


def run_worker(spec: dict, configs, *, warmup: int, reps: int, threads: int | None, emit, timer: str = "wall",
               check_only: bool = False) -> None:
    """Build both models, check they agree, time every (batch, size, extra kwargs) config; `emit(row)` per row."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    base = dict(model=spec["model"], family=spec["family"], repo=spec["repo"], commit=spec["commit"],
                builder=spec["builder"], threads=torch.get_num_threads(), timer=timer, warmup=warmup, reps=reps)
    if spec["family"] in NATTEN_FAMILIES:
        import visionattn.compat as compat

        if not hasattr(compat, "install_natten_legacy"):
            emit(dict(base, note="skipped: the official NAT/DiNAT code needs NATTEN 0.14-0.17 and "
                                 "visionattn.compat.install_natten_legacy is not available"))
            return
        compat.install_natten_legacy()
        base["official_runs_on"] = "visionattn.compat.natten_legacy (NATTEN 0.17 API on our kernels)"
    base["shims"] = install_shims()
    import visionattn
    builder = load_official(spec)
    pairs = {}

    def pair(extra: dict):
        """(ours, official) built with the manifest's kwargs plus `extra`, the same weights in both."""
        key = json.dumps(extra, sort_keys=True)
        if key not in pairs:
            kwargs = {**spec["kwargs"], **extra}
            torch.manual_seed(0)
            official = builder(**kwargs).eval()
            ours = visionattn.from_official(spec["family"], spec["builder"], kwargs, official.state_dict()).eval()
            pairs[key] = ours, official
        return pairs[key]

    ours, official = pair({})
    with torch.no_grad():
        x = torch.randn(2, 3, 224, 224)
        want, got = official(x), ours(x)
        base["max_abs_diff"] = (got.double() - want.double()).abs().max().item()
    if check_only:
        emit(base)
        return
    for batch, size, extra in configs:
        row = dict(base, batch=batch, img_size=size, **({"extra_kwargs": extra} if extra else {}))
        try:
            ours, official = pair(extra)
            x = torch.randn(batch, 3, size, size)
            with torch.no_grad():  # the same function at this size too
                row["max_abs_diff"] = (ours(x).double() - official(x).double()).abs().max().item()
            row.update(compare_timing(ours, official, x, warmup, reps, timer))
        except Exception as err:  # noqa: BLE001 - report, go on with the next config
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        emit(row)
