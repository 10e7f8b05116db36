"""Neighborhood attention (NA) benchmark: cases and the implementations compared, each registered by name.

Ours: `triton` / `torch` / `cpu` (the compiled CPU kernel) with RPB and `triton_norpb` / `torch_norpb` /
`cpu_norpb`, `gather` (the naive index-gather formulation). Baselines: `natten` (its na*d when installed; on
CPU unfused FlexAttention, forward only), `flex` / `flex_rpb` (torch.compile'd FlexAttention with an NA block
mask, RPB as a clamped score_mod; the builder is checked against the reference by `verify`), `sdpa_dense`
(full attention: the dense-cost yardstick). Layout `[B, *spatial, heads, head_dim]`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from visionattn.kernels.na import na1d, na2d

from .report import row_id
from .timing import Deadline, TimeUp, error_text, first_call_s, measure


@dataclass(frozen=True)
class NACase:
    name: str
    spatial: tuple
    heads: int
    kernel: int
    dilation: int = 1
    batch: int | None = None  # None: the run's --batch
    head_dim: int = 32


# NAT-like shapes for CPU runs (batch from --batch).
CPU_CASES = (
    NACase("nat_56x56_k7", (56, 56), 2, 7),
    NACase("dinat_28x28_k7_d2", (28, 28), 4, 7, 2),
    NACase("nat_14x14_k7", (14, 14), 4, 7),
    NACase("na1d_4096_k31", (4096,), 2, 31),
)
# NAT-Tiny stage shapes at B=32 (stage 2 with DiNAT's dilation 2) and a detection-size map at B=4: the GPU set.
NAT_TINY_CASES = (
    NACase("nat_tiny_s1_56x56_k7", (56, 56), 2, 7, 1, 32),
    NACase("dinat_tiny_s2_28x28_k7_d2", (28, 28), 4, 7, 2, 32),
    NACase("nat_tiny_s3_14x14_k7", (14, 14), 8, 7, 1, 32),
    NACase("na_128x128_k7_b4", (128, 128), 2, 7, 1, 4),
)
# tiny shapes for dry runs and verification (seconds on CPU)
QUICK_CASES = (
    NACase("quick_12x14_k5", (12, 14), 2, 5, 1, 2, 16),
    NACase("quick_13x11_k3_d2", (13, 11), 2, 3, 2, 2, 16),
)
# what `verify` checks every implementation on: 1-D and 2-D, dilated, a window close to the map size
VERIFY_CASES = (
    NACase("verify_19_k5_d3", (19,), 2, 5, 3, 2, 8),
    NACase("verify_9x11_k3_d2", (9, 11), 2, 3, 2, 2, 8),
    NACase("verify_7x6_k5", (7, 6), 2, 5, 1, 2, 8),
)
ALL_CASES = {c.name: c for c in CPU_CASES + NAT_TINY_CASES + QUICK_CASES + VERIFY_CASES}

IMPLS = ("triton", "triton_norpb", "torch", "torch_norpb", "cpu", "cpu_norpb", "gather", "natten", "flex", "flex_rpb",
         "sdpa_dense")
OURS = ("triton", "torch", "cpu", "triton_norpb", "torch_norpb", "cpu_norpb")
CPU_IMPLS = ("cpu", "cpu_norpb", "torch", "torch_norpb", "gather", "natten", "flex")
CPU_VERIFY_IMPLS = ("cpu", "cpu_norpb", "torch", "torch_norpb", "gather", "natten", "flex", "flex_rpb")
CUDA_IMPLS = ("triton", "triton_norpb", "torch", "torch_norpb", "flex", "flex_rpb", "sdpa_dense")
# rows compared like with like (same RPB or none) for the speed-up columns
_BASE_OF = {"natten": "norpb", "flex": "norpb", "sdpa_dense": "norpb", "gather": "rpb", "flex_rpb": "rpb"}


# ------------------------------------------------------------------------------------------------ flex builder


def _coords(spatial):
    strides = [math.prod(spatial[a + 1:]) for a in range(len(spatial))]
    return lambda i: [(i // s) % L for s, L in zip(strides, spatial)]


def na_mask_mod(spatial, kernel_size: int, dilation: int = 1):
    """mask_mod of non-causal, stride-1 NA: same dilation group and key inside the inward-shifted window."""
    k, d = kernel_size, dilation
    coords = _coords(spatial)

    def mask_mod(b, h, qi, ki):
        ok = None
        for qa, ka, L in zip(coords(qi), coords(ki), spatial):
            m = qa % d
            g = qa // d
            group_len = (L - m + d - 1) // d
            start = torch.minimum(torch.clamp(g - k // 2, min=0), group_len - k)
            kg = ka // d
            cond = (ka % d == m) & (kg >= start) & (kg < start + k)
            ok = cond if ok is None else ok & cond
        return ok

    return mask_mod


def na_rpb_score_mod(spatial, kernel_size: int, dilation: int, rpb: Tensor):
    """score_mod adding NATTEN<=0.17 RPB, rpb `[heads, 2k-1, ...]` (one axis per spatial dim)."""
    k, d, n = kernel_size, dilation, len(spatial)
    coords = _coords(spatial)
    flat = rpb.reshape(rpb.shape[0], -1)
    axis_stride = [(2 * k - 1) ** (n - 1 - a) for a in range(n)]

    def score_mod(score, b, h, qi, ki):
        idx = 0
        for a, (qa, ka) in enumerate(zip(coords(qi), coords(ki))):
            # clamped: score_mod also runs on the masked pairs of partial blocks (out of the table on GPU)
            rel = torch.clamp(ka // d - qa // d + k - 1, 0, 2 * k - 2)
            idx = idx + rel * axis_stride[a]
        return score + flat[h, idx]

    return score_mod


def make_na_flex(spatial, kernel_size: int, dilation: int = 1, rpb: Tensor | None = None, scale=None,
                 device="cpu", compile: bool = True):
    """Callable `(q, k, v) -> out` on heads-last `[B, *spatial, heads, dim]` tensors, NA through flex_attention."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    spatial = tuple(spatial)
    N = math.prod(spatial)
    device = torch.device(device).type
    block_mask = create_block_mask(na_mask_mod(spatial, kernel_size, dilation), None, None, N, N, device=device)
    score_mod = None if rpb is None else na_rpb_score_mod(spatial, kernel_size, dilation, rpb)
    fn = torch.compile(flex_attention, dynamic=False) if compile else flex_attention

    def run(q, k, v):
        B, heads, D = q.shape[0], q.shape[-2], q.shape[-1]
        qf, kf, vf = (t.reshape(B, N, heads, D).transpose(1, 2) for t in (q, k, v))
        out = fn(qf, kf, vf, block_mask=block_mask, score_mod=score_mod, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)

    return run


def allow_recompiles(limit: int = 256) -> None:
    """Compiled flex recompiles per shape / dtype / score_mod: keep them compiled instead of falling back to eager."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))


# ------------------------------------------------------------------------------------------------ implementations


def _na_fn(n):
    return na1d if n == 1 else na2d


def build(impl: str, case: NACase, rpb: Tensor, scale: float, device, *, compile_flex: bool = True):
    """Callable `(q, k, v) -> out` of one implementation on one case."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    n, ks, dil = len(case.spatial), case.kernel, case.dilation
    if impl in OURS or impl == "gather":
        backend = impl.replace("_norpb", "")
        bias = None if impl.endswith("_norpb") else rpb
        f = _na_fn(n)
        return lambda q, k, v: f(q, k, v, ks, dilation=dil, rpb=bias, scale=scale, backend=backend)
    if impl == "natten":
        import natten

        f = {1: natten.na1d, 2: natten.na2d}[n]
        return lambda q, k, v: f(q, k, v, kernel_size=ks, dilation=dil, scale=scale)
    if impl in ("flex", "flex_rpb"):
        return make_na_flex(case.spatial, ks, dil, rpb=rpb if impl == "flex_rpb" else None, scale=scale,
                            device=device, compile=compile_flex)

    def sdpa_dense(q, k, v):
        B, h, D = q.shape[0], q.shape[-2], q.shape[-1]
        qf, kf, vf = (t.reshape(B, -1, h, D).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf, scale=scale)
        return out.transpose(1, 2).reshape(q.shape)

    return sdpa_dense


def _inputs(case: NACase, batch: int, device, dtype):
    gen = torch.Generator().manual_seed(0)
    shape = (case.batch or batch, *case.spatial, case.heads, case.head_dim)
    q, k, v, gout = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(4))
    rpb = (0.1 * torch.randn(case.heads, *(2 * case.kernel - 1 for _ in case.spatial), generator=gen)).to(device, dtype)
    return q, k, v, gout, rpb, case.head_dim ** -0.5


def verify(impls, cases, device="cpu", dtype=torch.float32, *, compile_flex: bool | None = None) -> list[dict]:
    """Each implementation's forward against the reference backend (with its own RPB or none): max |diff|."""
    device = torch.device(device)
    compile_flex = device.type == "cuda" if compile_flex is None else compile_flex
    rows = []
    for case in cases:
        q, k, v, _, rpb, scale = _inputs(case, 2, device, dtype)
        f = _na_fn(len(case.spatial))
        # the reference in fp32 on the same (rounded) inputs: low-precision rows are judged against exact math
        want = {bias: f(q.float(), k.float(), v.float(), case.kernel, dilation=case.dilation,
                        rpb=None if bias == "norpb" else rpb.float(), scale=scale, backend="reference")
                for bias in ("rpb", "norpb")}
        for impl in impls:
            if impl == "sdpa_dense":
                continue  # dense attention is a cost yardstick, not NA
            row = dict(op="na", case=case.name, backend=impl, dtype=str(dtype).replace("torch.", ""),
                       device=device.type)
            try:
                with torch.no_grad():
                    got = build(impl, case, rpb, scale, device, compile_flex=compile_flex)(q, k, v).float()
                has_rpb = impl in ("triton", "torch", "cpu", "gather", "flex_rpb")
                row["max_abs_diff"] = (got - want["rpb" if has_rpb else "norpb"]).abs().max().item()
            except Exception as err:  # noqa: BLE001 - one implementation missing here must not hide the rest
                row["error"] = error_text(err)
            rows.append(row)
    return rows


def rows(cases, impls, *, device="cpu", dtype=torch.float32, batch: int = 8, modes=("fwd", "fwdbwd"),
         warmup: int = 2, iters: int = 5, timer: str = "wall", max_s: float | None = None,
         deadline: Deadline | None = None, skip=None, emit=None, done=frozenset()) -> list[dict]:
    """One row per (case, impl, mode): p50_ms / p90_ms / p99_ms / mean_ms, peak_mb, compile_s (flex), speed-ups
    (of p50 times); `emit(row)` as measured. `warmup` calls (the first one included), then `iters` timed calls
    (1 when the first call took over 2 s).

    `skip(case, impl, mode)` returns a reason to skip or None; rows whose `row_id` is in `done` (measured by an
    earlier, interrupted run) are left out. When `deadline` runs out, the remaining rows are reported as skipped.
    """
    device = torch.device(device)
    deadline = deadline or Deadline(None)
    dt_name = str(dtype).replace("torch.", "")
    out = []
    for case in cases:
        q, k, v, gout, rpb, scale = _inputs(case, batch, device, dtype)
        for impl in impls:
            for mode in modes:
                row = dict(op="na", case=case.name, shape="x".join(map(str, case.spatial)), heads=case.heads,
                           head_dim=case.head_dim,
                           kernel=case.kernel, dilation=case.dilation, batch=q.shape[0], dtype=dt_name,
                           device=device.type, backend=impl, mode=mode)
                if row_id(row) in done:
                    continue
                try:
                    deadline.check(f"{case.name} {impl} {mode}")
                    why = skip(case, impl, mode) if skip else None
                    if why:
                        row["note"] = f"skipped: {why}"
                        continue
                    train = mode == "fwdbwd"
                    leaves = [t.clone().requires_grad_(train) for t in (q, k, v)]
                    rpb_l = rpb.clone().requires_grad_(train)
                    fn = build(impl, case, rpb_l, scale, device)
                    if train:
                        def call(fn=fn, leaves=leaves, rpb_l=rpb_l, gout=gout):
                            fn(*leaves).backward(gout)
                            for t in (*leaves, rpb_l):
                                t.grad = None
                    else:
                        def call(fn=fn, leaves=leaves):
                            with torch.no_grad():
                                fn(*leaves)
                    first = first_call_s(call, device)  # compiles (flex), caches, autograd threads
                    if impl.startswith("flex"):
                        row["compile_s"] = first
                    row.update(measure(call, device, warmup=max(0, warmup - 1), reps=iters if first < 2.0 else 1,
                                       timer=timer, max_s=max_s, deadline=deadline))
                except TimeUp as err:
                    row["note"] = f"skipped: {err}"
                except Exception as err:  # noqa: BLE001 - report and go on with the other rows
                    row["error"] = error_text(err)
                finally:
                    out.append(row)
                    if emit is not None:
                        emit(row)
    add_speedups(out)
    return out


def add_speedups(rows) -> None:
    """`speedup_vs_<impl>` = that implementation's p50 time / this row's, same case, dtype and mode.

    Against natten / flex / sdpa_dense (no RPB) the like-for-like row of ours is the `_norpb` one; against
    gather / flex_rpb it is the one with RPB; `cpu` rows against `torch` (same RPB). The `rpb_cost` column is
    ours with RPB / ours without.
    """
    by = {(r["case"], r["dtype"], r["mode"], r["backend"]): r for r in rows if "p50_ms" in r}
    for r in rows:
        if "p50_ms" not in r or r["backend"] not in OURS:
            continue
        key = (r["case"], r["dtype"], r["mode"])
        ours_rpb = not r["backend"].endswith("_norpb")
        for other, kind in _BASE_OF.items():
            o = by.get((*key, other))
            if o is not None and (kind == "rpb") == ours_rpb:
                r[f"speedup_vs_{other}"] = o["p50_ms"] / r["p50_ms"]
        if r["backend"].startswith("cpu"):
            o = by.get((*key, r["backend"].replace("cpu", "torch")))
            if o is not None:
                r["speedup_vs_torch"] = o["p50_ms"] / r["p50_ms"]
        if ours_rpb:
            o = by.get((*key, r["backend"] + "_norpb"))
            if o is not None:
                r["rpb_cost"] = r["p50_ms"] / o["p50_ms"]
        if r["backend"] == "triton":
            # the issue-20 target: triton with RPB against compiled flex *without* RPB
            o = by.get((*key, "flex"))
            if o is not None:
                r["speedup_vs_flex_norpb"] = o["p50_ms"] / r["p50_ms"]
