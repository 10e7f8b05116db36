"""Model-level measurements: inference latency / throughput (eager, torch.compile, onnxruntime, AMP), and the
training step (forward + backward + AdamW, bf16 autocast) in img/s, each with its peak memory.

Models come from timm by name (zoo models registered by `import visionattn`, or timm's own as yardsticks);
`attn_backend` switches the kernels of the models that have NA / BRA modules (others have one row, "-").
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import timm
import torch

import visionattn
from visionattn.export import ort_session, save_onnx
from visionattn.utils import attn_modules, fuse_for_inference, is_reparameterizable, set_attn_backend

from .timing import Deadline, TimeUp, error_text, peak_mb, sync, time_ms

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


@torch.no_grad()
def inference_row(name: str, *, device, modes, img_size=None, batch: int = 8, warmup: int = 3, reps: int = 10,
                  fuse: bool = True, threads=None, compare_reference: bool = False, fullgraph: bool = False) -> dict:
    """The zoo benchmark's row: params, GMACs at batch 1, latency (batch 1) and img/s (`batch`) per mode.

    Modes: eager, compile (torch.compile, `fullgraph` as given, steady state; compile time in compile_s: the
    first batch-1 and batch-`batch` calls), onnx (onnxruntime CPU,
    exported with a dynamic batch), amp (bf16 autocast, CUDA). `compare_reference` adds eager img/s with the
    attention on the `reference` backend and our speed-up over it.
    """
    device = torch.device(device)
    model = timm.create_model(name).eval()
    if fuse and is_reparameterizable(model):
        model = fuse_for_inference(model)
    size = img_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    model = model.to(device)
    x1 = torch.randn(1, 3, size, size, device=device)
    xb = torch.randn(batch, 3, size, size, device=device)
    row = {"model": name, "family": family(name), "img_size": size, "device": device.type,
           "threads": torch.get_num_threads() if device.type == "cpu" else "",
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    row["gmacs"] = round(flops_per_image(model, x1) / 2e9, 3)
    few = dict(warmup=max(1, warmup // 2), iters=max(3, reps // 2))

    def measure(fn, key, dev=device):
        row[f"{key}_ms"] = round(time_ms(lambda: fn(x1), dev, warmup=warmup, iters=reps)[0], 3)
        t = time_ms(lambda: fn(xb), dev, **few)[0]
        row[f"{key}_ips"] = round(batch / (t / 1e3), 1)

    if "eager" in modes:
        measure(model, "eager")
    if compare_reference and attn_modules(model):
        saved = {m: m.backend for m in attn_modules(model)}
        set_attn_backend(model, "reference")
        try:
            t = time_ms(lambda: model(xb), device, **few)[0]
        finally:
            for m, backend in saved.items():
                m.backend = backend
        row["reference_ips"] = round(batch / (t / 1e3), 1)
        if row.get("eager_ips"):
            row["vs_reference"] = round(row["eager_ips"] / row["reference_ips"], 2)
    if "amp" in modes and device.type == "cuda":
        def amp_fn(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x)
        measure(amp_fn, "amp")
    if "compile" in modes:
        compiled = torch.compile(model, fullgraph=fullgraph)
        t0 = time.perf_counter()
        compiled(x1)
        compiled(xb)
        sync(device)
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        measure(compiled, "compile")
        if row.get("eager_ms"):
            row["compile_vs_eager"] = round(row["compile_ms"] / row["eager_ms"], 3)
    if "onnx" in modes and device.type == "cpu":
        if attn_modules(model):
            set_attn_backend(model, "torch")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            save_onnx(model, torch.randn(2, 3, size, size), path, opset=18, dynamic=True)
            sess = ort_session(path, threads)
            iname = sess.get_inputs()[0].name
            measure(lambda x: sess.run(None, {iname: x.cpu().numpy()}), "ort", torch.device("cpu"))
        if row.get("eager_ms"):
            row["ort_vs_eager"] = round(row["ort_ms"] / row["eager_ms"], 3)
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
    """Training-step throughput: forward + cross-entropy + backward + AdamW step, under `amp` autocast."""
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

        t0 = time.perf_counter()
        step()
        sync(device)
        row["first_step_s"] = round(time.perf_counter() - t0, 2)
        t, n = time_ms(step, device, warmup=warmup, iters=iters, deadline=deadline)
        row.update(time_ms=t, iters=n, img_s=batch / (t / 1e3), peak_mb=peak_mb(step, device))
    except TimeUp as err:
        row["note"] = f"skipped: {err}"
    except Exception as err:  # noqa: BLE001 - one model failing must not hide the others
        row["error"] = error_text(err)
    return row


@torch.no_grad()
def infer_row(name: str, *, device, backend: str | None = None, compile: bool = False, batch: int = 256,
              img_size: int = 224, amp: str | None = "bfloat16", channels_last: bool | None = None, warmup: int = 3,
              iters: int = 10, deadline: Deadline | None = None) -> dict:
    """Inference throughput (eval mode, `amp` autocast) in img/s at `batch`."""
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

        t0 = time.perf_counter()
        call()
        sync(device)
        row["first_step_s"] = round(time.perf_counter() - t0, 2)
        t, n = time_ms(call, device, warmup=warmup, iters=iters, deadline=deadline)
        row.update(time_ms=t, iters=n, img_s=batch / (t / 1e3), peak_mb=peak_mb(call, device))
    except TimeUp as err:
        row["note"] = f"skipped: {err}"
    except Exception as err:  # noqa: BLE001
        row["error"] = error_text(err)
    return row
