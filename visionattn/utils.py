"""Model-level helpers shared by the zoo files and the tools.

`check_backend` validates an attention-backend argument; `attn_modules` / `set_attn_backend` find and switch the
attention modules that declare `backends`; `init_weights_` / `trunc_normal_unless_meta` are the own families'
meta-safe init; `is_reparameterizable` / `fuse_for_inference` fold re-parameterisable models; `LinearHeadMixin` /
`ClassifierHeadMixin` are timm's classifier API of models ending in a Linear `head` / a `ClassifierHead`;
`is_graph_capture` is True under torch.compile, torch.export and jit tracing; `inference_cached` keeps a
parameter-derived tensor between inference calls; `pad_right_bottom` pads a map to multiples of a size, symbolic
sizes included. The fused CPU inference Linear / Mlp
live in `visionattn.layers.fused`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

__all__ = [
    "check_backend",
    "attn_modules",
    "set_attn_backend",
    "init_weights_",
    "trunc_normal_unless_meta",
    "is_reparameterizable",
    "fuse_for_inference",
    "LinearHeadMixin",
    "ClassifierHeadMixin",
    "is_graph_capture",
    "pad_right_bottom",
    "inference_cached",
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
    """timm classifier API (and `forward`) for models ending in 'avg' (or no, '') pooling of NHWC features,
    `head_drop` and a Linear `head` on `num_features`."""

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

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((1, 2))  # NHWC features
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ClassifierHeadMixin:
    """timm classifier API (and `forward`) for models ending in timm's `ClassifierHead` (`head.fc`), 'avg' or ''
    pooling."""

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        if global_pool is not None and global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def is_graph_capture() -> bool:
    """True while torch.compile / torch.export (dynamo) or torch.jit tracing runs the code."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def inference_cached(
        module: nn.Module, key: tuple, params: Sequence[torch.Tensor], fn: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """`fn()`, computed once per (key, parameter state) while no gradient can flow into `params`.

    In training, under autograd with trainable `params`, or while tracing / compiling, `fn()` runs every time
    (so gradients, FX graphs and compiled graphs see the computation). Otherwise the result is kept on
    `module` and reused until a parameter is replaced (new storage), changed in place (its version counter:
    `load_state_dict`, optimizer steps), or moved to another device / dtype.
    """
    if (module.training or is_graph_capture() or any(not isinstance(p, torch.Tensor) for p in params)
            or (torch.is_grad_enabled() and any(p.requires_grad for p in params))):
        return fn()
    stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    cache = module.__dict__.setdefault("_inference_cache", {})
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    out = fn()
    cache[key] = (stamp, out)
    return out


def pad_right_bottom(x: torch.Tensor, multiple: int | tuple[int, int], channels_last: bool = False) -> torch.Tensor:
    """Zero-pad an NCHW (or NHWC) map at the right / bottom to multiples of `multiple` (one int or (h, w))."""
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    h, w = (x.shape[1], x.shape[2]) if channels_last else (x.shape[-2], x.shape[-1])
    # floor divisions, not a remainder: the ONNX exporter has no remainder of symbolic sizes (dynamic height /
    # width); the early return only for plain ints, so symbolic, FX-proxy and traced sizes never branch
    ph, pw = (h + mh - 1) // mh * mh - h, (w + mw - 1) // mw * mw - w
    if isinstance(ph, int) and isinstance(pw, int) and not (ph or pw):
        return x
    return F.pad(x, (0, 0, 0, pw, 0, ph)) if channels_last else F.pad(x, (0, pw, 0, ph))
