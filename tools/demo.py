"""Build every zoo model at a small input and print name / family / params / output shape."""
import argparse
import sys
import time

import timm
import torch

import visionattn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--family", default=None)
    p.add_argument("--img-size", type=int, default=224)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    rows = []
    for name in visionattn.list_models(args.family):
        t0 = time.perf_counter()
        model = timm.create_model(name, pretrained=False).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        size = model.pretrained_cfg.get("input_size", (3, args.img_size, args.img_size))
        out = model(torch.randn(1, *size))
        rows.append((name, name.family, params, tuple(out.shape), time.perf_counter() - t0))
        print(f"{name:40s} {name.family:16s} {params:8.2f}M {str(tuple(out.shape)):14s} {rows[-1][-1]:6.1f}s",
              flush=True)
        del model
    print(f"demo: {len(rows)} models built", file=sys.stdout)


if __name__ == "__main__":
    main()
