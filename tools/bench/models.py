"""Model-level measurements: inference latency / throughput per runtime mode (tools/bench/runtimes.py) under a
latency protocol (protocol.py), and the GPU check's training step (forward + backward + AdamW, bf16 autocast) and
inference throughput in img/s, each with its peak memory.

Models come from timm by name (zoo models registered by `import visionattn`, or timm's own as yardsticks);
`attn_backend` switches the kernels of the models that have NA / BRA modules (others have one row, "-").
"""
from __future__ import annotations

import contextlib
import time

import timm
import torch

import visionattn
from visionattn.utils import attn_modules, fuse_for_inference, is_reparameterizable, set_attn_backend

from .protocol import Protocol
from .runtimes import RUNTIMES, Context
from .timing import Deadline, TimeUp, error_text, first_call_s, interleaved, latency, peak_mb, sync

# conv-heavy NCHW models whose convolutions run faster in channels-last on GPU
CHANNELS_LAST = ("convnext_*", "biformer_*", "efficientvim_*", "shvit_*")


def family(name: str) -> str:
    try:
        return visionattn.get_family(name)
    except KeyError:
        return "timm"


def flops_per_image(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(x[:1])
    return fc.get_total_flops()


def wants_channels_last(name: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(name, p) for p in CHANNELS_LAST)


def backends_of(model) -> tuple[str, ...]:
    """Kernel backends every attention module of `model` accepts ('' when it has none)."""
    mods = attn_modules(model)
    if not mods:
        return ()
    return tuple(b for b in type(mods[0]).backends if all(b in type(m).backends for m in mods))


def input_size(model, test_size: bool = False) -> int:
    """The model's input side: its cfg's `test_input_size` where asked and present (timm's benchmark default),
    else `input_size`."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = (test_size and cfg.get("test_input_size")) or cfg.get("input_size") or (3, 224, 224)
    return int(size[-1])


@torch.no_grad()
def inference_row(name: str, *, device, modes, protocol: Protocol, img_size=None, fuse: bool = True,
                  compare_reference: bool = False, fullgraph: bool = False, interleave: bool = False) -> dict:
    """The models suite's row: params, GMACs at batch 1, then per runtime mode (runtimes.RUNTIMES) latency at the
    protocol's latency batch (`<mode>_p50_ms`, p90, p99, mean, iters), throughput at its throughput batch
    (`<mode>_ips` = batch / mean, `<mode>_ms_per_img`), the set-up time (`<mode>_setup_s`: compiling, exporting
    (once per row: the ONNX modes share the file, the first one's set-up includes the export) and the first
    calls) and `<mode>_vs_eager` (p50 ratio). A mode that fails leaves `<mode>_error`.
    `compare_reference` adds eager img/s with the attention on the `reference` backend and our speed-up over it.
    `interleave` times the modes side by side (`timing.interleaved`: the protocol's warm-up and timed calls, one call
    of each mode in turn, the order reversed every round; its minimum times are ignored) and adds `<mode>_best_ms`
    (latency batch) and `<mode>_tput_best_ms` (throughput batch).
    """
    device = torch.device(device)
    model = timm.create_model(name).eval()
    if fuse and is_reparameterizable(model):
        model = fuse_for_inference(model)
    size = img_size or input_size(model, protocol.test_size)
    model = model.to(device)
    tput_batch = protocol.throughput_batch(device.type)
    lat_batch = protocol.latency_batch or tput_batch
    inputs = {b: torch.randn(b, 3, size, size, device=device) for b in dict.fromkeys((lat_batch, tput_batch))}
    row = {"model": name, "family": family(name), "img_size": size, "device": device.type,
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    row["gmacs"] = round(flops_per_image(model, inputs[lat_batch][:1]) / 2e9, 3)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    shared, row_stack = {}, contextlib.ExitStack()

    def record(mode, lat, tput):
        row.update({f"{mode}_{k}": round(v, 3) for k, v in lat.items()})
        row[f"{mode}_ips"] = round(tput_batch / (tput["mean_ms"] / 1e3), 1)
        row[f"{mode}_ms_per_img"] = round(tput["mean_ms"] / tput_batch, 3)
        if "best_ms" in tput:
            row[f"{mode}_tput_best_ms"] = round(tput["best_ms"], 3)

    ready = {}  # interleave: mode -> {batch: call}, timed together once every mode is set up
    for mode in modes:
        ctx = Context(device=device, size=size, protocol=protocol, threads=threads, fullgraph=fullgraph,
                      shared=shared, shared_stack=row_stack)
        try:
            with contextlib.ExitStack() as scope:
                # interleaved: the mode's resources live until the row's timing is done
                (row_stack if interleave else scope).enter_context(ctx.stack)
                t0 = time.perf_counter()
                bind = RUNTIMES[mode].prepare(model, ctx)
                calls = {b: bind(x) for b, x in inputs.items()}
                for call in calls.values():
                    call()
                sync(device)
                row[f"{mode}_setup_s"] = round(time.perf_counter() - t0, 2)
                row.update(ctx.extras)
                if interleave:
                    ready[mode] = calls
                    continue
                lat = latency(calls[lat_batch], device, **protocol.timing())
                tput = lat if tput_batch == lat_batch else latency(calls[tput_batch], device, **protocol.timing())
                record(mode, lat, tput)
        except Exception as err:  # noqa: BLE001 - one mode failing (an export, a compile) must not hide the others
            row[f"{mode}_error"] = error_text(err)
    if ready:
        try:
            timing = dict(warmup=protocol.warmup, reps=protocol.reps, timer=protocol.timer)
            lat = interleaved({m: c[lat_batch] for m, c in ready.items()}, device, **timing)
            tput = lat if tput_batch == lat_batch else interleaved({m: c[tput_batch] for m, c in ready.items()},
                                                                   device, **timing)
            for mode in ready:
                record(mode, lat[mode], tput[mode])
        except Exception as err:  # noqa: BLE001 - reported in the row of every mode timed together
            for mode in ready:
                row[f"{mode}_error"] = error_text(err)
    row_stack.close()
    for mode in modes:
        if mode != "eager" and row.get(f"{mode}_p50_ms") and row.get("eager_p50_ms"):
            row[f"{mode}_vs_eager"] = round(row[f"{mode}_p50_ms"] / row["eager_p50_ms"], 3)
    if compare_reference and attn_modules(model):
        saved = {m: m.backend for m in attn_modules(model)}
        set_attn_backend(model, "reference")
        try:
            t = latency(lambda: model(inputs[tput_batch]), device, **protocol.timing())["mean_ms"]
        finally:
            for m, backend in saved.items():
                m.backend = backend
        row["reference_ips"] = round(tput_batch / (t / 1e3), 1)
        if row.get("eager_ips"):
            row["vs_reference"] = round(row["eager_ips"] / row["reference_ips"], 2)
    return row


def _prepare(name: str, backend: str | None, device, channels_last: bool, train: bool):
    model = timm.create_model(name)
    if backend not in (None, "-"):
        set_attn_backend(model, backend)
    model = model.to(device).train(train)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _input(batch, size, device, channels_last):
    x = torch.randn(batch, 3, size, size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_row(name: str, *, device, backend: str | None = None, compile: bool = False, batch: int = 64,
              img_size: int = 224, amp: str | None = "bfloat16", channels_last: bool | None = None, warmup: int = 3,
              iters: int = 10, deadline: Deadline | None = None) -> dict:
    """Training-step throughput: forward + cross-entropy + backward + AdamW step, under `amp` autocast; `warmup`
    untimed steps (the first, timed apart as `first_step_s`, included), then `iters` timed: p50 / p90 / p99 / mean
    ms, img/s = batch / mean."""
    device = torch.device(device)
    channels_last = wants_channels_last(name) if channels_last is None else channels_last
    row = dict(op="model", model=name, family=family(name), mode="train", backend=backend or "-", compile=compile,
               batch=batch, img_size=img_size, amp=amp or "fp32", channels_last=channels_last, device=device.type)
    try:
        (deadline or Deadline(None)).check(f"{name} train")
        model = _prepare(name, backend, device, channels_last, train=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        x = _input(batch, img_size, device, channels_last)
        y = torch.randint(0, model.num_classes, (batch,), device=device)
        fwd = torch.compile(model) if compile else model
        dtype = getattr(torch, amp) if amp else None

        def step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(fwd(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        row["first_step_s"] = round(first_call_s(step, device), 2)
        row.update(latency(step, device, warmup=max(0, warmup - 1), reps=iters, deadline=deadline))
        row.update(img_s=batch / (row["mean_ms"] / 1e3), peak_mb=peak_mb(step, device))
    except TimeUp as err:
        row["note"] = f"skipped: {err}"
    except Exception as err:  # noqa: BLE001 - one model failing must not hide the others
        row["error"] = error_text(err)
    return row


@torch.no_grad()
def infer_row(name: str, *, device, backend: str | None = None, compile: bool = False, batch: int = 256,
              img_size: int = 224, amp: str | None = "bfloat16", channels_last: bool | None = None, warmup: int = 3,
              iters: int = 10, deadline: Deadline | None = None) -> dict:
    """Inference throughput (eval mode, `amp` autocast) in img/s at `batch`; warm-up and timing as `train_row`."""
    device = torch.device(device)
    channels_last = wants_channels_last(name) if channels_last is None else channels_last
    row = dict(op="model", model=name, family=family(name), mode="infer", backend=backend or "-", compile=compile,
               batch=batch, img_size=img_size, amp=amp or "fp32", channels_last=channels_last, device=device.type)
    try:
        (deadline or Deadline(None)).check(f"{name} infer")
        model = _prepare(name, backend, device, channels_last, train=False)
        x = _input(batch, img_size, device, channels_last)
        fwd = torch.compile(model) if compile else model
        dtype = getattr(torch, amp) if amp else None

        def call():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                fwd(x)

        row["first_step_s"] = round(first_call_s(call, device), 2)
        row.update(latency(call, device, warmup=max(0, warmup - 1), reps=iters, deadline=deadline))
        row.update(img_s=batch / (row["mean_ms"] / 1e3), peak_mb=peak_mb(call, device))
    except TimeUp as err:
        row["note"] = f"skipped: {err}"
    except Exception as err:  # noqa: BLE001
        row["error"] = error_text(err)
    return row


@torch.no_grad()
def onnx_row(name: str, *, provider: str, batch: int = 256, img_size: int = 224, warmup: int = 3, iters: int = 10,
             deadline: Deadline | None = None) -> dict:
    """Inference throughput of the model exported to ONNX (fp32, dynamic batch, attention on its `torch` path) in
    onnxruntime on `provider` (cuda, tensorrt; visionattn.export.PROVIDERS), img/s at `batch`. A provider that is
    not installed leaves a `note` (skipped), not an error."""
    import tempfile
    from pathlib import Path

    from visionattn.export import ExportUnsupported, ort_session, save_onnx

    row = dict(op="model", model=name, family=family(name), mode="onnx", backend=provider, compile=False,
               batch=batch, img_size=img_size, amp="fp32", device="cuda" if provider != "cpu" else "cpu")
    try:
        (deadline or Deadline(None)).check(f"{name} onnx {provider}")
        import onnxruntime as ort

        from visionattn.export import PROVIDERS

        if PROVIDERS[provider][0] not in ort.get_available_providers():
            row["note"] = (f"skipped: onnxruntime {ort.__version__} has no {PROVIDERS[provider][0]} "
                           "(install onnxruntime-gpu)")
            return row
        model = timm.create_model(name).eval()
        if is_reparameterizable(model):
            model = fuse_for_inference(model)
        if attn_modules(model):
            set_attn_backend(model, "torch")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            save_onnx(model, torch.randn(2, 3, img_size, img_size), path, dynamic="batch")
            sess = ort_session(path, provider=provider)
        feed = {sess.get_inputs()[0].name: torch.randn(batch, 3, img_size, img_size).numpy()}
        call = lambda: sess.run(None, feed)  # noqa: E731
        row["first_step_s"] = round(first_call_s(call, "cpu"), 2)
        row.update(latency(call, "cpu", warmup=max(0, warmup - 1), reps=iters, deadline=deadline))
        row["img_s"] = batch / (row["mean_ms"] / 1e3)
    except ExportUnsupported as err:
        row["note"] = f"skipped: {err}"
    except TimeUp as err:
        row["note"] = f"skipped: {err}"
    except Exception as err:  # noqa: BLE001
        row["error"] = error_text(err)
    return row
