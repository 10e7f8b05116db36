"""`make demo`: train a reduced zoo model on sklearn's digits, validate it, export it to ONNX — CPU only, offline.

1. sklearn.datasets.load_digits -> an ImageNet-layout folder of PNGs (cached under .cache/digits);
2. training with configs/demo/<config>.yaml (visionattn.train, as tools/train.py: the ImageNet folder pipeline);
3. validation of the best checkpoint (as tools/validate.py);
4. visionattn.export.export_onnx: onnxruntime parity, then the latency of both (the benchmarks' timer, p50).

The last line is `demo: model=<name> top1=<xx.x> onnx_max_abs_diff=<e> ort_ms=<t> torch_ms=<t>` (p50 ms).
The output folder is marked as the demo's (demo.json): a later demo replaces the run in it; any other
non-empty folder is refused by the trainer, as always.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_MARKER = "demo.json"
# what the demo of earlier versions left in its folder (no marker then)
_LEGACY = {"best.safetensors", "last.safetensors", "last_state.pt", "config.yaml", "log.jsonl", "summary.json",
           "validate.json", "nat_mini_digits.onnx", "nat_mini_digits.onnx.data"}


def _claim_output_dir(out: Path) -> bool:
    """True when `out` is the demo's to replace: marked, or new / empty (marked now), or exactly the output of
    an earlier demo (cleared now). Any other folder is left alone (False)."""
    if (out / _MARKER).is_file():
        return True
    if out.exists() and not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if names and not ({"validate.json", "last_state.pt"} <= names <= _LEGACY):
        return False
    for name in names:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text(json.dumps({"made_by": "tools/demo.py"}) + "\n")
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo" / "nat_mini_digits.yaml"))
    p.add_argument("--data-dir", default=str(ROOT / ".cache" / "digits"))
    p.add_argument("--output-dir", default=str(ROOT / "output" / "demo"))
    p.add_argument("--min-top1", type=float, default=95.0, help="exit 1 below this validation top-1")
    p.add_argument("overrides", nargs="*", help="key=value overrides for the training config")
    args = p.parse_args(argv)
    t0 = time.time()

    import torch

    from visionattn.data import digits_to_folder
    from visionattn.train import build_model, load_config, load_weights, resolve_data, train_main, validate_main

    try:
        data = digits_to_folder(args.data_dir, size=32)
    except (FileExistsError, ValueError) as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    print(f"[demo] digits folder: {data} ({time.time() - t0:.1f}s)", flush=True)
    out = Path(args.output_dir)
    overrides = [f"data_dir={data}", f"output_dir={out}", *args.overrides]
    # the folder is the demo's when it is new or empty (marked first), marked, or an earlier demo's output:
    # its run is replaced; anything else makes the trainer refuse the folder
    own = _claim_output_dir(out)
    rc = train_main(["--config", args.config, *overrides, *(["overwrite=true"] if own else [])])
    if rc != 0:  # the one-line reason is on stderr already
        return rc
    print(f"[demo] trained ({time.time() - t0:.1f}s)", flush=True)

    res_file = out / "validate.json"
    rc = validate_main(["--config", args.config, "--checkpoint", str(out / "best.safetensors"),
                        "--results-file", str(res_file), *overrides])
    if rc != 0:  # the one-line reason is on stderr already
        return rc
    val = json.loads(res_file.read_text())
    print(f"[demo] validated ({time.time() - t0:.1f}s)", flush=True)

    from bench.timing import latency

    from visionattn.export import export_onnx

    cfg = load_config(args.config, overrides)
    model = build_model(cfg, num_classes=10)
    load_weights(model, out / "best.safetensors")
    size = resolve_data(cfg, model)["input_size"][1:]
    torch.set_num_threads(cfg["threads"] or 1)
    res = export_onnx(model.eval(), out / f"{cfg['model']}_digits.onnx", img_size=tuple(size), threads=1,
                      return_session=True)
    sess, x = res["session"], res["input"]
    feed = {sess.get_inputs()[0].name: x.numpy()}
    with torch.no_grad():
        ort_ms = latency(lambda: sess.run(None, feed), reps=10)["p50_ms"]
        torch_ms = latency(lambda: res["module"](x), reps=10)["p50_ms"]
    print(f"[demo] exported to {res['onnx']} ({res['exporter']}) ({time.time() - t0:.1f}s total)", flush=True)
    line = (f"demo: model={cfg['model']} top1={val['top1']:.1f} onnx_max_abs_diff={res['max_abs_diff']:.2e} "
            f"ort_ms={ort_ms:.3f} torch_ms={torch_ms:.3f}")
    print(line, flush=True)
    return 0 if val["top1"] >= args.min_top1 else 1


if __name__ == "__main__":
    sys.exit(main())
