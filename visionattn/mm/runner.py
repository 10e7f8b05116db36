"""Train / test entry points on mmengine's Runner, with mmdet's / mmseg's tool flags.

`tools/{det,seg}_{train,test}.py` call `train_main` / `test_main`. Training adds `WeightsOnlyCheckpointHook`
(also in the configs' runtime bases), so the checkpoints it writes load with torch's default weights_only=True
(`--resume`, the test tools); nothing else is ever unpickled.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp

__all__ = ["train_main", "test_main", "train_parser", "test_parser"]


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    p.add_argument("--work-dir", help="the dir to save logs and models")
    p.add_argument("--cfg-options", nargs="+", action=DictAction,
                   help="override config settings, key=value pairs (e.g. model.backbone.model_name=biformer_t)")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none", help="job launcher")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return p


def train_parser(task: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"Train a {task} model (mmengine Runner)")
    p.add_argument("config", help="train config file path")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper)")
    p.add_argument("--auto-scale-lr", action="store_true", help="scale the lr by the total batch size")
    p.add_argument("--resume", nargs="?", type=str, const="auto",
                   help="resume from this checkpoint, or the latest one in work_dir when no path is given")
    return _common(p)


def test_parser(task: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"Test (and eval) a {task} model (mmengine Runner)")
    p.add_argument("config", help="test config file path")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--out", help="dump the predictions to this pickle file (mmdet DumpDetResults / mmseg)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (the config's tta_model/pipeline)")
    return _common(p)


def _load_cfg(args, scope: str):
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir", None) is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.setdefault("default_scope", scope)
    return cfg


def _build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    import visionattn.mm  # noqa: F401  (registers the backbones even without custom_imports)

    return Runner.from_cfg(cfg) if "runner_type" not in cfg else RUNNERS.build(cfg)


def train_main(argv=None, scope: str = "mmdet"):
    """`tools/det_train.py` / `tools/seg_train.py`; returns the trained model."""
    args = train_parser("detection" if scope == "mmdet" else "segmentation").parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    cfg = _load_cfg(args, scope)
    if args.amp:
        if cfg.optim_wrapper.get("type", "OptimWrapper") == "AmpOptimWrapper":
            print("AMP is already enabled in the config")
        else:
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
    if args.auto_scale_lr:
        if "auto_scale_lr" not in cfg or "base_batch_size" not in cfg.auto_scale_lr:
            raise ValueError("--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=...)` in the config")
        cfg.auto_scale_lr.enable = True
    hooks = list(cfg.get("custom_hooks", []))
    if not any(h.get("type") == "WeightsOnlyCheckpointHook" for h in hooks):
        cfg.custom_hooks = [*hooks, dict(type="WeightsOnlyCheckpointHook")]
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    runner = _build_runner(cfg)
    from .checkpoint import mm_checkpoint_globals

    with mm_checkpoint_globals():  # `load_from` / `--resume` may be mmcv 1.x checkpoints (numpy in `meta`)
        return runner.train()


def test_main(argv=None, scope: str = "mmdet") -> dict:
    """`tools/det_test.py` / `tools/seg_test.py`; returns the metrics dict."""
    args = test_parser("detection" if scope == "mmdet" else "segmentation").parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    cfg = _load_cfg(args, scope)
    cfg.load_from = args.checkpoint
    if args.tta:
        if "tta_model" not in cfg or "tta_pipeline" not in cfg:
            raise ValueError("--tta needs `tta_model` and `tta_pipeline` in the config")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        if not args.out.endswith((".pkl", ".pickle")):
            raise ValueError(f"--out must be a .pkl/.pickle file, got {args.out!r}")
        if scope == "mmdet":
            evaluator = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
            cfg.test_evaluator = [*evaluator, dict(type="DumpDetResults", out_file_path=args.out)]
        else:
            cfg.test_evaluator["output_dir"] = osp.splitext(args.out)[0]
            cfg.test_evaluator["keep_results"] = True
    runner = _build_runner(cfg)
    from .checkpoint import mm_checkpoint_globals

    with mm_checkpoint_globals():  # official mmdet 2.x / mmseg 0.x checkpoints: numpy values in `meta`
        return runner.test()
