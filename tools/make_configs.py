"""Write configs/imagenet/<model>.yaml for every zoo model, and configs/imagenet/README.md, from the audited recipes.

    python tools/make_configs.py [--out configs/imagenet] [--check]

Every value of every recipe is recorded here with where it comes from: a file of the official training code at a
pinned commit (its config, its trainer's default, its README command), or "no official value" and why. The
YAML files carry that record as comments; tests/test_train_recipes.py fails when a file drifts from it.
`--check` reports configs that are missing or differ from the record (exit 1 if any), writing nothing.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

import visionattn

# The official repositories, at the commits read for the audit (the own families' parity fixtures name the same).
REPOS = {
    "nat": ("SHI-Labs/Neighborhood-Attention-Transformer", "d334f5bb0bd73cad05e5aeaf7c14cce3876a9650"),
    "biformer": ("rayleizhu/BiFormer", "1697bbbeafb8680524898f1dcaac10defd0604be"),
    "agent": ("LeapLabTHU/Agent-Attention", "207ce3eb357b22ef8a15f8fa21cd1f14697bbaba"),
    "slab": ("xinghaochen/SLAB", "f58db00b9db3959b5de03986f454aa5ff064279a"),
    "gcvit": ("NVlabs/GCVit", "8e1941f2099eeb99ee9e8472a5ddbd6b94a8958f"),
    "shvit": ("ysj9909/SHViT", "6a729ccf18e0b941714b529638bd3d9bacebcef0"),
    "efficientvim": ("mlvlab/EfficientViM", "304340cb9c339b61669250d058525c9cdadd5e93"),
}
FAMILY_REPO = {"nat": "nat", "dinat": "nat", "biformer": "biformer", "agent_attention": "agent", "slab": "slab",
               "gcvit": "gcvit", "shvit": "shvit", "efficientvim": "efficientvim"}
NO_SOURCE = "no official value"


@dataclass(frozen=True)
class V:
    """A recipe value and its source: "<repo>:<path> <what>" (a REPOS key), or "no official value: <why>"."""

    value: object
    src: str

    def comment(self) -> str:
        if self.src.startswith(NO_SOURCE) or self.src.startswith("zoo:"):
            return self.src
        repo, _, rest = self.src.partition(":")
        path, _, what = rest.partition(" ")
        return f"{path}@{REPOS[repo][1][:7]} {what}".rstrip()


def no(value, why: str) -> V:
    return V(value, f"{NO_SOURCE}: {why}")


# Keys of a recipe, in the order the files list them.
ORDER = ("model", "finetune_from", "starting_weights_ema", "img_size", "interpolation", "train_interpolation",
         "crop_pct",
         "batch_size", "epochs", "cooldown_epochs", "sched", "sched_on_updates", "warmup_epochs", "warmup_prefix",
         "opt", "opt_eps", "opt_betas", "lr", "lr_base", "lr_base_size", "scale_warmup_min_lr", "warmup_lr", "min_lr",
         "weight_decay", "no_weight_decay", "clip_grad", "clip_mode", "clip_exclude_head", "amp", "model_ema",
         "model_ema_decay", "drop_path", "aa", "color_jitter", "hflip", "scale", "ratio", "reprob", "remode",
         "recount", "repeated_aug", "mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "mixup_mode", "smoothing",
         "distill", "mesa", "mesa_start", "prepbn_steps", "bn_recalib_epochs", "official", "data_dir", "output_dir")


# ---------------------------------------------------------------------------------------------------- families
def _timm_aug(src: str, train_interp: V, repeated: V, interp: V) -> dict:
    """The timm / DeiT augmentation defaults every official trainer here uses."""
    return {
        "interpolation": interp, "train_interpolation": train_interp,
        "aa": V("rand-m9-mstd0.5-inc1", src), "color_jitter": V(0.4, src), "hflip": V(0.5, src),
        "scale": V([0.08, 1.0], src), "ratio": V([0.75, 1.3333333333333333], src), "reprob": V(0.25, src),
        "remode": V("pixel", src), "recount": V(1, src), "repeated_aug": repeated, "mixup": V(0.8, src),
        "cutmix": V(1.0, src), "mixup_prob": V(1.0, src), "mixup_switch_prob": V(0.5, src),
        "mixup_mode": V("batch", src), "smoothing": V(0.1, src),
    }


_NAT_YML = {"vitrpb_small": "vit_rpb_small", "vitrpb_base": "vit_rpb_base", "dinat_large_384_11x11": "dinat_large_384"}
_NAT_MODEL = {"nat": "classification/nat.py", "dinat": "classification/dinat.py",
              "dinat_s": "classification/dinats.py", "iso": "classification/isotropic.py"}
_NAT_TOP1 = {"nat_mini": 81.8, "nat_tiny": 83.2, "nat_small": 83.7, "nat_base": 84.3, "dinat_mini": 81.8,
             "dinat_tiny": 82.7, "dinat_small": 83.8, "dinat_base": 84.4, "dinat_large": 86.6, "dinat_large_384": 87.4,
             "dinat_large_384_11x11": 87.5, "dinat_s_tiny": 81.8, "dinat_s_small": 83.5, "dinat_s_base": 83.8,
             "dinat_s_large": 86.5, "dinat_s_large_384": 87.4, "nat_isotropic_small": 80.0,
             "dinat_isotropic_small": 80.8, "vitrpb_small": 81.2, "nat_isotropic_base": 81.6,
             "dinat_isotropic_base": 82.1, "vitrpb_base": 82.5}
_NAT_DROP = {"nat_mini": 0.2, "nat_tiny": 0.2, "nat_small": 0.3, "nat_base": 0.5, "dinat_mini": 0.2,
             "dinat_tiny": 0.2, "dinat_small": 0.3, "dinat_base": 0.5, "dinat_large": 0.35, "dinat_large_384": 0.35,
             "dinat_large_384_11x11": 0.35, "dinat_s_tiny": 0.2, "dinat_s_small": 0.3, "dinat_s_base": 0.5,
             "dinat_s_large": 0.35, "dinat_s_large_384": 0.35, "nat_isotropic_small": 0.1,
             "dinat_isotropic_small": 0.1, "vitrpb_small": 0.1, "nat_isotropic_base": 0.4,
             "dinat_isotropic_base": 0.4, "vitrpb_base": 0.4}
_NAT_FINETUNE = {"dinat_large": "dinat_large.in22k", "dinat_large_384": "dinat_large.in22k",
                 "dinat_large_384_11x11": "dinat_large_384_11x11.in22k", "dinat_s_large": "dinat_s_large.in22k",
                 "dinat_s_large_384": "dinat_s_large.in22k"}


def _nat(name: str) -> dict:
    yml = f"nat:classification/configs/{_NAT_YML.get(name, name)}.yml"
    train = "nat:classification/train.py"
    kind = "iso" if "isotropic" in name or name.startswith("vitrpb") else \
        "dinat_s" if name.startswith("dinat_s_") else "dinat" if name.startswith("dinat") else "nat"
    large = name in _NAT_FINETUNE
    r = _timm_aug(f"{train} (argparse default)", V("random", f"{train} --train-interpolation default"),
                  V(False, f"{train} --aug-repeats default 0"),
                  V("bicubic", f"{train} --interpolation default '': timm 0.5 resolve_data_config default"))
    md = f"nat:classification/{'DiNAT' if name.startswith('dinat') or kind == 'iso' else 'NAT'}.md"
    r.update({
        "img_size": V(384 if "384" in name else 224, f"{yml} img_size" if large else f"{train} --img-size default"),
        "crop_pct": V(1.0 if "384" in name else 0.875, f"{yml} crop_pct" if "384" in name
                      else f"{train} --crop-pct default"),
        "batch_size": V(64 if large else 128, f"{yml} batch_size"),
        "epochs": V(30 if large else 300, f"{yml} epochs"),
        "cooldown_epochs": V(0 if large else 10, f"{yml} cooldown_epochs"),
        "sched": V("constant", f"{yml} sched: linear, which the trainer's create_scheduler does not know: no "
                   "scheduler, the lr stays at lr") if large else V("cosine", f"{yml} sched"),
        "sched_on_updates": V(True, f"{yml} sched_epochwise: False"),
        "warmup_epochs": V(0 if large else (50 if name in ("nat_isotropic_base", "dinat_isotropic_base",
                                                          "vitrpb_base") else 20), f"{yml} warmup_epochs"),
        "warmup_prefix": V(False, f"{train} create_scheduler: warm-up inside the cosine length"),
        "opt": V("adamw", f"{train} --opt default"), "opt_eps": V(1e-8, f"{train} --opt-eps default"),
        "opt_betas": V([0.9, 0.999], f"{train} --opt-betas default"),
        "lr": V(5e-5 if large else 1e-3, f"{yml} lr (absolute; the trainer does not scale it)"),
        "scale_warmup_min_lr": V(False, f"{train} (no lr scaling)"),
        "warmup_lr": V(1e-6, f"{train} --warmup-lr default (unused: no warm-up)" if large else f"{yml} warmup_lr"),
        "min_lr": V(5e-6, f"{train} --min-lr default (unused: constant lr)" if large else f"{yml} min_lr"),
        "weight_decay": V({"dinat_large_384": 1e-10, "dinat_large_384_11x11": 1e-10,
                           "dinat_s_large_384": 1e-5}.get(name, 1e-4 if large else 0.05), f"{yml} weight_decay"),
        "no_weight_decay": V([], f"{train} create_optimizer_v2 (timm 0.5) skips only the model's no_weight_decay(), "
                             f"which {_NAT_MODEL[kind]} does not define (its no_weight_decay_keywords 'rpb' is never "
                             "read): rpb tables are decayed, 1-D params and biases are not"),
        "clip_grad": V(5.0, f"{train} --clip-grad default"), "clip_mode": V("norm", f"{train} --clip-mode default"),
        "clip_exclude_head": V(None, f"{train} model_parameters(exclude_head='agc' in clip_mode)"),
        "amp": V(None, f"{yml} amp: False") if large else V("fp16", f"{yml} amp: True (native torch.cuda.amp)"),
        "model_ema": V(name in ("nat_isotropic_base", "dinat_isotropic_base", "vitrpb_base"),
                       f"{yml} model_ema" if "base" in name and kind == "iso" else f"{train} --model-ema default"),
        "model_ema_decay": V(0.9998, f"{train} --model-ema-decay default"),
        "drop_path": V(_NAT_DROP[name], f"nat:{_NAT_MODEL[kind]} {name}() drop_path_rate (train.py passes none)"),
        "official": {"processes": no(8, "NAT.md / DiNAT.md run ./dist_train.sh $NUM_GPUS; 8 assumed"),
                     "batch_size": V(64 if large else 128, f"{yml} batch_size"),
                     "top1": V(_NAT_TOP1[name], f"{md} table"),
                     "weights": V(_nat_weights(name), f"{md} table"),
                     "source": V(_repo_line("nat", yml.split(":", 1)[1] + " + train.py"), yml)},
    })
    if large:
        r.update({"mixup": V(0.0, f"{yml} mixup"), "cutmix": V(0.0, f"{yml} cutmix"),
                  "mixup_prob": V(0.0, f"{yml} mixup_prob"),
                  "finetune_from": V(_NAT_FINETUNE[name], f"{md} table, Pre-training column (the yml names "
                                                              "no weights; train.py --initial-checkpoint)")})
    if name == "dinat_s_large":
        r["official"]["source"] = V(_repo_line("nat", yml.split(":", 1)[1] + " + train.py"),
                                    f"{yml} (its model: key says dinat_large, an upstream slip; DiNAT.md links it "
                                    "for DiNAT_s-Large)")
    return r


def _nat_weights(name: str) -> str:
    if name in _NAT_FINETUNE:
        return f"{name}.in22k_ft_in1k"
    return f"{name}.in1k"


def _deit_style(repo: str, main: str, timm_version: str) -> dict:
    """The values a DeiT-derived main.py (BiFormer, SHViT) sets by argparse default, with its epoch loop."""
    m = f"{repo}:{main}"
    return {
        "epochs": V(300, f"{m} --epochs default"),
        "cooldown_epochs": V(0, f"{m}: the loop runs --epochs; the scheduler's cooldown (10) is never reached"),
        "sched": V("cosine", f"{m} --sched default"),
        "sched_on_updates": V(False, f"{m} lr_scheduler.step(epoch) once per epoch"),
        "warmup_epochs": V(5, f"{m} --warmup-epochs default"),
        "warmup_prefix": V(False, f"{m} create_scheduler of timm {timm_version} (warm-up inside the cosine)"),
        "opt": V("adamw", f"{m} --opt default"), "opt_eps": V(1e-8, f"{m} --opt-eps default"),
        "opt_betas": V(None, f"{m} --opt-betas default None (AdamW's 0.9, 0.999)"),
        "lr": V(None, f"{m} linear_scaled_lr = lr * batch_size * world_size / 512"),
        "lr_base_size": V(512, f"{m} linear_scaled_lr"), "scale_warmup_min_lr": V(False, f"{m} scales --lr only"),
        "warmup_lr": V(1e-6, f"{m} --warmup-lr default"), "min_lr": V(1e-5, f"{m} --min-lr default"),
        "model_ema": V(True, f"{m} --model-ema default"),
        "model_ema_decay": V(0.99996, f"{m} --model-ema-decay default"),
    }


_BIFORMER_TOP1 = {"biformer_t": 81.4, "biformer_s": 83.8, "biformer_b": 84.3, "biformer_stl": 82.7,
                  "biformer_stl_nchw": 82.7}


def _biformer(name: str) -> dict:
    main = "biformer:main.py"
    readme = "biformer:README.md"
    r = _timm_aug(f"{main} argparse default", V("bicubic", f"{main} --train-interpolation default"),
                  V(True, f"{main} --repeated-aug default (RASampler, 3 repeats)"),
                  V("bicubic", "biformer:datasets.py transforms.Resize(size, interpolation=3)"))
    drop = {"biformer_s": V(0.15, f"{readme} training command"),
            "biformer_stl": V(0.1, "biformer:scripts/train.sh"),
            "biformer_stl_nchw": V(0.1, "biformer:scripts/train.sh")}.get(
        name, V(0.1, f"{main} --drop-path default (the repo gives no value for this variant)"))
    r.update({
        **_deit_style("biformer", "main.py", "0.8.15 (environment.yaml)"),
        "img_size": V(224, f"{readme} training command input_size"), "crop_pct": V(0.875, "biformer:datasets.py "
                                                                                  "build_transform int(256/224*size)"),
        "batch_size": V(128, f"{readme} training command batch_size"),
        "lr_base": V(5e-4, f"{readme} training command lr"),
        "weight_decay": V(0.05, f"{main} --weight-decay default"),
        "no_weight_decay": V([], "biformer:models/biformer.py no_weight_decay() names pos_embed / cls_token, "
                             "which BiFormer does not have: only 1-D params and biases (timm create_optimizer)"),
        "clip_grad": V(None, f"{main} --clip-grad default"), "clip_mode": V("norm", f"{main} (unused)"),
        "clip_exclude_head": V(None, f"{main} (no clipping)"),
        "amp": V("fp16", "biformer:engine.py torch.cuda.amp.autocast + NativeScaler"),
        "drop_path": drop,
        "official": {"processes": V(8, f"{readme} training command slurm.nodes=1 slurm.ngpus=8"),
                     "batch_size": V(128, f"{readme} training command"),
                     "top1": V(_BIFORMER_TOP1[name], f"{readme} table"),
                     "weights": V(f"{name}.in1k", f"{readme} table"),
                     "source": V(_repo_line("biformer", "main.py + README.md"), main)},
    })
    return r


_AGENT_CFG = {"agent_pvt_l": "agent_pvt_b"}
_AGENT_TOP1 = {"agent_deit_t": 74.9, "agent_deit_s": 80.5, "agent_deit_s_448": 83.1, "agent_deit_b": 82.0,
               "agent_pvt_t": 78.4, "agent_pvt_s": 82.2, "agent_pvt_m": 83.4, "agent_pvt_m_256": 83.8,
               "agent_pvt_l": 83.7, "agent_swin_t": 82.6, "agent_swin_s": 83.7, "agent_swin_s_288": 84.1,
               "agent_swin_b": 84.0, "agent_swin_b_384": 84.9, "agent_cswin_t": 83.1, "agent_cswin_s": 83.9,
               "agent_cswin_b": 84.7, "agent_cswin_b_384": 85.8}
# per variant: what its cfg file sets (None: the key is left to config.py)
_AGENT = {
    "agent_deit_t": dict(BATCH_SIZE=512, DROP_PATH_RATE=0.0),
    "agent_deit_s": dict(DROP_PATH_RATE=0.1), "agent_deit_s_448": dict(IMG_SIZE=448, BATCH_SIZE=64),
    "agent_deit_b": dict(DROP_PATH_RATE=0.3),
    **{n: dict(IMG_SIZE=img, BATCH_SIZE=bs, WEIGHT_DECAY=0.05, EPOCHS=300, WARMUP_EPOCHS=5, COOLDOWN_EPOCHS=10,
               BASE_LR=5e-4, WARMUP_LR=1e-6, MIN_LR=1e-5, CLIP_GRAD=clip, DROP_PATH_RATE=dp)
       for n, img, bs, clip, dp in (("agent_pvt_t", 224, 128, None, 0.1), ("agent_pvt_s", 224, 128, None, 0.1),
                                    ("agent_pvt_m", 224, 128, 1.0, 0.3), ("agent_pvt_m_256", 256, 64, 1.0, 0.3),
                                    ("agent_pvt_l", 224, 64, 1.0, 0.3))},
    "agent_swin_t": dict(DROP_PATH_RATE=0.2), "agent_swin_s": dict(DROP_PATH_RATE=0.3),
    "agent_swin_s_288": dict(IMG_SIZE=288, BATCH_SIZE=64, DROP_PATH_RATE=0.3, CROP=False),
    "agent_swin_b": dict(BATCH_SIZE=64, DROP_PATH_RATE=0.5),
    "agent_swin_b_384": dict(IMG_SIZE=384, BATCH_SIZE=32, DROP_PATH_RATE=0.5, EPOCHS=30, WARMUP_EPOCHS=5,
                             WEIGHT_DECAY=1e-8, BASE_LR=2e-5, WARMUP_LR=2e-8, MIN_LR=2e-7, CROP=False),
    **{n: dict(IMG_SIZE=224, BATCH_SIZE=bs, WEIGHT_DECAY=wd, EPOCHS=300, WARMUP_EPOCHS=20, COOLDOWN_EPOCHS=10,
               BASE_LR=5e-4, WARMUP_LR=1e-6, MIN_LR=1e-5, CLIP_GRAD=None, DROP_PATH_RATE=dp)
       for n, bs, wd, dp in (("agent_cswin_t", 128, 0.05, 0.2), ("agent_cswin_s", 128, 0.05, 0.4),
                             ("agent_cswin_b", 64, 0.1, 0.5))},
    "agent_cswin_b_384": dict(IMG_SIZE=384, BATCH_SIZE=32, WEIGHT_DECAY=1e-8, EPOCHS=20, WARMUP_EPOCHS=0,
                              COOLDOWN_EPOCHS=10, BASE_LR=5e-6, WARMUP_LR=5e-6, MIN_LR=5e-7, CLIP_GRAD=None,
                              DROP_PATH_RATE=0.7),
}
# config.py defaults of the Swin-derived trainers (Agent Attention, SLAB)
_SWIN_DEFAULTS = dict(IMG_SIZE=224, BATCH_SIZE=128, WEIGHT_DECAY=0.05, EPOCHS=300, WARMUP_EPOCHS=20,
                      COOLDOWN_EPOCHS=0, BASE_LR=5e-4, WARMUP_LR=5e-7, MIN_LR=5e-6, CLIP_GRAD=5.0, DROP_PATH_RATE=0.1,
                      CROP=True)
_CFG_KEY = dict(IMG_SIZE="DATA.IMG_SIZE", BATCH_SIZE="DATA.BATCH_SIZE", WEIGHT_DECAY="TRAIN.WEIGHT_DECAY",
                EPOCHS="TRAIN.EPOCHS", WARMUP_EPOCHS="TRAIN.WARMUP_EPOCHS", COOLDOWN_EPOCHS="TRAIN.COOLDOWN_EPOCHS",
                BASE_LR="TRAIN.BASE_LR", WARMUP_LR="TRAIN.WARMUP_LR", MIN_LR="TRAIN.MIN_LR",
                CLIP_GRAD="TRAIN.CLIP_GRAD", DROP_PATH_RATE="MODEL.DROP_PATH_RATE", CROP="TEST.CROP")


def _swin_style(repo: str, root: str, cfg_file: str, given: dict, main: str) -> dict:
    """The recipe of a yacs cfg of a Swin-derived trainer: the cfg file's values, config.py's for the rest."""
    def val(k):
        if k in given:
            return V(given[k], f"{repo}:{root}/{cfg_file} {_CFG_KEY[k]}")
        return V(_SWIN_DEFAULTS[k], f"{repo}:{root}/config.py _C.{_CFG_KEY[k]} default")

    m = f"{repo}:{root}/{main}"
    r = _timm_aug(f"{repo}:{root}/config.py _C.AUG defaults", V(None, f"{repo}:{root}/data/build.py "
                  "create_transform(interpolation=DATA.INTERPOLATION), the eval interpolation"),
                  V(False, f"{repo}:{root}/data/build.py DistributedSampler"),
                  V("bicubic", f"{repo}:{root}/config.py _C.DATA.INTERPOLATION"))
    crop = val("CROP")
    clip = val("CLIP_GRAD")
    r.update({
        "img_size": val("IMG_SIZE"),
        "crop_pct": V(0.875 if crop.value else 1.0, crop.src + (" (resize 256/224 x size, center crop)" if crop.value
                                                                 else " (resize to size, no crop)")),
        "batch_size": val("BATCH_SIZE"), "epochs": val("EPOCHS"), "cooldown_epochs": val("COOLDOWN_EPOCHS"),
        "sched": V("cosine", f"{repo}:{root}/config.py _C.TRAIN.LR_SCHEDULER.NAME"),
        "sched_on_updates": V(True, f"{repo}:{root}/lr_scheduler.py t_in_epochs=False"),
        "warmup_epochs": val("WARMUP_EPOCHS"),
        "warmup_prefix": V(False, f"{repo}:{root}/lr_scheduler.py (warm-up inside t_initial)"),
        "opt": V("adamw", f"{repo}:{root}/config.py _C.TRAIN.OPTIMIZER.NAME"),
        "opt_eps": V(1e-8, f"{repo}:{root}/config.py _C.TRAIN.OPTIMIZER.EPS"),
        "opt_betas": V([0.9, 0.999], f"{repo}:{root}/config.py _C.TRAIN.OPTIMIZER.BETAS"),
        "lr": V(None, f"{m} linear_scaled_lr = BASE_LR * BATCH_SIZE * world_size / 512"),
        "lr_base": val("BASE_LR"), "lr_base_size": V(512, f"{m} linear_scaled_lr"),
        "scale_warmup_min_lr": V(True, f"{m} linear_scaled_warmup_lr, linear_scaled_min_lr"),
        "warmup_lr": val("WARMUP_LR"), "min_lr": val("MIN_LR"), "weight_decay": val("WEIGHT_DECAY"),
        "clip_grad": V(clip.value, clip.src), "clip_mode": V("norm", f"{m} clip_grad_norm_(model.parameters())"),
        "clip_exclude_head": V(False, f"{m} clip_grad_norm_(model.parameters()): the head included"),
        "amp": V(None, f"{repo}:{root}/config.py _C.AMP = False (README commands pass no --amp)"),
        "drop_path": val("DROP_PATH_RATE"),
    })
    return r


# the model files whose no_weight_decay() / no_weight_decay_keywords() the Swin-derived optimizer.py reads
_HOST_MODELS = {
    "agent": {k: f"agent_transformer/models/agent_{k}.py" for k in ("deit", "pvt", "swin", "cswin")},
    "slab": {"deit": "classification/models/slab_deit.py", "pvt": "classification/models/slab_pvt.py",
             "swin": "classification/models/slab_swin.py", "cswin": "classification/models/slab_cswin.py"},
}


def _host_no_weight_decay(repo: str, kind: str) -> V:
    """What optimizer.py exempts from weight decay besides 1-D params and biases, for a host architecture: the
    model's no_weight_decay() names and no_weight_decay_keywords()."""
    src = f"{repo}:{_HOST_MODELS[repo][kind]}"
    return {
        "deit": V(["pos_embed", "cls_token"], f"{src} no_weight_decay() (the attention's own tables are decayed)"),
        "pvt": V([], f"{src} no_weight_decay() = {{'cls_token'}}, no such parameter: position embeddings decayed"),
        "swin": V(["*relative_position_bias_table"], f"{src} no_weight_decay_keywords() (ape off)"),
        "cswin": V([], f"{src} no_weight_decay() names pos_embed / cls_token, which CSwin does not have"),
    }[kind]


def _agent(name: str) -> dict:
    cfg_file = f"cfgs/{_AGENT_CFG.get(name, name)}.yaml"
    kind = name.split("_")[1]
    main = "main_ema.py" if kind == "cswin" else "main.py"
    readme = "agent:agent_transformer/README.md"
    r = _swin_style("agent", "agent_transformer", cfg_file, _AGENT[name], main)
    r["no_weight_decay"] = _host_no_weight_decay("agent", kind)
    if kind == "cswin":
        decay = {"agent_cswin_t": 0.99984, "agent_cswin_s": 0.99984, "agent_cswin_b": 0.99992,
                 "agent_cswin_b_384": 0.9998}[name]
        r["model_ema"] = V(True, f"{readme} main_ema.py --model-ema")
        r["model_ema_decay"] = V(decay, f"{readme} main_ema.py --model-ema-decay")
    else:
        r["model_ema"] = V(False, f"agent:agent_transformer/{main} (no EMA)")
    top = {"processes": V(8, f"{readme} --nproc_per_node=8"),
           "batch_size": V(r["batch_size"].value, r["batch_size"].src),
           "top1": V(_AGENT_TOP1[name], f"{readme} table"), "weights": V(f"{name}.in1k", f"{readme} table"),
           "source": V(_repo_line("agent", f"agent_transformer/{cfg_file} + {main}"),
                     f"agent:agent_transformer/{main}")}
    r["official"] = top
    if name == "agent_swin_b_384":
        r["finetune_from"] = V("agent_swin_b.in1k", f"{readme} fine-tune command --pretrained <224x224 weights> "
                               "(utils.py load_pretrained: agent biases, position and RPB tables interpolated)")
    if name == "agent_cswin_b_384":
        r["finetune_from"] = V("agent_cswin_b.in1k", f"{readme} fine-tune command --pretrained <224x224 weights>")
        r["starting_weights_ema"] = V(True, "agent:agent_transformer/utils_ema.py load_pretrained reads "
                                      "checkpoint['state_dict_ema']")
    return r


_SLAB_CFG = {"slab_pvt_t": "slab_pvt_t", "pvt_t_prepbn": "pvt_t_prepbn"}
_SLAB_TOP1 = {"deit_t_prepbn": 73.6, "deit_s_prepbn": 80.2, "slab_deit_t": 74.3, "slab_deit_s": 80.0,
              "pvt_t_prepbn": 76.0, "pvt_s_prepbn": 80.1, "pvt_m_prepbn": 81.7, "slab_pvt_t": 76.5,
              "swin_t_prepbn": 81.4, "slab_swin_t": 81.8, "slab_swin_s": 83.6, "slab_cswin_t": 82.8}
_SLAB_WEIGHTS = {"deit_t_prepbn", "deit_s_prepbn", "slab_deit_t", "slab_deit_s", "pvt_t_prepbn", "pvt_s_prepbn",
                 "pvt_m_prepbn", "slab_pvt_t", "swin_t_prepbn", "slab_swin_t", "slab_swin_s", "slab_cswin_t"}
_SLAB = {
    "deit_t_prepbn": dict(IMG_SIZE=224, DROP_PATH_RATE=0.0), "deit_s_prepbn": dict(IMG_SIZE=224, DROP_PATH_RATE=0.0),
    "slab_deit_t": dict(IMG_SIZE=224, DROP_PATH_RATE=0.0), "slab_deit_s": dict(IMG_SIZE=224, DROP_PATH_RATE=0.0),
    **{n: dict(IMG_SIZE=224, BATCH_SIZE=bs, WEIGHT_DECAY=0.05, EPOCHS=300, WARMUP_EPOCHS=5, COOLDOWN_EPOCHS=10,
               BASE_LR=5e-4, WARMUP_LR=1e-6, MIN_LR=1e-5, CLIP_GRAD=clip, DROP_PATH_RATE=dp)
       for n, bs, clip, dp in (("pvt_t_prepbn", 128, None, 0.0), ("pvt_s_prepbn", 64, None, 0.1),
                               ("pvt_m_prepbn", 128, 1.0, 0.3), ("slab_pvt_t", 128, None, 0.0),
                               ("slab_pvt_s", 64, None, 0.1), ("slab_pvt_m", 64, 1.0, 0.3))},
    "swin_t_prepbn": dict(DROP_PATH_RATE=0.1), "slab_swin_t": dict(DROP_PATH_RATE=0.2),
    "slab_swin_s": dict(DROP_PATH_RATE=0.3), "slab_swin_b": dict(DROP_PATH_RATE=0.5, BATCH_SIZE=64),
    **{n: dict(IMG_SIZE=224, BATCH_SIZE=bs, WEIGHT_DECAY=0.05, EPOCHS=300, WARMUP_EPOCHS=20, COOLDOWN_EPOCHS=10,
               BASE_LR=5e-4, WARMUP_LR=1e-6, MIN_LR=1e-5, CLIP_GRAD=None, DROP_PATH_RATE=dp)
       for n, bs, dp in (("slab_cswin_t", 256, 0.1), ("slab_cswin_s", 128, 0.3))},
}
# LN -> BN blend length T: the LinearNorm step of each model file (prepbn.py default 300000)
_SLAB_T = {"deit_s_prepbn": (300000, "classification/models/deit.py linearnorm (prepbn.py default step)"),
           "slab_deit_t": (60000, "classification/models/slab_deit.py linearnorm step=60000"),
           "slab_deit_s": (60000, "classification/models/slab_deit.py linearnorm step=60000"),
           "slab_swin_t": (60000, "classification/models/slab_swin.py linearnorm step=60000"),
           "slab_swin_s": (60000, "classification/models/slab_swin.py linearnorm step=60000"),
           "slab_swin_b": (60000, "classification/models/slab_swin.py linearnorm step=60000"),
           "slab_cswin_t": (120000, "classification/models/slab_cswin.py linearnorm step=120000"),
           "slab_cswin_s": (120000, "classification/models/slab_cswin.py linearnorm step=120000"),
           **{n: (300000, "classification/models/slab_pvt.py linearnorm (prepbn.py default step)")
              for n in ("pvt_t_prepbn", "pvt_s_prepbn", "pvt_m_prepbn", "slab_pvt_t", "slab_pvt_s", "slab_pvt_m")}}


def _slab(name: str) -> dict:
    cfg_file = f"cfgs/{name}.yaml"
    readme = "slab:README.md"
    r = _swin_style("slab", "classification", cfg_file, _SLAB[name], "main.py")
    kind = "deit" if "deit" in name else "cswin" if "cswin" in name else "swin" if "swin" in name else "pvt"
    r["crop_pct"] = V(0.875, "slab:classification/data/build.py TEST.CROP: resize int(256/224 x size) (short side), "
                             "center crop")
    r["no_weight_decay"] = _host_no_weight_decay("slab", kind)
    r["model_ema"] = V(False, f"{readme} trains with main.py (no EMA)")
    if name in _SLAB_T:
        t, src = _SLAB_T[name]
        r["prepbn_steps"] = V(t, f"slab:{src} (counted per training forward = per optimizer step)")
    r["bn_recalib_epochs"] = V(10, "slab:classification/main.py: after training, 10 passes of update_model (BN1d in "
                                   "train mode), each validated; max_accuracy counts them")
    r["official"] = {
        "processes": V(8, f"{readme} --nproc_per_node=8"),
        "batch_size": V(r["batch_size"].value, r["batch_size"].src),
        "top1": V(_SLAB_TOP1[name], f"{readme} checkpoints table") if name in _SLAB_TOP1 else
        no(None, "not in the README (no released checkpoint)"),
        "weights": V(f"{name}.in1k", f"{readme} checkpoints table") if name in _SLAB_WEIGHTS else
        no(None, "no released checkpoint"),
        "source": V(_repo_line("slab", f"classification/{cfg_file} + main.py"), "slab:classification/main.py")}
    return r


_GCVIT = {"gcvit_xxtiny": (128, 0.2, 79.9), "gcvit_xtiny": (128, 0.2, 82.0), "gcvit_tiny": (128, 0.2, 83.5),
          "gcvit_small": (32, 0.3, 84.3), "gcvit_base": (32, 0.5, 85.0)}


def _gcvit(name: str) -> dict:
    yml = f"gcvit:configs/{name.replace('gcvit_', 'gc_vit_')}.yml"
    train = "gcvit:train.py"
    bs, dp, top1 = _GCVIT[name]
    r = _timm_aug(f"{train} argparse default", V("random", f"{train} --train-interpolation default"),
                  V(False, f"{train} --aug-repeats default 0"),
                  V("bicubic", f"{train} --interpolation default '': the model's default_cfg (gcvit:models/gc_vit.py "
                    "_cfg)"))
    r.update({
        "img_size": V(224, f"{train} (model default)"), "crop_pct": V(0.875, f"{yml} crop_pct"),
        "batch_size": V(bs, f"{yml} batch_size"),
        "epochs": V(310, f"{yml} epochs (the cosine length; cooldown comes after: 320 epochs run)"),
        "cooldown_epochs": V(10, f"{yml} cooldown_epochs"), "sched": V("cosine", f"{yml} sched"),
        "sched_on_updates": V(True, f"{yml} lr_ep: False (per iteration)"),
        "warmup_epochs": V(20, f"{yml} warmup_epochs"),
        "warmup_prefix": V(False, "gcvit:scheduler/scheduler_factory.py (warm-up inside t_initial)"),
        "opt": V("adamw", f"{yml} opt"), "opt_eps": V(1e-8, f"{train} --opt-eps default"),
        "opt_betas": V([0.9, 0.999], f"{train} --opt-betas default"),
        "lr": V(0.005, f"{yml} lr (absolute; train.py does not scale it)"),
        "scale_warmup_min_lr": V(False, f"{train} (no lr scaling)"),
        "warmup_lr": V(1e-6, f"{yml} warmup_lr"), "min_lr": V(5e-6, f"{yml} min_lr"),
        "weight_decay": V(0.05, f"{yml} weight_decay"),
        "no_weight_decay": V([], "gcvit:models/gc_vit.py defines only no_weight_decay_keywords (never read by timm "
                             "0.9 create_optimizer_v2): relative position tables decayed (timm's port exempts them)"),
        "clip_grad": V(5.0, f"{yml} clip_grad"), "clip_mode": V("norm", f"{yml} clip_mode"),
        "clip_exclude_head": V(None, f"{train} model_parameters(exclude_head='agc' in clip_mode)"),
        "amp": V("fp16", f"{yml} amp: True (native)"), "model_ema": V(True, f"{yml} model_ema"),
        "model_ema_decay": V(0.9998, f"{yml} model_ema_decay"),
        "drop_path": V(dp, f"gcvit:models/gc_vit.py {name.replace('gcvit_', 'gc_vit_')}() drop_path_rate default"),
        "official": {"processes": no(8, "README runs --nproc_per_node <num-of-gpus>; 8 assumed"),
                     "batch_size": V(bs, f"{yml} batch_size"), "top1": V(top1, "gcvit:README.md table"),
                     "weights": V(f"{name}.in1k", "gcvit:README.md table (timm's converted copy)"),
                     "source": V(_repo_line("gcvit", f"{yml.split(':')[1]} + train.py"), train)},
    })
    return r


_SHVIT = {"shvit_s1": (0.025, 224, 72.8), "shvit_s2": (0.032, 224, 75.2), "shvit_s3": (0.035, 224, 77.4),
          "shvit_s4": (0.03, 256, 79.4)}


def _shvit(name: str) -> dict:
    main = "shvit:main.py"
    readme = "shvit:README.md"
    wd, img, top1 = _SHVIT[name]
    r = _timm_aug(f"{main} argparse default", V("bicubic", f"{main} --train-interpolation default"),
                  V(True, f"{main} --repeated-aug default (RASampler)"),
                  V("bicubic", "shvit:data/datasets.py transforms.Resize(size, interpolation=3)"))
    r.update({
        **_deit_style("shvit", "main.py", "0.5.4 (requirements.txt)"),
        "img_size": V(img, f"{readme} training command" + (" --input-size 256" if img == 256 else "")),
        "crop_pct": V(0.875, "shvit:data/datasets.py build_transform int(256/224*size)"),
        "batch_size": V(256, f"{main} --batch-size default"),
        "lr_base": V(1e-3, f"{main} --lr default"),
        "weight_decay": V(wd, f"{readme} training command --weight-decay"),
        "no_weight_decay": V([], "shvit:model/shvit.py defines no no_weight_decay(): 1-D params and biases only"),
        "clip_grad": V(0.02, f"{main} --clip-grad default"), "clip_mode": V("agc", f"{main} --clip-mode default"),
        "clip_exclude_head": V(False, "shvit:engine.py loss_scaler(parameters=model.parameters()): the head is "
                               "clipped too"),
        "amp": V(None, "shvit:engine.py trains in float32 (autocast commented out)"),
        "drop_path": no(None, "SHViT has no stochastic depth (timm's port takes no drop_path_rate)"),
        "official": {"processes": V(8, f"{readme} --nproc_per_node=8"), "batch_size": V(256, f"{main} default"),
                     "top1": V(top1, f"{readme} table"), "weights": V(f"{name}.in1k", f"{readme} table"),
                     "source": V(_repo_line("shvit", "main.py + README.md"), main)},
    })
    return r


_EVIM = {"efficientvim_m1": (72.9, 74.6), "efficientvim_m2": (75.4, 76.7), "efficientvim_m3": (77.6, 79.1),
         "efficientvim_m4": (79.4, 80.7)}


def _efficientvim(name: str) -> dict:
    cfg = "efficientvim:classification/utils/config.py"
    main = "efficientvim:classification/main.py"
    readme = "efficientvim:README.md"
    dist = name.endswith("_dist")
    base = name[:-5] if dist else name
    r = _timm_aug(f"{cfg} _C.AUG defaults", V(None, "efficientvim:classification/data/build.py "
                  "interpolation=DATA.INTERPOLATION (the eval interpolation)"),
                  V(False, "efficientvim:classification/data/build.py DistributedSampler"),
                  V("bicubic", f"{cfg} _C.DATA.INTERPOLATION"))
    r.update({
        "img_size": V(256 if base == "efficientvim_m4" else 224, f"{main} main(): 256 for EfficientViM_M4" if
                      base == "efficientvim_m4" else f"{cfg} _C.DATA.IMG_SIZE"),
        "crop_pct": V(0.875, "efficientvim:classification/data/build.py TEST.CROP int(256/224*size)"),
        "batch_size": V(256, f"{readme} example: 8 GPUs x 256"),
        "epochs": V(300, f"{readme} table (e300; the e450 runs are released too)" if not dist else
                    "efficientvim:classification/train_dist.sh (no --epochs: default 300)"),
        "cooldown_epochs": V(10, f"{main} --cooldown-epochs default"), "sched": V("cosine", f"{cfg} default"),
        "sched_on_updates": V(True, "efficientvim:classification/utils/lr_scheduler.py t_in_epochs=False"),
        "warmup_epochs": V(20, f"{main} --warmup-epochs default"),
        "warmup_prefix": V(True, f"{cfg} _C.TRAIN.LR_SCHEDULER.WARMUP_PREFIX"),
        "opt": V("adamw", f"{cfg} _C.TRAIN.OPTIMIZER.NAME"), "opt_eps": V(1e-8, f"{cfg} _C.TRAIN.OPTIMIZER.EPS"),
        "opt_betas": V([0.9, 0.999], f"{cfg} _C.TRAIN.OPTIMIZER.BETAS"),
        "lr": V(2e-3, f"{cfg} _C.TRAIN.BASE_LR (absolute; main.py does not scale it)"),
        "scale_warmup_min_lr": V(False, f"{main} (no lr scaling)"),
        "warmup_lr": V(2e-6, f"{cfg} _C.TRAIN.WARMUP_LR"), "min_lr": V(2e-5, f"{cfg} _C.TRAIN.MIN_LR"),
        "weight_decay": V(0.05, f"{cfg} _C.TRAIN.WEIGHT_DECAY"),
        "no_weight_decay": V([], "efficientvim:classification/models/EfficientViM.py defines no no_weight_decay(): "
                             "1-D params (D) and biases only"),
        "clip_grad": V(0.02, f"{cfg} _C.TRAIN.CLIP_GRAD"),
        "clip_mode": V("norm", "efficientvim:classification/utils/utils.py NativeScalerWithGradNormCount "
                       "clip_grad_norm_"),
        "clip_exclude_head": V(False, f"{main} parameters=model.parameters()"),
        "amp": V("fp16", f"{cfg} _C.AMP_ENABLE (torch.cuda.amp.autocast, fp16)"),
        "model_ema": V(True, f"{main} --model_ema default"), "model_ema_decay": V(0.9995, f"{main} default"),
        "drop_path": V(0.0, "efficientvim:classification/models/EfficientViM.py (no stochastic depth)"),
        "mesa": V(0.0 if dist else 1.0, f"{main} mesa=1.0 from epoch int(0.25 * EPOCHS), off with distillation"),
        "mesa_start": V(0.25, f"{main} int(0.25 * config.TRAIN.EPOCHS)"),
        "official": {"processes": V(8, f"{readme} example"), "batch_size": V(256, f"{readme} example"),
                     "top1": V(_EVIM[base][1 if dist else 0], f"{readme} table"),
                     "weights": V(f"{name}.in1k" if dist else f"{name}.e300_in1k", f"{readme} table"),
                     "source": V(_repo_line("efficientvim", "classification/main.py + utils/config.py"),
                                 main)},
    })
    if dist:
        r["distill"] = V({"type": "hard", "teacher": "regnety_160.deit_in1k", "teacher_pretrained": True,
                          "alpha": 0.5, "tau": 1.0},
                         f"{cfg} _C.TRAIN.DISTIILATION (train_dist.sh --distillation-type hard; teacher regnety_160 "
                         "with DeiT's released weights)")
    return r


def _repo_line(repo: str, files: str) -> str:
    name, commit = REPOS[repo]
    return f"github.com/{name}@{commit[:10]} {files}"


_BUILDERS = {"nat": _nat, "dinat": _nat, "biformer": _biformer, "agent_attention": _agent, "slab": _slab,
             "gcvit": _gcvit, "shvit": _shvit, "efficientvim": _efficientvim}


def recipe(name: str) -> dict[str, V]:
    """The audited recipe of a zoo model: config key -> V(value, source), in file order."""
    family = visionattn.get_family(name)
    r = _BUILDERS[family](str(name))
    r["model"] = V(str(name), "zoo: the timm name of the official model")
    r["data_dir"] = no("/data/imagenet", "your ImageNet-layout folder")
    r["output_dir"] = no(f"output/imagenet/{name}", "where this run writes")
    if r["lr"].value is not None:  # an absolute lr: the base / size keys would only mislead
        r.pop("lr_base", None)
        r.pop("lr_base_size", None)
    unknown = set(r) - set(ORDER)
    if unknown:
        raise KeyError(f"{name}: keys outside ORDER: {sorted(unknown)}")
    return {k: r[k] for k in ORDER if k in r}


def values(name: str) -> dict:
    """The config mapping of a recipe (what the YAML holds)."""
    out = {}
    for k, v in recipe(name).items():
        out[k] = {kk: vv.value for kk, vv in v.items()} if isinstance(v, dict) else v.value
    return out


def _flow(key: str, value) -> str:
    text = yaml.safe_dump({key: value}, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return text[1:-1]  # the braces of the one-key flow mapping


def render(name: str) -> str:
    """The YAML file of a recipe: a header, then one key per line with its source as a comment."""
    family = visionattn.get_family(name)
    repo = FAMILY_REPO[family]
    rec = recipe(name)
    lines = [f"# {name} ({family}): ImageNet-1k recipe of the official code, {_MARK}.",
             f"# official code: github.com/{REPOS[repo][0]} at commit {REPOS[repo][1]} (file@commit below)",
             "# every value names its source (file @ commit) or says why there is none;"
             " `python tools/train.py --config THIS --print-recipe` shows it for your processes and batch."]
    for k, v in rec.items():
        if isinstance(v, dict):
            lines.append(f"{k}:")
            for kk, vv in v.items():
                lines.append(f"  {_flow(kk, vv.value)}  # {vv.comment()}")
        else:
            lines.append(f"{_flow(k, v.value)}  # {v.comment()}")
    return "\n".join(lines) + "\n"


def readme() -> str:
    """configs/imagenet/README.md: per family, each config with its paper top-1, official checkpoint, recipe
    source and the values chosen without an official source."""
    by_family: dict[str, list] = {}
    for name in visionattn.list_models():
        by_family.setdefault(name.family, []).append(str(name))
    out = ["# ImageNet-1k recipes", "",
           f"This file is {_MARK} from its audit of the official training code (edit the tool, not this file). "
           "Every value in a config names the official file @ commit it comes from, or why "
           "none exists; `python tools/train.py --config configs/imagenet/X.yaml --print-recipe` shows the "
           "effective recipe (global batch, lr / warm-up lr / min lr after batch scaling, schedule, starting "
           "weights) for your number of processes beside the official run's. Fine-tune recipes (`finetune_from`) "
           "refuse to start without their starting weights: pass `pretrained=true` (downloads them), "
           "`pretrained=true pretrained_path=FILE`, or `initial_checkpoint=FILE`.", "",
           "Differences from the official trainers that remain (not config values): the DeiT-style loops "
           "(BiFormer, SHViT) step the epoch schedule after each epoch with the epoch just finished, so their "
           "second epoch repeats the first's lr (here each epoch gets its own); Swin-style loops (Agent "
           "Attention, SLAB, EfficientViM) index the per-step schedule from 0, timm's trainer from 1.", ""]
    for family in sorted(by_family):
        repo = FAMILY_REPO[family]
        out += [f"## {family}", "", f"Official code: github.com/{REPOS[repo][0]} at commit {REPOS[repo][1]}", "",
                "| config | paper top-1 | official checkpoint | official recipe | values without an official source |",
                "|---|---|---|---|---|"]
        for name in by_family[family]:
            rec = recipe(name)
            off = rec["official"]
            top1 = off["top1"].value
            weights = off["weights"].value or "none released"
            src = off["source"].value.split(" ", 1)[1]  # the files (the repository @ commit heads the section)
            unsourced = [f"{k} ({v.src.split(': ', 1)[1]})" for k, v in _leaves(rec)
                         if v.src.startswith(NO_SOURCE) and k not in ("data_dir", "output_dir")]
            out.append(f"| [{name}.yaml]({name}.yaml) | {top1 if top1 is not None else '-'} | {weights} | {src} | "
                       f"{'; '.join(unsourced) or '-'} |")
        out.append("")
    return "\n".join(out)


def _leaves(rec: dict):
    for k, v in rec.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                yield f"{k}.{kk}", vv
        else:
            yield k, v


_MARK = "written by tools/make_configs.py"


def _head(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(400)
    except OSError:
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "configs" / "imagenet"))
    p.add_argument("--check", action="store_true", help="report missing or drifted files, write nothing")
    args = p.parse_args(argv)
    out = Path(args.out)
    names = visionattn.list_models()
    files = {out / f"{n}.yaml": render(n) for n in names}
    files[out / "README.md"] = readme()
    if args.check:
        bad = [str(f) for f, text in files.items() if not f.is_file() or f.read_text() != text]
        print("differ from tools/make_configs.py: " + (", ".join(bad) if bad else "none"))
        return 1 if bad else 0
    if out.exists() and not out.is_dir():
        print(f"make_configs.py: error: --out {out} is a file, not a folder", file=sys.stderr)
        return 2
    # only files this tool wrote are replaced: a hand-written file of the same name is refused, before any write
    foreign = [f for f in files if f.exists() and _MARK not in _head(f)]
    if foreign:
        print(f"make_configs.py: error: {foreign[0]} was not written by this tool ({len(foreign)} such files); "
              "move them away or choose another --out", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for f, text in files.items():
        f.write_text(text)
    print(f"wrote {len(names)} configs and README.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
