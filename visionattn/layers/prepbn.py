"""Progressive Re-parameterized BatchNorm (PRepBN, SLAB, ICML 2024) and its inference folding.

`RepBN(C)`: `BN(x) + alpha * x` over the last (channel) axis. `LinearNorm` (the official name; alias `PRepBN`):
`lambda * LN(x) + (1 - lambda) * RepBN(x)` in training, `lambda = r0 * iter / total_step`, with `iter` a buffer
decremented per training forward (the official rule) or set per optimizer step by `PRepBNScheduler` /
`set_prepbn_step`; RepBN only in eval. `RepBN.affine()` is the eval-mode map `a * x + b`; the `fold_affine_*`
helpers fold it into the next Linear / Conv, and a norm that cannot be folded becomes a `ChannelAffine`.
`recalibrate_bn` is the official post-training BN recalibration. Notes: docs/models.md (SLAB).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..utils import inference_cached, is_graph_capture
from .fused import FusedLinear

__all__ = [
    "RepBN",
    "LinearNorm",
    "PRepBN",
    "ChannelAffine",
    "PRepBNScheduler",
    "set_prepbn_step",
    "prepbn_modules",
    "repbn_affine",
    "fold_affine_into_linear",
    "fold_affine_into_conv_in",
    "fold_affine_after_conv",
    "is_repbn_norm",
    "linear_norm",
    "bn_recalibration_mode",
    "recalibrate_bn",
]


class ChannelAffine(nn.Module):
    """`x * weight + bias` over the last axis (what a fused RepBN becomes when nothing can absorb it)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.to(x.dtype), x, self.weight.to(x.dtype))


@torch.fx.wrap
def _apply_affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a * x + b`; a token-transposed stream (ViT patch embed) gets a contiguous result, so the next Linear runs
    one addmm instead of matmul + bias add (slab_deit_t bs1 about -3 %). An FX leaf: a traced graph decides the
    layout at run time as eager does (same kernels downstream, bit-equal outputs)."""
    if not x.is_contiguous() and not is_graph_capture() and not (torch.is_grad_enabled() and x.requires_grad):
        return torch.addcmul(b, x, a, out=torch.empty_like(x, memory_format=torch.contiguous_format))
    return torch.addcmul(b, x, a)


class RepBN(nn.Module):
    """BatchNorm over the channel (last) axis plus a learnable identity branch: `BN(x) + alpha * x`."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, device=None, dtype=None):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.alpha = nn.Parameter(torch.ones(1, device=device, dtype=dtype))
        self.bn = nn.BatchNorm1d(channels, eps=eps, momentum=momentum, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not self.training and not bn.training and bn.track_running_stats and bn.running_mean is not None:
            # eval: one `a * x + b` pass with (a, b) folded once per parameter state (inference_cached: not under
            # autograd into the parameters, nor while tracing) instead of BatchNorm + scale + add on every call
            params = (self.alpha, bn.weight, bn.bias, bn.running_mean, bn.running_var)
            if all(p is not None for p in params):
                a, b = inference_cached(self, ("affine", x.dtype), params, lambda: self._affine_as(x.dtype))
                return _apply_affine(x, a, b)
        shape = x.shape
        # (M, C) BatchNorm1d == the official (B, C, N) BatchNorm1d: both reduce over every non-channel axis.
        y = bn(x.reshape(-1, shape[-1])).reshape(shape)
        return y + self.alpha * x

    def _affine_as(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # differentiable (no torch.no_grad): inference_cached runs it uncached whenever a gradient can flow
        bn = self.bn
        inv = torch.rsqrt(bn.running_var.double() + bn.eps)
        scale = bn.weight.double() * inv
        return (scale + self.alpha.double()).to(dtype), (bn.bias.double() - scale * bn.running_mean.double()).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        # timm blocks read `norm.weight.device/dtype` to build their buffers.
        return self.bn.weight

    @torch.no_grad()
    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) with RepBN(x) == a * x + b in eval mode."""
        bn = self.bn
        inv = torch.rsqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv)
        a = gamma * inv + self.alpha.double()
        b = beta - gamma * inv * bn.running_mean.double()
        return a, b

    def fuse(self) -> ChannelAffine:
        a, b = self.affine()
        return ChannelAffine(a.float(), b.float())


class LinearNorm(nn.Module):
    """PRepBN: LayerNorm -> RepBN blended linearly over `step` training forwards (official `LinearNorm`).

    Args:
        dim: channels.
        norm1: factory of the start norm (LayerNorm); norm2: factory of the end norm (RepBN).
        warm: LN-only warm-up forwards before the blend starts.
        step: length T of the blend (forwards / optimizer steps).
        r0: initial weight of norm1.
    """

    def __init__(
        self,
        dim: int,
        norm1: Callable[[int], nn.Module] = nn.LayerNorm,
        norm2: Callable[[int], nn.Module] = RepBN,
        warm: int = 0,
        step: int = 300000,
        r0: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        if warm < 0:
            raise ValueError(f"warm must be >= 0, got {warm}")
        self.register_buffer("warm", torch.tensor(warm, device=device))
        self.register_buffer("iter", torch.tensor(step, device=device))
        self.register_buffer("total_step", torch.tensor(step, device=device))
        self.r0 = r0
        # False: a PRepBNScheduler / set_prepbn_step owns the counter; forwards do not decrement it.
        self.auto_step = True
        # True: once lambda is 0 skip the (zero-weighted) LN branch. Off by default: the official code keeps
        # computing it, and skipping leaves the LN parameters without gradients (DDP needs
        # find_unused_parameters=True then). Costs one host sync per forward.
        self.skip_finished_ln = False
        # Host-side hint: the warm-up branch needs a host check only while `warm` may be > 0.
        self._maybe_warm = warm > 0
        self.warm_steps = warm  # LN-only steps before the blend, when a trainer drives it (set_train_step)
        dd = {} if device is None and dtype is None else {"device": device, "dtype": dtype}
        self.norm1 = norm1(dim, **dd)
        self.norm2 = norm2(dim, **dd)

    @property
    def weight(self) -> torch.Tensor:
        return self.norm2.weight

    def set_train_step(self, step: int) -> None:
        """Trainer hook (any module may define it): the blend at optimizer step `step`; the trainer calls it before
        the forwards of every step, so forwards no longer count."""
        set_prepbn_step(self, step, warm_steps=self.warm_steps, auto_step=False)

    @property
    def ratio(self) -> float:
        """Current LN weight lambda (used by the next training forward; 1.0 during warm-up)."""
        if int(self.warm) > 0:
            return 1.0
        return self.r0 * int(self.iter) / int(self.total_step)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._maybe_warm = True  # re-check the loaded warm-up counter on the next training forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.norm2(x)
        if self._maybe_warm:
            if int(self.warm) > 0:
                if self.auto_step:
                    self.warm.sub_(1)
                return self.norm1(x)  # official warm-up: LN only, BN statistics untouched
            self._maybe_warm = False
        # lambda from the counter before the decrement, as the official float tensor division; no host sync
        lam = self.r0 * self.iter / self.total_step
        if self.auto_step:
            self.iter.sub_((self.iter > 0).to(self.iter.dtype))
        if self.skip_finished_ln and float(lam) == 0.0:
            return self.norm2(x)
        lam = lam.to(x.dtype)
        return lam * self.norm1(x) + (1.0 - lam) * self.norm2(x)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.norm2, RepBN):
            raise TypeError(f"cannot fold {type(self.norm2).__name__}: norm2 must be RepBN")
        return self.norm2.affine()

    def fuse(self) -> ChannelAffine:
        a, b = self.affine()
        return ChannelAffine(a.float(), b.float())

    def extra_repr(self) -> str:
        return f"total_step={int(self.total_step)}, r0={self.r0}"


PRepBN = LinearNorm


def is_repbn_norm(m: nn.Module) -> bool:
    return isinstance(m, (RepBN, LinearNorm))


def repbn_affine(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) in float64 of a RepBN / LinearNorm in eval mode."""
    if isinstance(m, (RepBN, LinearNorm)):
        return m.affine()
    raise TypeError(f"expected RepBN or LinearNorm, got {type(m).__name__}")


def prepbn_modules(model: nn.Module) -> list[LinearNorm]:
    return [m for m in model.modules() if isinstance(m, LinearNorm)]


def set_prepbn_step(
    model: nn.Module,
    step: int,
    total_steps: int | None = None,
    warm_steps: int = 0,
    auto_step: bool | None = None,
) -> int:
    """Set every LinearNorm of `model` to training step `step`: LN-only while `step < warm_steps`, then
    lambda = r0 * (1 - (step - warm_steps) / total_step), clamped at 0.

    total_steps: also change T (`total_step` buffer). auto_step: also set the per-forward decrement flag.
    Returns the number of modules changed.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warm_steps < 0:
        raise ValueError(f"warm_steps must be >= 0, got {warm_steps}")
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    mods = prepbn_modules(model)
    for m in mods:
        if total_steps is not None:
            m.total_step.fill_(total_steps)
        total = int(m.total_step)
        m.warm.fill_(max(warm_steps - step, 0))
        m.warm_steps = warm_steps
        m.iter.fill_(max(total - max(step - warm_steps, 0), 0))
        m._maybe_warm = True
        if auto_step is not None:
            m.auto_step = auto_step
    return len(mods)


class PRepBNScheduler:
    """Per-iteration driver of the PRepBN blend: call `step(global_step)` once per optimizer step.

    Makes the schedule independent of how many forwards a step runs (gradient accumulation, EMA/teacher passes
    in train mode). The counters stay buffers, so a resumed run continues where the checkpoint stopped even
    without the scheduler; `state_dict()` / `load_state_dict()` are provided for trainers that save schedulers.
    """

    def __init__(self, model: nn.Module, total_steps: int | None = None):
        self.model = model
        self.total_steps = total_steps
        self.last_step = -1
        if not prepbn_modules(model):
            raise ValueError("model has no LinearNorm (PRepBN) module to schedule")
        for m in prepbn_modules(model):
            m.auto_step = False
            if total_steps is not None:
                m.total_step.fill_(total_steps)

    def step(self, global_step: int | None = None) -> None:
        self.last_step = self.last_step + 1 if global_step is None else int(global_step)
        set_prepbn_step(self.model, self.last_step)

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        if state.get("total_steps") is not None:
            self.total_steps = int(state["total_steps"])
            for m in prepbn_modules(self.model):
                m.total_step.fill_(self.total_steps)
        if self.last_step >= 0:
            set_prepbn_step(self.model, self.last_step)


@torch.no_grad()
def fold_affine_into_linear(linear: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    """A Linear equal to `linear(a * x + b)` (bias created when `linear` had none)."""
    w = linear.weight.double()
    bias = linear.bias.double() if linear.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    new = nn.Linear(linear.in_features, linear.out_features, bias=True, device=linear.weight.device,
                    dtype=linear.weight.dtype)
    new.weight.copy_(w * a.to(w.device)[None, :])
    new.bias.copy_(bias + w @ b.to(w.device))
    if type(linear) is FusedLinear:
        new.__class__ = FusedLinear  # keep the fused CPU inference path of a model built by its entrypoint
    return new


@torch.no_grad()
def fold_affine_into_conv_in(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> nn.Conv2d:
    """A Conv2d equal to `conv(a * x + b)` over input channels; only for unpadded convs (padding would see 0,
    not b) with groups 1."""
    if conv.groups != 1 or any(p != 0 for p in conv.padding) or conv.padding_mode != "zeros":
        raise ValueError("fold_affine_into_conv_in needs an unpadded conv with groups=1")
    w = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    new = _conv_like(conv)
    new.weight.copy_(w * a.to(w.device)[None, :, None, None])
    new.bias.copy_(bias + (w.sum((2, 3)) @ b.to(w.device)))
    return new


@torch.no_grad()
def fold_affine_after_conv(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> nn.Conv2d:
    """A Conv2d equal to `a * conv(x) + b` over output channels (bias term `a * bias + b`: the official
    `PatchEmbed.merge_bn` omits the `alpha * bias` part of it)."""
    w = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    new = _conv_like(conv)
    new.weight.copy_(w * a.to(w.device)[:, None, None, None])
    new.bias.copy_(a.to(w.device) * bias + b.to(w.device))
    return new


def _conv_like(conv: nn.Conv2d) -> nn.Conv2d:
    return nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )


def linear_norm(step: int, ln_eps: float = 1e-6) -> Callable[[int], LinearNorm]:
    """Norm-layer factory `dim -> LinearNorm(LayerNorm(eps) -> RepBN, step)`."""
    return partial(LinearNorm, norm1=partial(nn.LayerNorm, eps=ln_eps), norm2=RepBN, step=step)



def bn_recalibration_mode(model: nn.Module) -> nn.Module:
    """The official post-training BN recalibration state: model in eval mode (LinearNorm = RepBN, counters
    frozen, no dropout/drop-path) with every BatchNorm in training mode, so forwards only re-estimate running
    statistics (run them under torch.no_grad)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, reset: bool = False) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from `batches` (an iterable of model inputs, e.g. images
    of the training loader without mixup), as the official recipe's final epochs; returns the model in eval mode.
    reset: start from fresh statistics (cumulative average) instead of the momentum update."""
    bn_recalibration_mode(model)
    if reset:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
    for x in batches:
        model(x)
    return model.eval()
