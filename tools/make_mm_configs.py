"""Write configs/det and configs/seg (mmdet 3.x / mmseg 1.x) from the official mmdet 2.x / mmseg 0.x configs.

    python tools/make_mm_configs.py [--cache .cache/official-dense] [--check]

Every official detection / segmentation config of a family with official dense code (the list in `OFFICIAL`) is
read from its checkout (--cache: `<owner>+<name>/`, as tools/make_dense_fixtures.py) with a small reader of the
mmcv 1.x config format (`_base_` inheritance, `_delete_`); the values that define the recipe are carried over
as they are: the backbone arguments (official names, given to the zoo's dense backbone with `model_name`), the
neck / heads / train and test settings of the model, the optimizer (AdamW lr, betas, weight decay, paramwise
keys), the schedule (epochs and steps, or iterations and the poly / cosine decay; warm-up iterations and ratio),
the images per GPU, the crop size, single- or multi-scale training (DETR-style AutoAugment 480-800) and the
multi-scale + flip test ratios (`tta_pipeline` / `tta_model`). Pipelines and loops are written in mmdet 3 /
mmseg 1 syntax (`configs/*/_base_`). The first line of each file names the official file and commit and the
paper's numbers. `--check` regenerates in memory and reports files that differ (exit 1). configs/README.md's
table is written from the same data. User errors: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_AGENT, _NAT, _BIF = "LeapLabTHU+Agent-Attention", "SHI-Labs+Neighborhood-Attention-Transformer", "rayleizhu+BiFormer"
_GC, _SLAB = "NVlabs+GCVit", "xinghaochen+SLAB"
# standard mmseg 0.x / mmdet 2.x bases for configs whose repository leaves them out
_FALLBACK_BASES = [(_AGENT, "downstream/segmentation/configs"), (_AGENT, "downstream/detection/configs")]

# (repo, official path, our file stem, zoo variant, registry class, paper numbers, checkpoint)
# paper numbers: box AP / mask AP (det), mIoU single-scale / multi-scale (seg), from the repositories' READMEs
OFFICIAL: list[tuple] = []


def _add(repo, folder, rows, cls, kind):
    for official, ours, variant, paper, ckpt in rows:
        OFFICIAL.append((repo, f"{folder}/{official}", ours, variant, cls, kind, paper, ckpt))


_NATD = "detection/configs"
_NATS = "segmentation/configs"
_NAT_CK = "https://shi-labs.com/projects/{}/checkpoints/"
_add(_NAT, _NATD, [
    ("nat/mask_rcnn_nat_mini_3x_coco.py", "mask_rcnn_nat_mini_3x_coco", "nat_mini", "46.5 / 41.7", "nat"),
    ("nat/mask_rcnn_nat_tiny_3x_coco.py", "mask_rcnn_nat_tiny_3x_coco", "nat_tiny", "47.7 / 42.6", "nat"),
    ("nat/mask_rcnn_nat_small_3x_coco.py", "mask_rcnn_nat_small_3x_coco", "nat_small", "48.4 / 43.2", "nat"),
    ("nat/cascade_mask_rcnn_nat_mini_3x_coco.py", "cascade_mask_rcnn_nat_mini_3x_coco", "nat_mini",
     "50.3 / 43.6", "nat"),
    ("nat/cascade_mask_rcnn_nat_tiny_3x_coco.py", "cascade_mask_rcnn_nat_tiny_3x_coco", "nat_tiny",
     "51.4 / 44.5", "nat"),
    ("nat/cascade_mask_rcnn_nat_small_3x_coco.py", "cascade_mask_rcnn_nat_small_3x_coco", "nat_small",
     "52.0 / 44.9", "nat"),
    ("nat/cascade_mask_rcnn_nat_base_3x_coco.py", "cascade_mask_rcnn_nat_base_3x_coco", "nat_base",
     "52.3 / 45.1", "nat"),
], "NATMM", "det")
_add(_NAT, _NATD, [
    ("dinat/mask_rcnn_dinat_mini_3x_coco.py", "mask_rcnn_dinat_mini_3x_coco", "dinat_mini", "47.2 / 42.5", "dinat"),
    ("dinat/mask_rcnn_dinat_tiny_3x_coco.py", "mask_rcnn_dinat_tiny_3x_coco", "dinat_tiny", "48.6 / 43.5", "dinat"),
    ("dinat/mask_rcnn_dinat_small_3x_coco.py", "mask_rcnn_dinat_small_3x_coco", "dinat_small", "49.3 / 44.0",
     "dinat"),
    ("dinat/cascade_mask_rcnn_dinat_mini_3x_coco.py", "cascade_mask_rcnn_dinat_mini_3x_coco", "dinat_mini",
     "51.2 / 44.4", "dinat"),
    ("dinat/cascade_mask_rcnn_dinat_tiny_3x_coco.py", "cascade_mask_rcnn_dinat_tiny_3x_coco", "dinat_tiny",
     "52.2 / 45.1", "dinat"),
    ("dinat/cascade_mask_rcnn_dinat_small_3x_coco.py", "cascade_mask_rcnn_dinat_small_3x_coco", "dinat_small",
     "52.9 / 45.8", "dinat"),
    ("dinat/cascade_mask_rcnn_dinat_base_3x_coco.py", "cascade_mask_rcnn_dinat_base_3x_coco", "dinat_base",
     "53.4 / 46.2", "dinat"),
    ("dinat/cascade_mask_rcnn_dinat_large_3x_coco.py", "cascade_mask_rcnn_dinat_large_3x_coco", "dinat_large",
     "55.3 / 47.8", "dinat"),
    ("dinat_s/mask_rcnn_dinat_s_tiny_3x_coco.py", "mask_rcnn_dinat_s_tiny_3x_coco", "dinat_s_tiny", "46.6 / 42.1",
     "dinat"),
    ("dinat_s/mask_rcnn_dinat_s_small_3x_coco.py", "mask_rcnn_dinat_s_small_3x_coco", "dinat_s_small",
     "48.6 / 43.5", "dinat"),
    ("dinat_s/cascade_mask_rcnn_dinat_s_tiny_3x_coco.py", "cascade_mask_rcnn_dinat_s_tiny_3x_coco", "dinat_s_tiny",
     "51.0 / 44.1", "dinat"),
    ("dinat_s/cascade_mask_rcnn_dinat_s_small_3x_coco.py", "cascade_mask_rcnn_dinat_s_small_3x_coco",
     "dinat_s_small", "52.3 / 45.2", "dinat"),
    ("dinat_s/cascade_mask_rcnn_dinat_s_base_3x_coco.py", "cascade_mask_rcnn_dinat_s_base_3x_coco", "dinat_s_base",
     "52.6 / 45.3", "dinat"),
    ("dinat_s/cascade_mask_rcnn_dinat_s_large_3x_coco.py", "cascade_mask_rcnn_dinat_s_large_3x_coco",
     "dinat_s_large", "54.8 / 47.2", "dinat"),
], "DiNATMM", "det")
_add(_NAT, _NATS, [
    ("nat/upernet_nat_mini_512x512_160k_ade20k.py", "upernet_nat_mini_160k_ade20k", "nat_mini", "45.1 / 46.4", "nat"),
    ("nat/upernet_nat_tiny_512x512_160k_ade20k.py", "upernet_nat_tiny_160k_ade20k", "nat_tiny", "47.1 / 48.4", "nat"),
    ("nat/upernet_nat_small_512x512_160k_ade20k.py", "upernet_nat_small_160k_ade20k", "nat_small", "48.0 / 49.5",
     "nat"),
    ("nat/upernet_nat_base_512x512_160k_ade20k.py", "upernet_nat_base_160k_ade20k", "nat_base", "48.5 / 49.7",
     "nat"),
], "NATMM", "seg")
_add(_NAT, _NATS, [
    ("dinat/upernet_dinat_mini_512x512_160k_ade20k.py", "upernet_dinat_mini_160k_ade20k", "dinat_mini",
     "45.8 / 47.2", "dinat"),
    ("dinat/upernet_dinat_tiny_512x512_160k_ade20k.py", "upernet_dinat_tiny_160k_ade20k", "dinat_tiny",
     "47.8 / 48.8", "dinat"),
    ("dinat/upernet_dinat_small_512x512_160k_ade20k.py", "upernet_dinat_small_160k_ade20k", "dinat_small",
     "48.9 / 49.9", "dinat"),
    ("dinat/upernet_dinat_base_512x512_160k_ade20k.py", "upernet_dinat_base_160k_ade20k", "dinat_base",
     "49.6 / 50.4", "dinat"),
    ("dinat/upernet_dinat_large_640x640_160k_ade20k.py", "upernet_dinat_large_640_160k_ade20k", "dinat_large",
     "54.0 / 54.9", "dinat"),
    ("dinat_s/upernet_dinat_s_tiny_512x512_160k_ade20k.py", "upernet_dinat_s_tiny_160k_ade20k", "dinat_s_tiny",
     "46.0 / 47.4", "dinat"),
    ("dinat_s/upernet_dinat_s_small_512x512_160k_ade20k.py", "upernet_dinat_s_small_160k_ade20k", "dinat_s_small",
     "48.6 / 49.9", "dinat"),
    ("dinat_s/upernet_dinat_s_base_512x512_160k_ade20k.py", "upernet_dinat_s_base_160k_ade20k", "dinat_s_base",
     "49.4 / 50.2", "dinat"),
    ("dinat_s/upernet_dinat_s_large_640x640_160k_ade20k.py", "upernet_dinat_s_large_640_160k_ade20k",
     "dinat_s_large", "53.4 / 54.6", "dinat"),
], "DiNATMM", "seg")
_AD, _AS = "downstream/detection/configs", "downstream/segmentation/configs"
_add(_AGENT, _AD, [
    ("agent_swin/agent_swin_t_mrcnn_1x_9-12-14-7.py", "mask_rcnn_agent_swin_t_1x_coco", "agent_swin_t",
     "44.6 / 40.7", "README"),
    ("agent_swin/agent_swin_t_mrcnn_3x_9-12-14-7.py", "mask_rcnn_agent_swin_t_3x_coco", "agent_swin_t",
     "47.3 / 42.7", "README"),
    ("agent_swin/agent_swin_s_mrcnn_1x_9-12-14-7.py", "mask_rcnn_agent_swin_s_1x_coco", "agent_swin_s",
     "47.2 / 42.7", "README"),
    ("agent_swin/agent_swin_s_mrcnn_3x_9-12-14-7.py", "mask_rcnn_agent_swin_s_3x_coco", "agent_swin_s",
     "48.9 / 43.8", "README"),
    ("agent_swin/agent_swin_t_crcnn_1x_9-12-14-7.py", "cascade_mask_rcnn_agent_swin_t_1x_coco", "agent_swin_t",
     "49.2 / 42.7", "README"),
    ("agent_swin/agent_swin_t_crcnn_3x_9-12-14-7.py", "cascade_mask_rcnn_agent_swin_t_3x_coco", "agent_swin_t",
     "51.4 / 44.5", "README"),
    ("agent_swin/agent_swin_s_crcnn_3x_9-12-14-7.py", "cascade_mask_rcnn_agent_swin_s_3x_coco", "agent_swin_s",
     "52.6 / 45.5", "README"),
    ("agent_swin/agent_swin_b_crcnn_3x_9-12-14-7.py", "cascade_mask_rcnn_agent_swin_b_3x_coco", "agent_swin_b",
     "52.6 / 45.3", "README"),
    ("agent_pvt/agent_pvt_t_mrcnn_1x_12-16-28-28.py", "mask_rcnn_agent_pvt_t_1x_coco", "agent_pvt_t", "41.4 / 38.7",
     "README"),
    ("agent_pvt/agent_pvt_s_mrcnn_1x_12-16-28-28.py", "mask_rcnn_agent_pvt_s_1x_coco", "agent_pvt_s", "44.5 / 41.2",
     "README"),
    ("agent_pvt/agent_pvt_m_mrcnn_1x_12-16-28-28.py", "mask_rcnn_agent_pvt_m_1x_coco", "agent_pvt_m", "45.9 / 42.0",
     "README"),
    ("agent_pvt/agent_pvt_l_mrcnn_1x_12-16-28-28.py", "mask_rcnn_agent_pvt_l_1x_coco", "agent_pvt_l", "46.9 / 42.8",
     "README"),
    ("agent_pvt/agent_pvt_t_rtn_1x_12-16-28-28.py", "retinanet_agent_pvt_t_1x_coco", "agent_pvt_t", "40.3", "README"),
    ("agent_pvt/agent_pvt_s_rtn_1x_12-16-28-28.py", "retinanet_agent_pvt_s_1x_coco", "agent_pvt_s", "44.1", "README"),
    ("agent_pvt/agent_pvt_m_rtn_1x_12-16-28-28.py", "retinanet_agent_pvt_m_1x_coco", "agent_pvt_m", "45.8", "README"),
    ("agent_pvt/agent_pvt_l_rtn_1x_12-16-28-28.py", "retinanet_agent_pvt_l_1x_coco", "agent_pvt_l", "46.8", "README"),
], "AgentAttentionMM", "det")
_add(_AGENT, _AS, [
    ("agent_swin/upernet_agent_swin_t_9-12-14-7.py", "upernet_agent_swin_t_160k_ade20k", "agent_swin_t",
     "46.68 / -", "README"),
    ("agent_swin/upernet_agent_swin_s_9-12-14-7.py", "upernet_agent_swin_s_160k_ade20k", "agent_swin_s",
     "48.08 / -", "README"),
    ("agent_swin/upernet_agent_swin_b_9-12-14-7.py", "upernet_agent_swin_b_160k_ade20k", "agent_swin_b",
     "48.73 / -", "README"),
    ("agent_pvt/fpn_agent_pvt_t_12-16-28-28.py", "fpn_agent_pvt_t_40k_ade20k", "agent_pvt_t", "40.18 / -", "README"),
    ("agent_pvt/fpn_agent_pvt_s_12-16-28-28.py", "fpn_agent_pvt_s_40k_ade20k", "agent_pvt_s", "44.18 / -", "README"),
    ("agent_pvt/fpn_agent_pvt_m_12-16-28-28.py", "fpn_agent_pvt_m_40k_ade20k", "agent_pvt_m", "44.30 / -", "README"),
    ("agent_pvt/fpn_agent_pvt_l_12-16-28-28.py", "fpn_agent_pvt_l_40k_ade20k", "agent_pvt_l", "46.52 / -", "README"),
], "AgentAttentionMM", "seg")
_add(_GC, "detection/configs", [
    ("gcvit/mask_rcnn_gcvit_tiny_3x_coco.py", "mask_rcnn_gcvit_tiny_3x_coco", "gcvit_tiny", "47.9 / 43.2",
     "not released"),
    ("gcvit/cascade_mask_rcnn_gcvit_tiny_3x_coco.py", "cascade_mask_rcnn_gcvit_tiny_3x_coco", "gcvit_tiny",
     "51.6 / 44.6", "not released"),
], "GCViTMM", "det")
_add(_SLAB, "detection/configs", [
    ("swin/mask_rcnn_slab_swin_tiny_patch4_window7_mstrain_480-800_adamw_1x_coco.py", "mask_rcnn_slab_swin_t_1x_coco",
     "slab_swin_t", "README: TBD (paper only)", "TBD"),
    ("swin/mask_rcnn_slab_swin_small_patch4_window7_mstrain_480-800_adamw_1x_coco.py",
     "mask_rcnn_slab_swin_s_1x_coco", "slab_swin_s", "README: TBD (paper only)", "TBD"),
    ("swin/mask_rcnn_swin_tiny_prepbn_patch4_window7_mstrain_480-800_adamw_1x_coco.py",
     "mask_rcnn_swin_t_prepbn_1x_coco", "swin_t_prepbn", "README: TBD (paper only)", "TBD"),
    ("swin/mask_rcnn_swin_tiny_prepbn_patch4_window7_mstrain_480-800_adamw_3x_coco.py",
     "mask_rcnn_swin_t_prepbn_3x_coco", "swin_t_prepbn", "README: TBD (paper only)", "TBD"),
], "SLABMM", "det")
_LOGS = "not released (logs only)"
_add(_BIF, "object_detection/configs", [
    ("coco/maskrcnn.1x.biformer_small.py", "mask_rcnn_biformer_s_1x_coco", "biformer_s", "47.8 / 43.2", _LOGS),
    ("coco/maskrcnn.1x.biformer_base.py", "mask_rcnn_biformer_b_1x_coco", "biformer_b", "48.6 / 43.7", _LOGS),
    ("coco/retinanet.1x.biformer_small.py", "retinanet_biformer_s_1x_coco", "biformer_s", "45.9", _LOGS),
    ("coco/retinanet.1x.biformer_base.py", "retinanet_biformer_b_1x_coco", "biformer_b", "47.1", _LOGS),
], "BiFormerMM", "det")
_add(_BIF, "semantic_segmentation/configs", [
    ("ade20k/upernet.biformer_small.py", "upernet_biformer_s_160k_ade20k", "biformer_s", "49.8 / 50.8", _LOGS),
    ("ade20k/upernet.biformer_base.py", "upernet_biformer_b_160k_ade20k", "biformer_b", "51.0 / 51.7", _LOGS),
    ("ade20k/sfpn.biformer_small.py", "fpn_biformer_s_80k_ade20k", "biformer_s", "48.9 / -", _LOGS),
    ("ade20k/sfpn.biformer_base.py", "fpn_biformer_b_80k_ade20k", "biformer_b", "49.9 / -", _LOGS),
], "BiFormerMM", "seg")


# ---------------------------------------------------------------------------------------------- mmcv 1.x reader


def _merge(a, b):
    if isinstance(b, dict):
        if b.get("_delete_"):
            return {k: _merge(None, v) for k, v in b.items() if k != "_delete_"}
        out = dict(a) if isinstance(a, dict) else {}
        for k, v in b.items():
            out[k] = _merge(out.get(k), v)
        return out
    return copy.deepcopy(b)


def _resolve(path: Path, base: str, cache: Path) -> Path:
    cand = (path.parent / base).resolve()
    if cand.is_file():
        return cand
    tail = base.split("_base_/", 1)[-1]
    for p in path.parents:
        if (p / "_base_" / tail).is_file():
            return p / "_base_" / tail
    for repo, folder in _FALLBACK_BASES:
        cand = cache / repo / folder / "_base_" / tail
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"base {base} of {path}")


def read_official(path: Path, cache: Path) -> dict:
    """An mmcv 1.x config as a dict (`_base_` files merged, `_delete_` honoured)."""
    ns: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), ns)  # noqa: S102 - official config files from the cache
    bases = ns.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    cfg: dict = {}
    for b in bases:
        cfg = _merge(cfg, read_official(_resolve(path, b, cache), cache))
    own = {k: v for k, v in ns.items() if not k.startswith("__") and not callable(v)
           and type(v).__name__ != "module"}
    return _merge(cfg, own)


# ---------------------------------------------------------------------------------------------- translation

_DROP_BACKBONE = ("type", "pretrained", "init_cfg", "use_checkpoint", "use_checkpoint_stages", "in_patch_size",
                  "num_classes", "style")


def _accepted(variant: str) -> set[str] | None:
    """Argument names the dense backbone of `variant` takes (None: any, checked by its builder)."""
    import inspect

    from visionattn.mm import dense

    builder = dense.DENSE_VARIANTS[variant][0]
    if not isinstance(builder, type):
        return None
    names = set()
    for klass in builder.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= {n for n, p in inspect.signature(init).parameters.items()
                      if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
    return names


def ignored_backbone_keys(official: dict, variant: str) -> list[str]:
    """Keys of an official backbone dict that the official class swallows unused (`**kwargs`), typically left over
    from a `_base_` backbone the config did not `_delete_`."""
    ok = _accepted(variant)
    return [] if ok is None else sorted(k for k in official if k not in _DROP_BACKBONE and k not in ok)


def _backbone(official: dict, cls: str, variant: str) -> dict:
    drop = set(_DROP_BACKBONE) | set(ignored_backbone_keys(official, variant))
    kw = {k: v for k, v in official.items() if k not in drop}
    out = {"type": cls, "model_name": variant}
    out["out_indices"] = tuple(kw.pop("out_indices", (0, 1, 2, 3)))
    if "downstream_agent_shapes" in kw:
        kw["downstream_agent_shapes"] = [tuple(s) for s in kw["downstream_agent_shapes"]]
    out.update(kw)
    out["init_cfg"] = dict(type="Pretrained", checkpoint=None)
    return out


def _is_multiscale(cfg: dict) -> bool:
    pipe = (cfg.get("data", {}).get("train", {}) or {}).get("pipeline") or cfg.get("train_pipeline") or []
    return any(t.get("type") == "AutoAugment" for t in pipe)


def _det_schedule(cfg: dict) -> dict:
    lr = cfg["lr_config"]
    epochs = cfg.get("runner", {}).get("max_epochs", cfg.get("total_epochs", 12))
    return dict(max_epochs=epochs, steps=list(lr["step"]), warmup_iters=lr.get("warmup_iters", 500),
                warmup_ratio=lr.get("warmup_ratio", 0.001))


def _optim(cfg: dict) -> dict:
    o = dict(cfg["optimizer"])
    out = dict(type=o.get("type", "AdamW"), lr=o["lr"], weight_decay=o.get("weight_decay", 0.0))
    if "betas" in o:
        out["betas"] = tuple(o["betas"])
    custom = (o.get("paramwise_cfg") or {}).get("custom_keys")
    return dict(optimizer=out, custom_keys=custom, constructor=o.get("constructor"),
                grad_clip=(cfg.get("optimizer_config") or {}).get("grad_clip"))


def _fp16(cfg: dict) -> bool:
    oc = cfg.get("optimizer_config") or {}
    return bool(cfg.get("fp16")) or oc.get("type") == "Fp16OptimizerHook" or bool(oc.get("use_fp16"))


def _py(v, ind: int = 0) -> str:
    """mmengine-config Python for `v`: dict(key=...) where keys are identifiers, wrapped at 116 columns."""
    pad = " " * (ind + 4)
    if isinstance(v, dict):
        ident = all(isinstance(k, str) and k.isidentifier() for k in v)
        items = [f"{k}={_py(x, ind + 4)}" if ident else f"{k!r}: {_py(x, ind + 4)}" for k, x in v.items()]
        left, right = ("dict(", ")") if ident else ("{", "}")
    elif isinstance(v, (list, tuple)):
        items = [_py(x, ind + 4) for x in v]
        left, right = ("[", "]") if isinstance(v, list) else ("(", ",)" if len(v) == 1 else ")")
    else:
        return repr(v)
    one = left + ", ".join(items) + right
    if len(one) + ind <= 100 and "\n" not in one:
        return one
    return left + "\n" + "".join(f"{pad}{it},\n" for it in items) + " " * ind + (right if right != ",)" else ")")


def _fmt(name: str, value) -> str:
    return f"{name} = {_py(value)}\n"


def _header(*parts: str) -> str:
    """Comment lines (wrapped at 118 columns) from sentences."""
    import textwrap

    text = " ".join(p.strip() for p in parts)
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 116, break_long_words=False,
                                                             break_on_hyphens=False))


def _ignored_note(backbone: dict, variant: str) -> str:
    keys = ignored_backbone_keys(backbone, variant)
    return (f"Left out: backbone keys the official class ignores ({', '.join(keys)}; inherited from a _base_ "
            "backbone).") if keys else ""


def _model_tail(model: dict) -> dict:
    """The official model without its backbone / `pretrained` (mmdet 3 and mmseg 1 keep these key names)."""
    return {k: v for k, v in model.items() if k not in ("backbone", "pretrained", "type")}


_MS, _SS = "multi-scale AutoAugment 480-800", "single-scale 1333x800"


def det_config(repo: str, path: str, stem: str, variant: str, cls: str, cfg: dict, commit: str, paper: str) -> str:
    model = cfg["model"]
    head = {"MaskRCNN": "mask_rcnn_fpn", "CascadeRCNN": "cascade_mask_rcnn_fpn", "RetinaNet": "retinanet_fpn"}[
        model["type"]]
    dataset = "coco_detection" if head == "retinanet_fpn" else (
        "coco_instance_ms" if _is_multiscale(cfg) else "coco_instance")
    sched = _det_schedule(cfg)
    opt = _optim(cfg)
    spg = cfg.get("data", {}).get("samples_per_gpu", 2)
    owner, name = repo.split("+", 1)
    lines = [
        _header(f"{model['type']} {sched['max_epochs'] // 12}x ({_MS if 'ms' in dataset else _SS}), {variant};",
                f"official README: {'box AP' if head == 'retinanet_fpn' else 'box / mask AP'} {paper}."),
        _header(f"Official: github.com/{owner}/{name}@{commit[:12]} {path}"
                + (" (mixed precision there: add --amp)" if _fp16(cfg) else "") + f"; {spg} images per GPU x 8 GPUs.",
                "Written by tools/make_mm_configs.py from the official file (values carried over as they are).",
                _ignored_note(model["backbone"], variant)),
        _fmt("_base_", [f"./_base_/models/{head}.py", f"./_base_/datasets/{dataset}.py",
                        "./_base_/schedules/schedule_1x.py", "./_base_/default_runtime.py"]),
    ]
    tail = _model_tail(model)
    lines.append(_fmt("model", dict(backbone=dict(_delete_=True, **_backbone(model["backbone"], cls, variant)),
                                    **tail)))
    lines.append(_fmt("train_dataloader", dict(batch_size=spg)))
    lines.append(_optim_text(opt))
    lines.append(_fmt("param_scheduler", [
        dict(type="LinearLR", start_factor=sched["warmup_ratio"], by_epoch=False, begin=0,
             end=sched["warmup_iters"]),
        dict(type="MultiStepLR", begin=0, end=sched["max_epochs"], by_epoch=True, milestones=sched["steps"],
             gamma=0.1)]))
    lines.append(_fmt("train_cfg", dict(type="EpochBasedTrainLoop", max_epochs=sched["max_epochs"], val_interval=1)))
    lines.append(_fmt("auto_scale_lr", dict(enable=False, base_batch_size=spg * 8)))
    return "".join(lines)


def _optim_text(opt: dict) -> str:
    if opt["constructor"]:
        raise ValueError(f"optimizer constructor {opt['constructor']} is not translated")
    wrapper = dict(_delete_=True, type="OptimWrapper", optimizer=opt["optimizer"])
    if opt["custom_keys"]:
        wrapper["paramwise_cfg"] = dict(custom_keys=opt["custom_keys"])
    if opt["grad_clip"]:
        wrapper["clip_grad"] = opt["grad_clip"]
    return _fmt("optim_wrapper", wrapper)


def seg_config(repo: str, path: str, stem: str, variant: str, cls: str, cfg: dict, commit: str, paper: str) -> str:
    model = cfg["model"]
    head = "upernet" if model["decode_head"]["type"] == "UPerHead" else "fpn"
    runner = cfg.get("runner", {})
    iters = runner.get("max_iters", cfg.get("total_iters", 160000))
    lr = cfg["lr_config"]
    crop = tuple(cfg.get("crop_size") or _crop(cfg))
    opt = _optim(cfg)
    spg = cfg.get("data", {}).get("samples_per_gpu", 2)
    ratios = _test_ratios(cfg)
    owner, name = repo.split("+", 1)
    dataset = "ade20k_640x640" if crop[0] == 640 else "ade20k"
    lines = [
        _header(f"{'UPerNet' if head == 'upernet' else 'Semantic FPN'} {iters // 1000}k ADE20K {crop[0]}x{crop[1]},",
                f"{variant}; official README: mIoU single-scale / multi-scale {paper}."),
        _header(f"Official: github.com/{owner}/{name}@{commit[:12]} {path}"
                + (" (mixed precision there: add --amp)" if _fp16(cfg) else "") + f"; {spg} images per GPU x 8 GPUs.",
                "Written by tools/make_mm_configs.py from the official file (values carried over as they are).",
                f"Multi-scale + flip test: tools/seg_test.py --tta (ratios {ratios}).",
                _ignored_note(model["backbone"], variant)),
        _fmt("_base_", [f"./_base_/models/{head}.py", f"./_base_/datasets/{dataset}.py",
                        "./_base_/schedules/schedule_160k.py", "./_base_/default_runtime.py"]),
    ]
    tail = _model_tail(model)
    tail["data_preprocessor"] = dict(size=crop)
    if cfg.get("norm_cfg"):
        tail.setdefault("decode_head", {})
    lines.append(_fmt("model", dict(backbone=dict(_delete_=True, **_backbone(model["backbone"], cls, variant)),
                                    **tail)))
    lines.append(_fmt("train_dataloader", dict(batch_size=spg)))
    lines.append(_optim_text(opt))
    warm = [dict(type="LinearLR", start_factor=lr.get("warmup_ratio", 1e-6), by_epoch=False, begin=0,
                 end=lr.get("warmup_iters", 1500))] if lr.get("warmup") else []
    if lr["policy"] == "poly":
        decay = dict(type="PolyLR", eta_min=lr.get("min_lr", 0.0), power=lr.get("power", 1.0),
                     begin=warm[0]["end"] if warm else 0, end=iters, by_epoch=False)
    elif lr["policy"] == "CosineAnnealing":
        base_lr = opt["optimizer"]["lr"]
        decay = dict(type="CosineAnnealingLR", eta_min=base_lr * lr.get("min_lr_ratio", 0.0),
                     begin=warm[0]["end"] if warm else 0, end=iters, T_max=iters - (warm[0]["end"] if warm else 0),
                     by_epoch=False)
    else:
        raise ValueError(f"{path}: lr policy {lr['policy']} is not translated")
    lines.append(_fmt("param_scheduler", warm + [decay]))
    lines.append(_fmt("train_cfg", dict(type="IterBasedTrainLoop", max_iters=iters,
                                        val_interval=cfg.get("evaluation", {}).get("interval", 16000))))
    lines.append(_fmt("tta_pipeline", _tta_pipeline(ratios, crop)))
    return "".join(lines)


def _crop(cfg: dict):
    for t in cfg.get("train_pipeline") or cfg["data"]["train"]["pipeline"]:
        if t.get("type") == "RandomCrop":
            return t["crop_size"]
    raise ValueError("no crop size")


def _test_ratios(cfg: dict):
    for t in cfg.get("test_pipeline") or cfg["data"]["test"]["pipeline"]:
        if t.get("type") == "MultiScaleFlipAug" and t.get("img_ratios"):
            return list(t["img_ratios"])
    return [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def _tta_pipeline(ratios, crop) -> list:
    scale = (crop[0] * 4, crop[0])
    return [
        dict(type="LoadImageFromFile", backend_args=None),
        dict(type="TestTimeAug", transforms=[
            [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in ratios],
            [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
             dict(type="RandomFlip", prob=1.0, direction="horizontal")],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ]),
    ] if scale else []


# ---------------------------------------------------------------------------------------------- main


def _commit(root: Path) -> str:
    f = root / "COMMIT"
    return f.read_text().strip() if f.is_file() else "unknown"


def generate(cache: Path) -> dict[Path, str]:
    files: dict[Path, str] = {}
    rows = []
    for repo, path, stem, variant, cls, kind, paper, ckpt in OFFICIAL:
        root = cache / repo
        cfg = read_official(root / path, cache)
        commit = _commit(root)
        text = (det_config if kind == "det" else seg_config)(repo, path, stem, variant, cls, cfg, commit, paper)
        files[REPO / "configs" / kind / f"{stem}.py"] = text
        rows.append((kind, stem, repo, path, commit, paper, _ckpt(cache, repo, path, ckpt)))
    files[REPO / "configs" / "README.md"] = readme(rows)
    return files


def readme(rows) -> str:
    out = [_HEAD, "\n| config | official config @ commit | reported in the official README (box / mask AP, or mIoU "
                 "single / multi-scale) | official checkpoint |\n|---|---|---|---|\n"]
    for kind, stem, repo, path, commit, paper, ckpt in rows:
        owner, name = repo.split("+", 1)
        out.append(f"| `{kind}/{stem}.py` | {owner}/{name}@{commit[:7]} `{path}` | {paper} | {ckpt} |\n")
    made = {f"{kind}/{stem}.py" for kind, stem, *_ in rows}
    others = sorted(f"{kind}/{p.name}" for kind in ("det", "seg") for p in (REPO / "configs" / kind).glob("*.py")
                    if f"{kind}/{p.name}" not in made)
    out.append(_TAIL)
    if others:
        out.append("\nNot written from an official file by the tool (their first lines say what they follow): "
                   + ", ".join(f"`{o}`" for o in others) + ".\n")
    return "".join(out)


_URL = re.compile(r"\((https?://[^)\s]+(?:\.pth|dl=1))\)")


def readme_checkpoints(cache: Path, repo: str) -> dict[str, str]:
    """config file name -> the checkpoint URL on the same row of the repository's README tables."""
    out = {}
    for md in sorted((cache / repo).rglob("*.md")):
        for line in md.read_text(errors="replace").splitlines():
            cfgs = re.findall(r"([\w.\-]+\.py)\)", line)
            urls = [u for u in _URL.findall(line) if "/imagenet" not in u and "/CLS/" not in u]
            if cfgs and urls:
                out.setdefault(cfgs[-1], urls[-1])
    return out


def _ckpt(cache: Path, repo: str, path: str, ckpt: str) -> str:
    if ckpt in ("nat", "dinat", "README"):
        url = readme_checkpoints(cache, repo).get(path.rsplit("/", 1)[-1])
        return f"<{url}>" if url else "not linked in the README"
    return ckpt


_HEAD = """# Detection (mmdet 3.3) and segmentation (mmseg 1.2) configs

Install the `mm` extra first (`make mm`, i.e. `bash tools/install_mm.sh`: mmcv 2.1.0 built with its ops).
Every config loads `visionattn.mm` through `custom_imports`; its backbones are registered in the mmdet and
mmseg MODELS registries. For the families with official dense code (NAT, DiNAT, DiNAT_s, BiFormer, Agent-Swin,
Agent-PVT, GC ViT, SLAB-Swin / Swin-PRepBN) the backbone is the official dense backbone
(`visionattn.mm.dense`, checked against the official code in tests/test_dense_parity.py): `model_name` picks the
variant and every other backbone argument is the official one, with its official name (e.g.
`downstream_agent_shapes`, `dilations`, `window_size`, `layer_scale`). SHViT / EfficientViM use the timm models.

| registry name | family | model_name | per-output norm |
|---|---|---|---|
| `NATMM` / `DiNATMM` | nat / dinat | nat_{mini,...,base}, dinat_{mini,...,large}, dinat_s_* | `norm{i}` |
| `BiFormerMM` | biformer | biformer_{t,s,b} | official `extra_norms` |
| `AgentAttentionMM` | agent_attention | agent_swin_{t,s,b}, agent_pvt_{t,s,m,l} | Swin `norm{i}`, PVT none |
| `GCViTMM` | gcvit | gcvit_{xxtiny,xtiny,tiny,small,base} (any size, 24x24 windows) | official `norm{i}` |
| `SLABMM` | slab | slab_swin_{t,s}, swin_t_prepbn; slab_pvt_* (no official dense code) | `norm{i}` |
| `SHViTMM` | shvit | shvit_s4 (3 levels, strides 16/32/64) | none; neck `TransConvFPN` |
| `EfficientViMMM` | efficientvim | efficientvim_m4 (3 levels) | none; `TransConvFPN(pre_norm=True)` |

Common backbone arguments: `model_name` + the official backbone arguments, `out_indices`, `frozen_stages`
(-1 none, 0 stem, k stem + stages 0..k-1), `norm_eval`, `init_cfg=dict(type='Pretrained', checkpoint=PATH)`:
ours or the official classification / dense checkpoints (`weights_only=True`, mmcv 1.x `meta` allowed, keys mapped
through the family's filter; a key that cannot be mapped is an error). Official detection / segmentation
checkpoints evaluate directly: `python tools/det_test.py CONFIG official.pth` maps their `backbone.*` keys.

Most files are written by `tools/make_mm_configs.py` from the official configs (backbone arguments, heads,
optimizer, schedule, images per GPU, single- / multi-scale training, test ratios carried over); their first lines
name the official file and commit and the paper's numbers. Segmentation configs define `tta_pipeline`
(multi-scale + flip at the official ratios; `tools/seg_test.py --tta`).

    python tools/det_train.py configs/det/mask_rcnn_nat_tiny_3x_coco.py \\
        --cfg-options model.backbone.init_cfg.checkpoint=nat_tiny.pth
    torchrun --nproc_per_node=8 tools/det_train.py CONFIG --launcher pytorch --amp
    python tools/det_test.py configs/det/mask_rcnn_nat_tiny_3x_coco.py nat_tiny_maskrcnn.pth
    python tools/seg_test.py configs/seg/upernet_nat_tiny_160k_ade20k.py nat_tiny_upernet.pth --tta

No data? `python -m visionattn.mm.synthetic --coco data/synth_coco --ade data/synth_ade` writes a tiny
COCO-format instance set and an ADE20K-layout set (see tests/test_mm.py for the overrides).
"""


_TAIL = """
No configs for SLAB-PVT dense (the official detection config names a `pvt_tiny` class that the repository does
not contain: there is no official dense backbone to reproduce), nor for GC ViT segmentation (no official code or
config). SHViT / EfficientViM segmentation configs have no official recipe and say so in their first line.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=str(REPO / ".cache" / "official-dense"))
    p.add_argument("--check", action="store_true", help="report configs that differ from a fresh generation")
    args = p.parse_args(argv)
    cache = Path(args.cache)
    missing = sorted({r[0] for r in OFFICIAL if not (cache / r[0]).is_dir()})
    if missing:
        print(f"make_mm_configs.py: error: no official checkout {cache / missing[0]}", file=sys.stderr)
        return 2
    files = generate(cache)
    if args.check:
        stale = [str(f) for f, text in files.items() if not f.is_file() or f.read_text() != text]
        print("stale: " + (", ".join(stale) if stale else "none"))
        return 1 if stale else 0
    for f, text in files.items():
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".{f.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, f)
    print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
