"""The training loop: `Trainer(cfg).setup()` builds data, model, optimizer and losses on timm's utilities and
opens the run (`run.Run`: plan, resume, output_dir); `fit()` trains, validates, checkpoints and returns the
run's summary.

Determinism: with `workers: 0` (or `no_aug`), a run stopped (`max_steps`) or killed at any moment and resumed
is bit-identical to an uninterrupted one (every rank's RNG states are in the checkpoint; the data order is a
function of seed, epoch and rank). With worker processes and random augmentation, the images after a
mid-epoch resume are augmented with other random numbers.

Models that follow the optimizer step (SLAB's PRepBN blend) expose `set_train_step(step)` on a module; the
trainer calls it before the forwards of every step.
"""
from __future__ import annotations

import contextlib
import random
import time

import numpy as np
import timm
import torch
from timm.data import Mixup
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import model_parameters
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn
from tqdm import tqdm

from .checkpoint import get_rng_state, latest_checkpoint, load_weights, set_rng_state
from .config import ConfigError
from .data import build_dataset, check_num_classes, class_names, eval_loader, resolve_data, train_transform
from .dist import agree, all_finite, autocast, dist_env, init_distributed, resolve_device, unwrap
from .distill import DistillationLoss
from .model import build_model, check_model_name, step_hooks
from .recipe import effective
from .run import Run
from .validate import evaluate
from .weights import check_starting_weights, describe, load_starting_weights

__all__ = ["Trainer", "NonFiniteLoss", "param_group_fn"]


class NonFiniteLoss(RuntimeError):
    pass


class _SkipSampler(torch.utils.data.Sampler):
    """The wrapped sampler's indices without the first `skip` (mid-epoch resume)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


def param_group_fn(cfg: dict):
    """timm's parameter grouping for the optimizer: None leaves it to timm (1-D params, biases and the model's
    no_weight_decay() undecayed); with `no_weight_decay` given, timm's grouping with that list (fnmatch patterns)
    instead of the model's, as the official trainers that ignore the model's list."""
    names = cfg["no_weight_decay"]
    if names is None or not cfg["weight_decay"]:
        return None
    names, wd = list(names), cfg["weight_decay"]
    if cfg["layer_decay"] is not None:
        return lambda m: param_groups_layer_decay(m, weight_decay=wd, layer_decay=cfg["layer_decay"],
                                                  no_weight_decay_list=names)
    return lambda m: param_groups_weight_decay(m, weight_decay=wd, no_weight_decay_list=names)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One training run of `cfg` (a validated config, `visionattn.train.load_config`)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.t0 = time.time()
        self.world, self.rank, self.local_rank = dist_env()
        self.distributed = self.world > 1
        self.main = self.rank == 0
        self.device = resolve_device(cfg, self.local_rank)
        if cfg["amp"] == "fp16" and self.device.type != "cuda":
            raise ConfigError("amp: fp16 needs a CUDA device (use amp: bf16 on CPU)")
        self.run = Run(cfg, self.main)
        self.out = self.run.out
        # counters and bests (restored on resume)
        self.step = self.epoch = self.micro_in_epoch = 0
        self.best_top1 = self.best_top1_ema = self.best_step = self.best_ema_step = None
        self.last_metrics: dict = {}
        self.wall_before = 0.0
        self.starting_weights: dict | None = None

    def _agree(self, fn):
        return agree(fn, self.main, self.distributed)

    # ----------------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Everything a user can get wrong is checked before the first write: data and classes, the plan for
        output_dir, model and its starting weights, optimizer, the checkpoint to resume; then rank 0 opens the
        run."""
        self._setup_data()
        if self.distributed:
            init_distributed(self.cfg, self.device)
        self.run.plan = self._agree(self.run.make_plan)  # read only
        self._setup_runtime()
        self._setup_model()
        self._setup_loader()
        self._setup_optim()
        self._setup_losses()
        self._maybe_resume()
        self._wrap()
        self._agree(lambda: self.run.open(step=self.step, epoch=self.epoch, world=self.world, classes=self.classes,
                                          class_source=self.class_source, starting_weights=self.starting_weights))

    def _setup_data(self) -> None:
        """One class mapping for the run; val is checked against it before the first step."""
        cfg = self.cfg
        check_model_name(cfg["model"])
        self.classes, self.class_source = class_names(cfg)
        self.train_ds = build_dataset(cfg, cfg["train_split"], self.classes, source=self.class_source)
        build_dataset(cfg, cfg["val_split"], self.classes, source=self.class_source)
        self.num_classes = check_num_classes(cfg, self.classes)

    def _setup_runtime(self) -> None:
        cfg = self.cfg
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        _seed_all(cfg["seed"])  # same initial weights on every rank

    def _setup_model(self) -> None:
        cfg = self.cfg
        fresh = not self.run.plan.get("checkpoint")  # a resumed run takes its weights from the checkpoint
        if fresh:
            check_starting_weights(cfg)
        model = build_model(cfg, self.num_classes)
        if fresh:
            self.starting_weights = load_starting_weights(model, cfg)
            if self.main:
                print(describe(self.starting_weights), flush=True)
        if cfg["grad_checkpointing"]:
            model.set_grad_checkpointing(True)
        self.data_cfg = resolve_data(cfg, model)
        self.train_ds.transform = train_transform(cfg, self.data_cfg)
        self.val_loader, _ = eval_loader(cfg, self.data_cfg, cfg["val_split"], self.classes, self.rank, self.world,
                                         source=self.class_source)
        model.to(self.device)
        if cfg["channels_last"]:
            model.to(memory_format=torch.channels_last)
        if self.distributed and cfg["sync_bn"]:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.step_hooks = step_hooks(model)
        self._step_hooks()  # before the EMA copy is made: its modules see the same step

    def _step_hooks(self) -> None:
        for m in self.step_hooks:
            m.set_train_step(self.step)

    def _setup_loader(self) -> None:
        cfg = self.cfg
        if cfg["repeated_aug"]:
            self.sampler = RepeatAugSampler(self.train_ds, num_replicas=self.world, rank=self.rank, shuffle=True)
        else:
            self.sampler = torch.utils.data.DistributedSampler(
                self.train_ds, num_replicas=self.world, rank=self.rank, shuffle=True, seed=cfg["seed"])
        self.updates_per_epoch = len(self.sampler) // cfg["batch_size"] // cfg["accum_steps"]
        if self.updates_per_epoch == 0:
            raise ConfigError(f"the training split has {len(self.train_ds)} images, fewer than one global batch "
                              f"({cfg['batch_size']} x {self.world} processes x {cfg['accum_steps']} accum_steps)")
        self.micro_per_epoch = self.updates_per_epoch * cfg["accum_steps"]

    def _setup_optim(self) -> None:
        cfg = self.cfg
        eff = effective(cfg, self.world)
        self.global_batch, self.lr = eff["global_batch"], eff["lr"]
        opt_kwargs = {}
        if cfg["opt_eps"] is not None:
            opt_kwargs["eps"] = cfg["opt_eps"]
        if cfg["opt_betas"] is not None:
            opt_kwargs["betas"] = tuple(cfg["opt_betas"])
        try:
            self.optimizer = create_optimizer_v2(
                self.model, opt=cfg["opt"], lr=self.lr, weight_decay=cfg["weight_decay"], momentum=cfg["momentum"],
                layer_decay=cfg["layer_decay"], param_group_fn=param_group_fn(cfg), **opt_kwargs)
        except (AssertionError, ValueError) as e:
            raise ConfigError(f"config key 'opt': {e}") from None
        try:
            self.scheduler, self.num_epochs = create_scheduler_v2(
                self.optimizer, sched=cfg["sched"], num_epochs=cfg["epochs"], cooldown_epochs=cfg["cooldown_epochs"],
                min_lr=eff["min_lr"], warmup_lr=eff["warmup_lr"], warmup_epochs=cfg["warmup_epochs"],
                warmup_prefix=cfg["warmup_prefix"], step_on_epochs=not cfg["sched_on_updates"],
                updates_per_epoch=self.updates_per_epoch)
        except (AssertionError, ValueError) as e:
            raise ConfigError(f"config key 'sched': {e}") from None
        if self.scheduler is None:
            raise ConfigError(f"config key 'sched' must name a timm scheduler (cosine, step, constant, ...), got "
                              f"{cfg['sched']!r}")
        self.scaler = torch.amp.GradScaler("cuda") if cfg["amp"] == "fp16" else None
        self.ema = ModelEmaV3(self.model, decay=cfg["model_ema_decay"], use_warmup=cfg["model_ema_warmup"]) \
            if cfg["model_ema"] else None

    def _setup_losses(self) -> None:
        cfg = self.cfg
        self.mixup = None
        if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
            self.mixup = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                               switch_prob=cfg["mixup_switch_prob"], mode=cfg["mixup_mode"],
                               label_smoothing=cfg["smoothing"], num_classes=self.num_classes)
            base = SoftTargetCrossEntropy()
        elif cfg["smoothing"] > 0:
            base = LabelSmoothingCrossEntropy(cfg["smoothing"])
        else:
            base = nn.CrossEntropyLoss()
        self.soft_ce = SoftTargetCrossEntropy()
        d = cfg["distill"]
        self.distill = d["type"] != "none"
        if not self.distill:
            self.loss_fn = base
            return
        check_model_name(d["teacher"])
        if not d["teacher_checkpoint"] and not d["teacher_pretrained"]:
            raise ConfigError(f"distillation needs the teacher's weights: pass distill.teacher_checkpoint=FILE or "
                              f"distill.teacher_pretrained=true (downloads {d['teacher']})")
        try:
            teacher = timm.create_model(d["teacher"], pretrained=d["teacher_pretrained"] and not
                                        d["teacher_checkpoint"], num_classes=self.num_classes, **d["teacher_kwargs"])
        except (RuntimeError, OSError) as e:
            raise ConfigError(f"distill.teacher {d['teacher']!r}: {str(e).splitlines()[0][:200]}; pass "
                              "distill.teacher_checkpoint=FILE") from None
        if d["teacher_checkpoint"]:
            load_weights(teacher, d["teacher_checkpoint"])
        teacher.to(self.device).eval().requires_grad_(False)
        if hasattr(self.model, "set_distilled_training"):
            self.model.set_distilled_training(True)
        self.loss_fn = DistillationLoss(base, teacher, d["type"], d["alpha"], d["tau"])

    def _wrap(self) -> None:
        cfg = self.cfg
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=cfg["find_unused_parameters"])
        if cfg["compile"]:
            self.model = torch.compile(self.model)
        # different augmentation / drop-path streams per rank (the weights are already equal)
        if self.run.resumed_from is None:
            _seed_all(cfg["seed"] + self.rank)

    def _maybe_resume(self) -> None:
        """Restore the checkpoint the plan names into the model, optimizer, schedule, EMA and counters."""
        state = self.run.read_resume_state(self.classes, self.world)
        if state is None:
            return
        load_weights(self.model, state["weights_path"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema_path"] is not None:
            load_weights(self.ema.module, state["ema_path"])
        self.step, self.epoch, self.micro_in_epoch = state["step"], state["epoch"], state["micro_in_epoch"]
        self.best_top1, self.best_top1_ema = state["best_top1"], state["best_top1_ema"]
        self.best_step, self.best_ema_step = state.get("best_step"), state.get("best_ema_step")
        self.last_metrics = state.get("last_metrics", {})
        self.wall_before = state.get("wall_s", 0.0)
        set_rng_state(state["rng"][self.rank] if self.rank < len(state["rng"]) else state["rng"][0])

    def close(self) -> None:
        self.run.close()

    # ---------------------------------------------------------------------------------------------- checkpoints
    def save(self) -> None:
        """Write a checkpoint of this step as a whole (every rank's RNG gathered; rank 0 writes)."""
        rng = get_rng_state()
        if self.distributed:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, rng)
            rng = gathered
        else:
            rng = [rng]
        if not self.main:
            return
        model = unwrap(self.model)
        weights = {"model.safetensors": model.state_dict}
        if self.ema is not None:
            weights["model_ema.safetensors"] = self.ema.module.state_dict
        state = {
            "format": "visionattn.train_state",
            "model": self.cfg["model"],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "micro_in_epoch": self.micro_in_epoch,
            "best_top1": self.best_top1,
            "best_top1_ema": self.best_top1_ema,
            "best_step": self.best_step,
            "best_ema_step": self.best_ema_step,
            "last_metrics": self.last_metrics,
            "wall_s": self.wall_before + time.time() - self.t0,
            "world_size": self.world,
            "rng": rng,
            "config": self.cfg,
            "classes": self.classes,
        }
        self.run.save(self.step, weights, state, self._meta())

    def _meta(self) -> dict:
        return {"model": self.cfg["model"], "step": self.step, "epoch": self.epoch}

    def _export_best(self, model: bool, ema: bool) -> None:
        """best(_ema).safetensors, after the checkpoint that records them as best (see `Run._restore_best`)."""
        if not self.main:
            return
        if model:
            self.run.export_best("best.safetensors", unwrap(self.model).state_dict(),
                                 {**self._meta(), "top1": self.best_top1})
        if ema:
            self.run.export_best("best_ema.safetensors", self.ema.module.state_dict(),
                                 {**self._meta(), "top1": self.best_top1_ema})

    # ------------------------------------------------------------------------------------------------- training
    def _loader(self, epoch: int):
        cfg = self.cfg
        self.sampler.set_epoch(epoch)
        skip = self.micro_in_epoch * cfg["batch_size"]
        g = torch.Generator().manual_seed(cfg["seed"] * 100003 + epoch * 1009 + self.rank)
        return torch.utils.data.DataLoader(
            self.train_ds, batch_size=cfg["batch_size"], sampler=_SkipSampler(self.sampler, skip),
            num_workers=cfg["workers"], pin_memory=cfg["pin_memory"] and self.device.type == "cuda",
            drop_last=True, generator=g, persistent_workers=False)

    def _clip_params(self, model: nn.Module):
        exclude = self.cfg["clip_exclude_head"]
        if exclude is None:
            exclude = self.cfg["clip_mode"] == "agc"  # timm's trainer
        return model_parameters(model, exclude_head=exclude)

    def train_epoch(self, epoch: int) -> dict:
        cfg = self.cfg
        model = self.model
        unwrapped = unwrap(model)
        model.train()
        accum = cfg["accum_steps"]
        loader = self._loader(epoch)
        start_update = self.micro_in_epoch // accum
        pbar = tqdm(total=self.updates_per_epoch, initial=start_update, desc=f"epoch {epoch + 1}/{self.num_epochs}",
                    disable=not self.main, dynamic_ncols=True, leave=True)
        loss_sum, loss_n = 0.0, 0
        mesa_on = cfg["mesa"] > 0 and self.ema is not None and not self.distill \
            and epoch >= cfg["mesa_start"] * cfg["epochs"]
        self.optimizer.zero_grad(set_to_none=True)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            if cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            self._step_hooks()
            last_micro = (self.micro_in_epoch + 1) % accum == 0
            sync = last_micro or not self.distributed
            ctx = model.no_sync() if not sync and hasattr(model, "no_sync") else contextlib.nullcontext()
            with ctx:
                with autocast(cfg["amp"], self.device):
                    out = model(x)
                    loss = self.loss_fn(x, out, y) if self.distill else self.loss_fn(out, y)
                    if mesa_on:
                        with torch.no_grad():
                            t = self.ema.module(x).float().softmax(-1)
                        loss = loss + cfg["mesa"] * self.soft_ce(out if torch.is_tensor(out) else out[0], t)
                if not all_finite(loss, self.distributed):
                    raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at step {self.step + 1} "
                                        f"(epoch {epoch + 1})")
                scaled = loss / accum
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            self.micro_in_epoch += 1
            loss_sum += loss.item()
            loss_n += 1
            if not last_micro:
                continue
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if cfg["clip_grad"] is not None:
                dispatch_clip_grad(self._clip_params(unwrapped), value=cfg["clip_grad"], mode=cfg["clip_mode"])
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.ema is not None:
                self.ema.update(unwrapped, step=self.step)
            self.scheduler.step_update(num_updates=self.step)
            lr = self.optimizer.param_groups[0]["lr"]
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", lr=f"{lr:.2e}")
            if self.main and self.step % cfg["log_interval"] == 0:
                self.run.scalar("train/loss", loss.item(), self.step)
                self.run.scalar("train/lr", lr, self.step)
            if cfg["max_steps"] is not None and self.step >= cfg["max_steps"]:
                break
            if cfg["checkpoint_interval"] and self.step % cfg["checkpoint_interval"] == 0 \
                    and self.micro_in_epoch < self.micro_per_epoch:
                self.save()
        pbar.close()
        return {"train_loss": loss_sum / max(loss_n, 1), "lr": self.optimizer.param_groups[0]["lr"]}

    def validate(self) -> dict:
        cfg = self.cfg
        m = evaluate(self.model, self.val_loader, self.device, cfg["amp"], cfg["channels_last"], self.distributed)
        out = {"top1": m["top1"], "top5": m["top5"], "val_loss": m["loss"]}
        if self.ema is not None:
            e = evaluate(self.ema.module, self.val_loader, self.device, cfg["amp"], cfg["channels_last"],
                         self.distributed)
            out.update({"ema_top1": e["top1"], "ema_top5": e["top5"]})
        return out

    @torch.no_grad()
    def recalibrate_bn(self, epoch: int) -> None:
        """SLAB: one pass over the training data with only the BatchNorm layers in train mode (the model's and the
        EMA's), refreshing their running statistics."""
        models = [self.model] + ([self.ema.module] if self.ema is not None else [])
        for model in models:
            model.eval()
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        for x, _y in self._loader(epoch):
            x = x.to(self.device)
            if self.cfg["channels_last"]:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.cfg["amp"], self.device):
                for model in models:
                    model(x)

    def fit(self) -> dict:
        """Train `epochs` (+ cooldown) epochs, then `bn_recalib_epochs` BN recalibration passes; every epoch and
        pass ends with its log row, a checkpoint and the best weights."""
        cfg = self.cfg
        total = self.num_epochs + cfg["bn_recalib_epochs"]
        stopped = cfg["max_steps"] is not None and self.step >= cfg["max_steps"] and self.epoch < self.num_epochs
        while self.epoch < total and not stopped:
            epoch = self.epoch
            t_epoch = time.time()
            recalib = epoch >= self.num_epochs
            if recalib:
                self.recalibrate_bn(epoch)
                row = {"bn_recalib": epoch - self.num_epochs + 1}
            else:
                row = self.train_epoch(epoch)
                if self.micro_in_epoch < self.micro_per_epoch:  # max_steps reached mid-epoch
                    self.save()
                    stopped = True
                    break
            self.epoch += 1
            self.micro_in_epoch = 0
            if not recalib:
                self.scheduler.step(self.epoch)
            last = self.epoch == total
            improved = ema_improved = False
            if recalib or self.epoch % cfg["eval_interval"] == 0 or last or self.epoch == self.num_epochs:
                metrics = self.validate()
                row.update(metrics)
                self.last_metrics = metrics
                improved = self.best_top1 is None or metrics["top1"] > self.best_top1
                if improved:
                    self.best_top1, self.best_step = metrics["top1"], self.step
                ema_improved = "ema_top1" in metrics and (self.best_top1_ema is None
                                                          or metrics["ema_top1"] > self.best_top1_ema)
                if ema_improved:
                    self.best_top1_ema, self.best_ema_step = metrics["ema_top1"], self.step
            row.update({"epoch": self.epoch, "step": self.step, "epoch_s": time.time() - t_epoch})
            # the row first, then the checkpoint, then best: a kill in between resumes from the previous
            # checkpoint (its row dropped again) or from this one (best written again from it)
            if self.main:
                self.run.log(row)
            self.save()
            self._export_best(improved, ema_improved)
            if self.main:
                msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
                print(msg, flush=True)
            if cfg["max_steps"] is not None and self.step >= cfg["max_steps"] and not recalib:
                stopped = self.epoch < self.num_epochs
                if stopped:
                    break
        return self._summary(completed=not stopped and self.epoch >= total)

    def _summary(self, completed: bool) -> dict:
        latest = latest_checkpoint(self.out) if self.main else None
        summary = {
            "model": self.cfg["model"],
            "epochs": min(self.epoch, self.num_epochs),
            "epochs_planned": self.num_epochs,
            "bn_recalib_passes": max(self.epoch - self.num_epochs, 0),
            "steps": self.step,
            "completed": completed,
            "best_top1": self.best_top1,
            "final_top1": self.last_metrics.get("top1"),
            "final_top5": self.last_metrics.get("top5"),
            "best_top1_ema": self.best_top1_ema,
            "final_top1_ema": self.last_metrics.get("ema_top1"),
            "wall_s": round(self.wall_before + time.time() - self.t0, 3),
            "world_size": self.world,
            "global_batch": self.global_batch,
            "lr": self.lr,
            "num_classes": self.num_classes,
            "input_size": list(self.data_cfg["input_size"]),
            "output_dir": str(self.out),
            "checkpoint": str(latest) if latest is not None else None,
        }
        if self.main:
            self.run.finish(summary)
        return summary
