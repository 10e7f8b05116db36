"""Checks every zoo backbone's tests share: the timm model API, features, grad checkpointing, manifests, empty
batches. Both model helpers' test files use them: keep the signatures stable (add keyword arguments only).
The full timm contract (cfgs, FX, compile, export) is tests/test_timm_contract.py."""
from __future__ import annotations

import math

import timm
import torch
from parity_utils import load_manifest, manifest_state_dict


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hw(input_size) -> tuple[int, int]:
    return (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)


def check_timm_api(name: str, input_size, num_classes: int = 10, **kwargs):
    """Forward/backward and the timm classifier API on inputs of `input_size` (int or (H, W)); `kwargs` go to
    the model (`img_size` included)."""
    h, w = _hw(input_size)
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    x = torch.randn(2, 3, h, w)
    out = model(x)
    assert out.shape == (2, num_classes), out.shape
    out.float().square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "head" in n)

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.num_features), pre.shape
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-5)
    assert model.get_classifier() is not None
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)
    assert isinstance(model.no_weight_decay(), (set, list, tuple))
    gm = model.group_matcher()
    assert "stem" in gm and "blocks" in gm
    return model


def check_features_only(name: str, input_size, strides=(4, 8, 16, 32), **kwargs):
    h, w = _hw(input_size)
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    assert tuple(model.feature_info.reduction()) == tuple(strides)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert len(feats) == len(strides)
    for f, s, c in zip(feats, strides, model.feature_info.channels()):
        assert f.shape[1] == c, (f.shape, c)
        assert f.shape[2] == -(-h // s) and f.shape[3] == -(-w // s), (f.shape, s, h, w)
    return feats


def check_forward_intermediates(name: str, input_size=224, **kwargs):
    model = timm.create_model(name, num_classes=7, **kwargs).eval()
    x = torch.randn(1, 3, *_hw(input_size))
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
        only = model.forward_intermediates(x, intermediates_only=True)
        assert len(only) == len(inter)
        for a, b in zip(only, inter):
            assert torch.allclose(a, b, atol=1e-5)
    pruned = model.prune_intermediate_layers(indices=(0, 1), prune_head=True)
    assert pruned == [0, 1] or tuple(pruned) == (0, 1)


def check_grad_checkpointing(name: str, input_size=96, **kwargs):
    """Gradient checkpointing gives the same gradients as plain backward (`kwargs` go to the model)."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4, **kwargs)
    model.eval()  # no dropout / BN updates, so both passes compute the same function
    x = torch.randn(2, 3, *_hw(input_size))
    model(x).sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        if n in ref:
            torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=n)


def check_manifest(family: str, manifest_name: str, model_name: str | None = None, *, unused_official=(),
                   **kwargs):
    """An official state dict with exactly the manifest's keys loads with zero missing/unexpected keys
    through the model's checkpoint filter, and the parameter count equals the official one.

    unused_official: manifest keys of official parameters the official forward never reads, which the filter
    drops (the model does not hold them, so they are not in its parameter count)."""
    man = load_manifest(family, manifest_name)
    model_name = model_name or man["variant"]
    with torch.device("meta"):
        model = timm.create_model(model_name, **kwargs)
    dropped = sum(math.prod(shape) for key, shape, _ in man["state_dict"] if key in set(unused_official))
    assert count_params(model) + dropped == man["num_params"], (count_params(model), dropped, man["num_params"])
    model = model.to_empty(device="cpu")
    sd = manifest_state_dict(man)
    import importlib

    filter_fn = importlib.import_module(type(model).__module__).checkpoint_filter_fn
    sd = filter_fn(sd, model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing[:10], unexpected[:10])


def check_empty_batch(name: str, input_size=96, num_classes: int = 3, **kwargs):
    """A batch of 0 images gives empty logits and empty feature maps (like every torch op), no error."""
    model = timm.create_model(name, num_classes=num_classes, **kwargs).eval()
    x = torch.randn(0, 3, *_hw(input_size))
    with torch.no_grad():
        assert model(x).shape == (0, num_classes)
        feats = model.forward_intermediates(x, intermediates_only=True)
    assert feats and all(f.shape[0] == 0 for f in feats)
