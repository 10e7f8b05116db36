"""Model-level compute rate: GMAC/s of models beside a yardstick (timm's Swin-T by default), measured in one
process with the models alternating call by call, so that a shared, busy CPU weighs on all of them alike.

GMACs per image come from torch.utils.flop_counter at batch 1 (attention matmuls included; the NA op has a
registered formula: each query's window); a training step (forward + backward) counts three times the forward.
A model with NA / BRA modules gets one row per attention backend.
"""
from __future__ import annotations

import timm
import torch

from visionattn.utils import attn_modules, set_attn_backend

from .models import flops_per_image
from .timing import clock, summarize


def gmac_rate_rows(names, backends=("torch", "cpu"), *, batch: int = 8, img_size: int = 224, reps: int = 7,
                   warmup: int = 1, mode: str = "infer", timer: str = "wall") -> list[dict]:
    """One row per (model, backend): GMACs/img, p50 / p90 / p99 / mean ms per batch, img/s and GMAC/s (of the p50
    time) and `vs_yardstick`, the GMAC/s ratio to the first model of `names`. `timer="cpu"`: process CPU time (one
    thread only)."""
    tick = clock(timer)
    x = torch.randn(batch, 3, img_size, img_size)
    variants, models, gmacs = [], {}, {}
    for name in names:
        model = timm.create_model(name).eval()
        with torch.no_grad():
            gmacs[name] = flops_per_image(model, x) / 2e9
        model.train(mode == "train")
        models[name] = model
        variants += [(name, be) for be in backends] if attn_modules(model) else [(name, None)]

    def run(variant):
        model = models[variant[0]]
        if variant[1] is not None:
            set_attn_backend(model, variant[1])
        if mode == "train":
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)

    for v in variants:
        for _ in range(warmup):
            run(v)
    times = {v: [] for v in variants}
    for _ in range(reps):
        for v in variants:
            t0 = tick()
            run(v)
            times[v].append(tick() - t0)
    rows, base = [], None
    for name, be in variants:
        stats = summarize(times[(name, be)])
        t = stats["p50_ms"] / 1e3
        rate = (3 if mode == "train" else 1) * gmacs[name] * batch / t
        base = base or rate
        rows.append(dict(model=name, backend=be or "-", mode=mode, batch=batch, gmacs=gmacs[name], **stats,
                         img_s=batch / t, gmac_s=rate, vs_yardstick=rate / base))
    return rows
