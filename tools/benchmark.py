"""The zoo benchmark: params, GFLOPs and latency / throughput for PyTorch eager, torch.compile and
onnxruntime (CPU), or eager / compile / AMP on a GPU.

    python tools/benchmark.py --filter 'biformer_t,nat_mini' --out-dir out/bench

Protocol: each model in eval mode (re-parameterisable models fused unless --no-fuse), attention on the
backend `auto` picks (torch on CPU; on CUDA triton for BRA, torch for NA unless VISIONATTN_NA_AUTO_TRITON=1);
`--warmup` calls, then the median of `--reps` timed calls;
latency at batch 1, throughput (img/s) at batch `--batch`; threads fixed by `--threads`. FLOPs come from
torch.utils.flop_counter (attention matmuls included) at batch 1; GMACs = FLOPs / 2, the convention of
the papers' "FLOPs" columns. Writes bench.csv, bench.md and bench.png (throughput vs params) to --out-dir.
"""
from __future__ import annotations

import csv
import fnmatch
import os
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
from bench.cli import Parser, comma_list, default_device, device_arg, nonneg_int, positive_int
from tqdm import tqdm

import visionattn
from visionattn.export import ort_session, save_onnx, time_fn
from visionattn.utils import attn_modules, fuse_for_inference, is_reparameterizable, set_attn_backend

COLUMNS = ["model", "family", "img_size", "params_m", "gmacs", "device", "threads",
           "eager_ms", "compile_ms", "compile_s", "ort_ms", "amp_ms",
           "eager_ips", "compile_ips", "ort_ips", "amp_ips", "ort_vs_eager", "reference_ips", "vs_reference"]


MODES = ("eager", "compile", "onnx", "amp")


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--filter", default="*", help="comma-separated fnmatch patterns over zoo model names")
    p.add_argument("--family", choices=visionattn.FAMILIES, default=None, help="restrict to one family")
    p.add_argument("--img-size", type=positive_int, default=None, help="input side (default: each model's cfg)")
    p.add_argument("--batch", type=positive_int, default=8, help="batch for the throughput measurement")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--warmup", type=nonneg_int, default=3)
    p.add_argument("--reps", type=positive_int, default=10)
    p.add_argument("--modes", type=comma_list(MODES), default=None,
                   help="comma list of eager,compile,onnx,amp (default: eager,compile,onnx on CPU; "
                        "eager,compile,amp on CUDA)")
    p.add_argument("--device", type=device_arg, default=default_device())
    p.add_argument("--no-fuse", action="store_true")
    p.add_argument("--compare-reference", action="store_true",
                   help="also time eager with the attention forced onto the 'reference' backend (the stand-in for "
                        "the official gather / unfused code) and report our speed-up over it")
    p.add_argument("--out-dir", default="out/bench")
    args = p.parse_args(argv)
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        p.error(f"argument --out-dir: {args.out_dir} exists and is not a directory")
    return args


def flops_per_image(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(x[:1])
    return fc.get_total_flops()


def _timer(device):
    if device.type == "cuda":
        def sync_time(fn):
            def run():
                fn()
                torch.cuda.synchronize()
            return run
        return sync_time
    return lambda fn: fn


@torch.no_grad()
def bench_model(name: str, args, device: torch.device, modes: list[str]) -> dict:
    model = timm.create_model(name).eval()
    if not args.no_fuse and is_reparameterizable(model):
        model = fuse_for_inference(model)
    size = args.img_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    model = model.to(device)
    x1 = torch.randn(1, 3, size, size, device=device)
    xb = torch.randn(args.batch, 3, size, size, device=device)
    wrap = _timer(device)
    row = {"model": name, "family": visionattn.get_family(name), "img_size": size, "device": device.type,
           "threads": torch.get_num_threads() if device.type == "cpu" else "",
           "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3)}
    row["gmacs"] = round(flops_per_image(model, x1) / 2e9, 3)

    def measure(fn, key):
        row[f"{key}_ms"] = round(time_fn(wrap(lambda: fn(x1)), args.warmup, args.reps), 3)
        t = time_fn(wrap(lambda: fn(xb)), max(1, args.warmup // 2), max(3, args.reps // 2))
        row[f"{key}_ips"] = round(args.batch / (t / 1e3), 1)

    if "eager" in modes:
        measure(model, "eager")
    if args.compare_reference and attn_modules(model):
        saved = {m: m.backend for m in attn_modules(model)}
        set_attn_backend(model, "reference")
        t = time_fn(wrap(lambda: model(xb)), max(1, args.warmup // 2), max(3, args.reps // 2))
        for m, backend in saved.items():
            m.backend = backend
        row["reference_ips"] = round(args.batch / (t / 1e3), 1)
        if row.get("eager_ips"):
            row["vs_reference"] = round(row["eager_ips"] / row["reference_ips"], 2)
    if "amp" in modes and device.type == "cuda":
        def amp_fn(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(x)
        measure(amp_fn, "amp")
    if "compile" in modes:
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        compiled(x1)
        compiled(xb)
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        measure(compiled, "compile")
    if "onnx" in modes and device.type == "cpu":
        cpu_model = set_attn_backend(model, "torch") if attn_modules(model) else model
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            dyn_x = torch.randn(2, 3, size, size)
            save_onnx(cpu_model, dyn_x, path, opset=18, dynamic=True)
            sess = ort_session(path, args.threads)
            iname = sess.get_inputs()[0].name
            measure(lambda x: sess.run(None, {iname: x.cpu().numpy()}), "ort")
        if row.get("eager_ms"):
            row["ort_vs_eager"] = round(row["ort_ms"] / row["eager_ms"], 3)
    return row


def write_outputs(rows: list[dict], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    used = [c for c in COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    lines = ["| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in used) + " |" for r in rows]
    (out_dir / "bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((k for k in ("ort_ips", "compile_ips", "eager_ips", "amp_ips") if any(r.get(k) for r in rows)),
               "eager_ips")
    fig, ax = plt.subplots(figsize=(7, 5))
    for fam in sorted({r["family"] for r in rows}):
        pts = [r for r in rows if r["family"] == fam and r.get(key)]
        ax.scatter([r["params_m"] for r in pts], [r[key] for r in pts], label=fam)
        for r in pts:
            ax.annotate(r["model"], (r["params_m"], r[key]), fontsize=7)
    ax.set_xlabel("params (M)")
    ax.set_ylabel(f"throughput, {key.replace('_ips', '')} (img/s)")
    ax.set_xscale("log")
    ax.set_title(f"visionattn zoo, {rows[0]['device'] if rows else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "bench.png", dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = args.modes or (["eager", "compile", "amp"] if device.type == "cuda" else ["eager", "compile", "onnx"])
    pats = [p.strip() for p in args.filter.split(",") if p.strip()]
    names = [str(m) for m in visionattn.list_models(args.family) if any(fnmatch.fnmatch(m, p) for p in pats)]
    if not names:
        print(f"error: no zoo model matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    rows = []
    for name in (bar := tqdm(names, desc="benchmark", unit="model", file=sys.stderr)):
        bar.set_postfix_str(name)
        try:
            rows.append(bench_model(name, args, device, modes))
        except Exception as err:  # noqa: BLE001 - one failing model must not hide the others
            print(f"warning: {name}: {type(err).__name__}: {err}", file=sys.stderr)
            rows.append({"model": name, "family": visionattn.get_family(name), "device": device.type})
    out_dir = Path(args.out_dir)
    write_outputs(rows, out_dir)
    print((out_dir / "bench.md").read_text())
    print(f"wrote {out_dir / 'bench.csv'}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}")
    failed = [r["model"] for r in rows if "eager_ms" not in r and "amp_ms" not in r]
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
