"""Bi-level routing attention (BRA) benchmark on BiFormer-S stage shapes, implementations registered by name.

`reference` is the official gather formulation (what the BiFormer code does), `torch` our chunked / flash
path, `triton` the fused kernel (CUDA), `flex` compiled FlexAttention over region-major tokens with a block
mask built from the routing index (CUDA). Layout `[B, H, W, heads, head_dim]`, routing index `[B, R, topk]`.
"""
from __future__ import annotations

import math

import torch

from visionattn.kernels.bra import region_mean, region_topk, routed_attention

from .report import row_id
from .timing import Deadline, TimeUp, error_text, first_call_s, measure

# BiFormer-S routed stages: (stride, dim, heads, topk); n_win 7, qk_dim = dim, scale dim ** -0.5.
BIFORMER_S_STAGES = ((4, 64, 2, 1), (8, 128, 4, 4), (16, 256, 8, 16))
N_WIN = 7
IMPLS = ("reference", "torch", "triton", "flex")
CPU_IMPLS = ("reference", "torch")
CUDA_IMPLS = ("reference", "torch", "triton", "flex")


def stage_shapes(size: int, n_win: int = N_WIN, stages=(0, 1, 2)) -> list[dict]:
    """Per routed stage: dict(stage, H, W (padded to a multiple of n_win as auto_pad does), dim, heads, topk)."""
    out = []
    for i, (stride, dim, heads, topk) in enumerate(BIFORMER_S_STAGES):
        if i not in stages:
            continue
        s = math.ceil(math.ceil(size / stride) / n_win) * n_win
        out.append(dict(stage=i, H=s, W=s, dim=dim, heads=heads, topk=topk))
    return out


def _flex(q, k, v, index, region_size, scale, *, compile_flex: bool = True):
    """(to_seq, from_seq, attend): FlexAttention over region-major token order, mask = routed region pairs.

    `attend` works on `to_seq` tensors: the benchmark converts the layout outside the timed call, the
    strongest form of this baseline."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, W, nh, _ = q.shape
    rh, rw = region_size
    gh, gw = H // rh, W // rw
    R, hw = gh * gw, rh * rw

    def to_seq(t):  # [B, H, W, nh, d] -> [B, nh, R*hw, d], regions contiguous
        d = t.shape[-1]
        return t.reshape(B, gh, rh, gw, rw, nh, d).permute(0, 5, 1, 3, 2, 4, 6).reshape(B, nh, R * hw, d)

    def from_seq(t):
        d = t.shape[-1]
        return t.reshape(B, nh, gh, gw, rh, rw, d).permute(0, 2, 4, 3, 5, 1, 6).reshape(B, H, W, nh, d)

    routed = torch.zeros(B, R, R, dtype=torch.bool, device=q.device)
    routed.scatter_(2, index, True)

    def mask_mod(b, h, q_idx, kv_idx):
        return routed[b, q_idx // hw, kv_idx // hw]

    # _compile: the mask is evaluated block-wise instead of materialising [N, N] (OOM at 1024 px otherwise)
    mask = create_block_mask(mask_mod, B, None, R * hw, R * hw, device=q.device, _compile=compile_flex)
    flex = torch.compile(flex_attention) if compile_flex else flex_attention

    def attend(qs, ks, vs):
        return flex(qs, ks, vs, block_mask=mask, scale=scale)

    return to_seq, from_seq, attend


def build(impl: str, index, region_size, scale, *, q=None, k=None, v=None, compile_flex: bool = True):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "flex":
        return _flex(q, k, v, index, region_size, scale, compile_flex=compile_flex)
    ident = lambda t: t  # noqa: E731
    return ident, ident, lambda q, k, v: routed_attention(q, k, v, index, region_size, scale=scale, backend=impl)


def _inputs(size, st, batch, device, dtype, gen):
    H, W, dim, nh, topk = st["H"], st["W"], st["dim"], st["heads"], st["topk"]
    scale = dim ** -0.5
    shape = (batch, H, W, nh, dim // nh)
    q, k, v, gout = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(4))
    index = region_topk(region_mean(q, N_WIN), region_mean(k, N_WIN), topk, scale=scale)
    return q, k, v, gout, index, (H // N_WIN, W // N_WIN), scale


def verify(impls, sizes=(56,), device="cpu", dtype=torch.float32, *, compile_flex: bool | None = None) -> list[dict]:
    """Each implementation's forward against `reference` (max |diff|) at the stage shapes of `sizes`."""
    device = torch.device(device)
    compile_flex = device.type == "cuda" if compile_flex is None else compile_flex
    gen = torch.Generator().manual_seed(0)
    out = []
    for size in sizes:
        for st in stage_shapes(size):
            q, k, v, _, index, region, scale = _inputs(size, st, 1, device, dtype, gen)
            want = routed_attention(q.float(), k.float(), v.float(), index, region, scale=scale, backend="reference")
            for impl in impls:
                row = dict(op="bra", case=f"{size}px_stage{st['stage']}", backend=impl, device=device.type,
                           dtype=str(dtype).replace("torch.", ""))
                try:
                    to_seq, from_seq, fn = build(impl, index, region, scale, q=q, k=k, v=v, compile_flex=compile_flex)
                    with torch.no_grad():
                        got = from_seq(fn(to_seq(q), to_seq(k), to_seq(v)))
                    row["max_abs_diff"] = (got.float() - want).abs().max().item()
                except Exception as err:  # noqa: BLE001
                    row["error"] = error_text(err)
                out.append(row)
    return out


def rows(sizes, impls, *, device="cpu", dtype=torch.float32, batch: int = 1, stages=(0, 1, 2),
         modes=("fwd", "fwdbwd"), warmup: int = 2, iters: int = 5, timer: str = "wall",
         max_s: float | None = None, deadline: Deadline | None = None, emit=None, done=frozenset()) -> list[dict]:
    """One row per (input size, stage, impl, mode): p50_ms / p90_ms / p99_ms / mean_ms, peak_mb, and ratios (of p50
    times, of peaks) to the gather `reference`.

    Rows whose `row_id` is in `done` (measured by an earlier, interrupted run) are left out."""
    device = torch.device(device)
    deadline = deadline or Deadline(None)
    gen = torch.Generator().manual_seed(0)
    out = []
    for size in sizes:
        for st in stage_shapes(size, stages=stages):
            q, k, v, gout, index, region, scale = _inputs(size, st, batch, device, dtype, gen)
            ref = {}
            for impl in impls:
                for mode in modes:
                    row = dict(op="bra", case=f"biformer_s_{size}px_stage{st['stage']}", size=size,
                               stage=st["stage"], shape=f"{st['H']}x{st['W']}", heads=st["heads"], dim=st["dim"],
                               topk=st["topk"], region=f"{region[0]}x{region[1]}", batch=batch,
                               dtype=str(dtype).replace("torch.", ""), device=device.type, backend=impl, mode=mode)
                    if row_id(row) in done:
                        continue
                    try:
                        deadline.check(f"{row['case']} {impl} {mode}")
                        train = mode == "fwdbwd"
                        to_seq, _, fn = build(impl, index, region, scale, q=q, k=k, v=v)
                        leaves = [to_seq(t).detach().clone().requires_grad_(train) for t in (q, k, v)]
                        g = to_seq(gout)
                        if train:
                            def call(fn=fn, leaves=leaves, g=g):
                                torch.autograd.grad(fn(*leaves), leaves, g)
                        else:
                            def call(fn=fn, leaves=leaves):
                                with torch.no_grad():
                                    fn(*leaves)
                        first = first_call_s(call, device)
                        if impl == "flex":
                            row["compile_s"] = first
                        row.update(measure(call, device, warmup=max(0, warmup - 1), reps=iters if first < 2 else 1,
                                           timer=timer, max_s=max_s, deadline=deadline))
                    except TimeUp as err:
                        row["note"] = f"skipped: {err}"
                    except Exception as err:  # noqa: BLE001 - a backend unavailable here (e.g. triton without CUDA)
                        row["error"] = error_text(err)
                    if impl == "reference" and "p50_ms" in row:
                        ref[mode] = row
                    elif mode in ref and "p50_ms" in row:
                        row["speedup_vs_gather"] = ref[mode]["p50_ms"] / row["p50_ms"]
                        if row.get("peak_mb", 0) > 0:
                            row["mem_ratio_vs_gather"] = ref[mode]["peak_mb"] / row["peak_mb"]
                    out.append(row)
                    if emit is not None:
                        emit(row)
    return out
