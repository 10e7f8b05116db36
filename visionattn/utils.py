"""Helpers shared by every zoo model file, and model-level switches used by the tools.

Stable interface (the own families of both model helpers and the tools rely on it; extend, do not change):

* ``check_backend(backend, allowed, name)`` -- the one validation of an attention-backend argument.
* ``attn_modules(model)`` / ``set_attn_backend(model, backend)`` -- every attention module that declares
  ``backends`` (a class attribute: the names its ``backend`` attribute accepts) and its switch.
* ``init_weights_(module)`` / ``trunc_normal_unless_meta(t)`` -- the official init of the own families (Linear
  trunc-normal std 0.02 and zero bias, LayerNorm 1 / 0), a no-op on the meta device: the one meta-safe init.
* ``is_reparameterizable`` / ``fuse_for_inference``, ``LinearHeadMixin``.
* ``inference_linear(layer, x)`` / ``inference_mlp(mlp, x)`` -- ``nn.Linear`` / timm ``Mlp`` forwards that, for
  fp32 CPU inference outside autograd, autocast and graph capture, run oneDNN's matmul with the bias and GELU
  fused into it (``torch.ops.mkldnn._linear_pointwise``, the op inductor emits for the same pattern): about half
  the time of ``F.linear`` on CPU (which first copies the bias into the output), and no extra pass for GELU.
  Equal to ``F.linear`` / ``F.gelu`` to fp32 rounding; everything else (training, other devices / dtypes,
  compile / export, ``torch.backends.mkldnn.enabled = False``) runs ``F.linear`` / ``F.gelu``. Under torch.fx the
  two are leaf functions, so a traced graph picks the same kernel as eager at run time.
  ``is_graph_capture()`` -- True under torch.compile / torch.export / jit tracing.

Drop-path schedules are timm's ``timm.layers.calculate_drop_path_rates`` (it computes on the CPU, so it also
works under ``torch.device("meta")``).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
import torch.fx
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.flop_counter import register_flop_formula

__all__ = [
    "check_backend",
    "attn_modules",
    "set_attn_backend",
    "init_weights_",
    "trunc_normal_unless_meta",
    "is_reparameterizable",
    "fuse_for_inference",
    "LinearHeadMixin",
    "inference_linear",
    "inference_mlp",
    "is_graph_capture",
]


def check_backend(backend: str | None, allowed: Iterable[str], name: str = "attn_backend") -> str:
    """`backend` if it is one of `allowed` (None means 'auto'); ValueError naming `name` and the choices."""
    allowed = tuple(allowed)
    if backend is None:
        backend = "auto"
    if not isinstance(backend, str) or backend not in allowed:
        raise ValueError(f"{name} must be one of {allowed} or None, got {backend!r}")
    return backend


def attn_modules(model: nn.Module) -> list[nn.Module]:
    """The sub-modules of `model` whose kernel backend can be switched: they declare a class attribute
    ``backends`` (the accepted names) and hold the current choice in ``backend``."""
    return [m for m in model.modules()
            if isinstance(getattr(type(m), "backends", None), tuple) and hasattr(m, "backend")]


def set_attn_backend(model: nn.Module, backend: str) -> nn.Module:
    """Set the kernel backend of every attention module of `model` (in place); returns the model.

    ValueError when `model` has no such module (e.g. an adopted timm model: nothing would change) or when
    `backend` is not accepted by every one of them (nothing is changed then).
    """
    mods = attn_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention module with a selectable kernel backend "
                         "(visionattn.utils.attn_modules is empty)")
    allowed = tuple(b for b in type(mods[0]).backends if all(b in type(m).backends for m in mods))
    check_backend(backend, allowed, "backend")
    for m in mods:
        m.backend = backend
    return model


def trunc_normal_unless_meta(t: torch.Tensor, std: float = 0.02) -> None:
    """timm's trunc_normal_, skipped on the meta device (where it is slow and meaningless)."""
    if not t.is_meta:
        trunc_normal_(t, std=std)


def init_weights_(m: nn.Module, std: float = 0.02) -> None:
    """The official init of the own families, for ``model.apply``: Linear weight trunc-normal(std), bias 0;
    LayerNorm weight 1, bias 0; every other module keeps PyTorch's default. Nothing happens on the meta device."""
    if isinstance(m, nn.Linear):
        if m.weight.is_meta:
            return
        trunc_normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.weight is not None and not m.weight.is_meta:
        nn.init.ones_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def is_reparameterizable(model: nn.Module) -> bool:
    """True when some sub-module can be fused or re-parameterised for inference (SLAB, SHViT, EfficientViM)."""
    return any(
        hasattr(m, name) for m in model.modules() for name in ("fuse", "reparameterize", "switch_to_deploy")
    )


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """A fused eval-mode copy of `model`: its own `fuse()` when it has one, else timm's `reparameterize_model`."""
    from timm.utils.model import reparameterize_model

    model = copy.deepcopy(model).eval()
    if callable(getattr(model, "fuse", None)):
        fused = model.fuse()
        model = fused if isinstance(fused, nn.Module) else model
    else:
        model = reparameterize_model(model, inplace=True)
    return model.eval()


class LinearHeadMixin:
    """timm classifier API for models ending in 'avg' (or no, '') pooling + a Linear `head` on
    `num_features`."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def is_graph_capture() -> bool:
    """True while torch.compile / torch.export (dynamo) or torch.jit tracing runs the code."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


_LINEAR_POINTWISE = (torch.ops.mkldnn._linear_pointwise
                     if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                     else None)


if _LINEAR_POINTWISE is not None:
    @register_flop_formula(_LINEAR_POINTWISE)
    def _linear_pointwise_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
        # torch.utils.flop_counter knows F.linear but not its oneDNN twin: without this the fast path counts 0
        return 2 * math.prod(x[:-1]) * weight[0] * weight[1]


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # graph capture first: dynamo refuses to trace torch.backends and leaves the fusion to inductor anyway
    return (
        not is_graph_capture() and _LINEAR_POINTWISE is not None and torch.backends.mkldnn.enabled
        and x.device.type == "cpu" and x.dtype == torch.float32
        and weight.dtype == torch.float32 and weight.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not torch.is_autocast_enabled("cpu")
    )


def _no_hooks(*modules: nn.Module) -> bool:
    # a module with hooks runs as a module (feature hooks, observers see their call)
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _plain_linear(layer: nn.Module) -> bool:
    # a Linear subclass with its own forward (LoRA, quantized...) runs as itself
    return isinstance(layer, nn.Linear) and type(layer).forward is nn.Linear.forward and _no_hooks(layer)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if _onednn_ok(x, weight):
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _linear_gelu_linear(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                        b2: torch.Tensor | None, approximate: str) -> torch.Tensor:
    if _onednn_ok(x, w1):
        h = _LINEAR_POINTWISE(x, w1, b1, "gelu", [], approximate)
        return _LINEAR_POINTWISE(h, w2, b2, "none", [], "")
    return F.linear(F.gelu(F.linear(x, w1, b1), approximate=approximate), w2, b2)


# FX leaves: a traced graph calls the same function as eager, so it picks the same kernel at run time (timm's FX
# tests demand bit-equal outputs; F.linear and oneDNN round differently)
torch.fx.wrap("_linear")
torch.fx.wrap("_linear_gelu_linear")


def inference_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)`; for an `nn.Linear`, oneDNN's matmul in fp32 CPU inference (see the module docstring)."""
    if _plain_linear(layer):
        return _linear(x, layer.weight, layer.bias)
    return layer(x)


def inference_mlp(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for timm's `Mlp` (fc1 -> GELU -> fc2); GELU fused into fc1 for fp32 CPU inference."""
    act = module.act
    # dropout with p > 0 keeps the module path whatever the mode: an FX graph traced in eval must still drop in train
    if (isinstance(act, nn.GELU) and isinstance(module.norm, nn.Identity) and not (module.drop1.p or module.drop2.p)
            and _no_hooks(module, module.act) and _plain_linear(module.fc1) and _plain_linear(module.fc2)):
        return _linear_gelu_linear(x, module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2.bias,
                                   act.approximate)
    return module(x)
