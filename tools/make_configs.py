"""Write configs/imagenet/<model>.yaml for every zoo model from a per-family recipe table.

    python tools/make_configs.py [--out configs/imagenet] [--check]

The recipes are the official ImageNet-1k settings as summarised in the family specs (epochs, batch per
process for 8 processes, lr and its batch scaling, weight decay, warm-up, augmentation, EMA, clipping,
drop path per variant). `--check` only reports models without a config (exit 1 if any).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

import visionattn

# Shared DeiT-style augmentation (RandAugment m9, mixup 0.8 / cutmix 1.0, smoothing 0.1, erasing 0.25).
_DEIT_AUG = dict(aa="rand-m9-mstd0.5-inc1", color_jitter=0.4, interpolation="bicubic", reprob=0.25, remode="pixel",
                 mixup=0.8, cutmix=1.0, smoothing=0.1)

# family -> recipe; `lr: null` means lr_base scaled by global batch / lr_base_size.
RECIPES: dict[str, dict] = {
    "biformer": dict(_DEIT_AUG, epochs=300, batch_size=128, opt="adamw", lr=None, lr_base=5e-4, lr_base_size=512,
                     weight_decay=0.05, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, repeated_aug=True,
                     model_ema=True, model_ema_decay=0.99996, drop_path=0.1),
    "nat": dict(_DEIT_AUG, epochs=300, batch_size=128, opt="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=20,
                warmup_lr=1e-6, min_lr=5e-6, cooldown_epochs=10),
    "dinat": dict(_DEIT_AUG, epochs=300, batch_size=128, opt="adamw", lr=1e-3, weight_decay=0.05, warmup_epochs=20,
                  warmup_lr=1e-6, min_lr=5e-6, cooldown_epochs=10),
    "agent_attention": dict(_DEIT_AUG, epochs=300, batch_size=128, opt="adamw", opt_eps=1e-8, lr=None, lr_base=5e-4,
                            lr_base_size=512, weight_decay=0.05, warmup_epochs=20, warmup_lr=5e-7, min_lr=5e-6,
                            clip_grad=5.0),
    "slab": dict(_DEIT_AUG, epochs=300, batch_size=128, opt="adamw", opt_eps=1e-8, lr=None, lr_base=5e-4,
                 lr_base_size=512, weight_decay=0.05, warmup_epochs=20, warmup_lr=5e-7, min_lr=5e-6, clip_grad=5.0,
                 bn_recalib_epochs=10),
    "gcvit": dict(_DEIT_AUG, epochs=300, batch_size=128, opt="adamw", lr=5e-3, weight_decay=0.05, warmup_epochs=20,
                  cooldown_epochs=10, clip_grad=5.0, model_ema=True, model_ema_decay=0.9998),
    "shvit": dict(_DEIT_AUG, epochs=300, batch_size=256, opt="adamw", opt_eps=1e-8, lr=None, lr_base=1e-3,
                  lr_base_size=512, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, clip_grad=0.02, clip_mode="agc",
                  repeated_aug=True, model_ema=True, model_ema_decay=0.99996),
    "efficientvim": dict(_DEIT_AUG, epochs=300, batch_size=256, opt="adamw", opt_eps=1e-8, lr=2e-3, weight_decay=0.05,
                         warmup_epochs=20, warmup_lr=2e-6, min_lr=2e-5, warmup_prefix=True, cooldown_epochs=10,
                         clip_grad=0.02, amp="bf16", model_ema=True, model_ema_decay=0.9995, mesa=1.0,
                         mesa_start=0.25),
}

# Per-variant facts from the specs (drop path, per-process batch, weight decay, PRepBN steps, EMA decay...).
VARIANTS: dict[str, dict] = {
    # NAT / DiNAT (model defaults in the spec tables)
    **{n: dict(drop_path=0.2) for n in ("nat_mini", "nat_tiny", "dinat_mini", "dinat_tiny", "dinat_s_tiny")},
    **{n: dict(drop_path=0.3) for n in ("nat_small", "dinat_small", "dinat_s_small")},
    **{n: dict(drop_path=0.5) for n in ("nat_base", "dinat_base", "dinat_s_base")},
    **{n: dict(drop_path=0.35, epochs=30, lr=5e-5, sched="cosine", warmup_epochs=0, cooldown_epochs=0, mixup=0.0,
               cutmix=0.0, weight_decay=1e-4)
       for n in ("dinat_large", "dinat_s_large")},
    **{n: dict(drop_path=0.35, epochs=30, lr=5e-5, warmup_epochs=0, cooldown_epochs=0, mixup=0.0, cutmix=0.0,
               weight_decay=1e-10, crop_pct=1.0)
       for n in ("dinat_large_384", "dinat_large_384_11x11", "dinat_s_large_384")},
    **{n: dict(drop_path=0.1) for n in ("nat_isotropic_small", "dinat_isotropic_small", "vitrpb_small")},
    **{n: dict(drop_path=0.4) for n in ("nat_isotropic_base", "dinat_isotropic_base", "vitrpb_base")},
    # BiFormer (README command for S uses 0.15; T/B not given -> recipe default 0.1)
    "biformer_s": dict(drop_path=0.15),
    # Agent attention
    "agent_deit_t": dict(drop_path=0.0, batch_size=512), "agent_deit_s": dict(drop_path=0.1),
    "agent_deit_s_448": dict(drop_path=0.1, batch_size=64), "agent_deit_b": dict(drop_path=0.3),
    **{n: dict(drop_path=dp, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=10, clip_grad=clip,
               batch_size=bs)
       for n, dp, clip, bs in (("agent_pvt_t", 0.1, None, 128), ("agent_pvt_s", 0.1, None, 128),
                               ("agent_pvt_m", 0.3, 1.0, 128), ("agent_pvt_m_256", 0.3, 1.0, 64),
                               ("agent_pvt_l", 0.3, 1.0, 64))},
    "agent_swin_t": dict(drop_path=0.2), "agent_swin_s": dict(drop_path=0.3),
    "agent_swin_s_288": dict(drop_path=0.3, batch_size=64), "agent_swin_b": dict(drop_path=0.5, batch_size=64),
    "agent_swin_b_384": dict(drop_path=0.5, batch_size=32, epochs=30, lr_base=2e-5, warmup_epochs=5, warmup_lr=2e-8,
                             min_lr=2e-7, weight_decay=1e-8),
    **{n: dict(drop_path=dp, batch_size=bs, warmup_lr=1e-6, min_lr=1e-5, cooldown_epochs=10, clip_grad=None,
               model_ema=True, model_ema_decay=ema, weight_decay=wd)
       for n, dp, bs, ema, wd in (("agent_cswin_t", 0.2, 128, 0.99984, 0.05),
                                  ("agent_cswin_s", 0.4, 128, 0.99984, 0.05),
                                  ("agent_cswin_b", 0.5, 64, 0.99992, 0.1))},
    "agent_cswin_b_384": dict(drop_path=0.7, batch_size=32, epochs=20, lr_base=5e-6, warmup_epochs=0, warmup_lr=5e-6,
                              min_lr=5e-7, cooldown_epochs=10, weight_decay=1e-8, clip_grad=None, model_ema=True,
                              model_ema_decay=0.9998),
    # SLAB (PRepBN steps T per the spec; PVT / CSwin cfgs: warm-up 5 / 20, lrs 1e-6 / 1e-5, cooldown 10)
    "deit_t_prepbn": dict(drop_path=0.0), "deit_s_prepbn": dict(drop_path=0.0, prepbn_steps=300000),
    "slab_deit_t": dict(drop_path=0.0, prepbn_steps=60000), "slab_deit_s": dict(drop_path=0.0, prepbn_steps=60000),
    **{n: dict(drop_path=dp, batch_size=bs, prepbn_steps=300000, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
               cooldown_epochs=10)
       for n, dp, bs in (("pvt_t_prepbn", 0.0, 128), ("pvt_s_prepbn", 0.1, 64), ("pvt_m_prepbn", 0.3, 64),
                         ("slab_pvt_t", 0.0, 128), ("slab_pvt_s", 0.1, 64), ("slab_pvt_m", 0.3, 64))},
    "swin_t_prepbn": dict(drop_path=0.1),
    "slab_swin_t": dict(drop_path=0.2, prepbn_steps=60000), "slab_swin_s": dict(drop_path=0.3, prepbn_steps=60000),
    "slab_swin_b": dict(drop_path=0.5, prepbn_steps=60000),
    "slab_cswin_t": dict(drop_path=0.1, batch_size=256, prepbn_steps=120000, warmup_lr=1e-6, min_lr=1e-5,
                         cooldown_epochs=10),
    "slab_cswin_s": dict(drop_path=0.3, batch_size=64, prepbn_steps=120000, warmup_lr=1e-6, min_lr=1e-5,
                         cooldown_epochs=10),
    # GC ViT (drop path = the official model defaults)
    "gcvit_xxtiny": dict(drop_path=0.2), "gcvit_xtiny": dict(drop_path=0.2), "gcvit_tiny": dict(drop_path=0.2),
    "gcvit_small": dict(drop_path=0.3), "gcvit_base": dict(drop_path=0.5),
    # SHViT: weight decay per variant, no drop path (timm's port takes no drop_path_rate)
    "shvit_s1": dict(weight_decay=0.025), "shvit_s2": dict(weight_decay=0.032), "shvit_s3": dict(weight_decay=0.035),
    "shvit_s4": dict(weight_decay=0.03, img_size=256),
    "efficientvim_m4": dict(img_size=256),
    "efficientvim_m4_dist": dict(img_size=256),
}

# EfficientViM `_dist`: DeiT hard distillation from regnety_160 (alpha 0.5, tau 1), no MESA.
_DIST = dict(distill=dict(type="hard", teacher="regnety_160", teacher_checkpoint=None, alpha=0.5, tau=1.0), mesa=0.0)


def recipe(name: str) -> dict:
    family = visionattn.get_family(name)
    name = str(name)
    cfg = {"model": name, "data_dir": "/data/imagenet", "output_dir": f"output/imagenet/{name}"}
    cfg.update(RECIPES[family])
    cfg.update(VARIANTS.get(name, {}))
    if name.endswith("_dist"):
        cfg.update(_DIST)
    if cfg.get("lr") is not None:
        cfg.pop("lr_base", None)
        cfg.pop("lr_base_size", None)
    return cfg


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "configs" / "imagenet"))
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    names = visionattn.list_models()
    if args.check:
        missing = [n for n in names if not (out / f"{n}.yaml").exists()]
        print("missing: " + (", ".join(missing) if missing else "none"))
        return 1 if missing else 0
    if out.exists() and not out.is_dir():
        print(f"make_configs.py: error: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    # only configs this tool wrote are replaced: a hand-written file of the same name is refused, before any write
    foreign = [p for p in (out / f"{n}.yaml" for n in names) if p.exists() and _MARK not in _head(p)]
    if foreign:
        print(f"make_configs.py: error: {foreign[0]} was not written by this tool ({len(foreign)} such files); "
              "move them away or choose another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        cfg = recipe(name)
        head = (f"# {name} ({name.family}): ImageNet-1k recipe (family spec {name.family}.md), "
                f"{_MARK}.\n# batch_size is per process (the official runs used 8).\n")
        (out / f"{name}.yaml").write_text(head + yaml.safe_dump(cfg, sort_keys=False))
    print(f"wrote {len(names)} configs to {out}")
    return 0


_MARK = "written by tools/make_configs.py"


def _head(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(400)
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
