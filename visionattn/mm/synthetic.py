"""Tiny synthetic detection / segmentation data sets, so the mm configs run without downloads.

Shapes (squares, discs, triangles) in flat colours on noisy textured backgrounds:

* COCO layout: ``root/{train,val}2017/*.jpg`` and ``root/annotations/instances_{train,val}2017.json`` with
  boxes, labels and masks (squares / triangles as polygons, discs as uncompressed RLE). Classes:
  ``COCO_CLASSES``.
* ADE20K layout: ``root/images/{training,validation}/*.jpg`` and ``root/annotations/{training,validation}/*.png``
  label maps (0 = ignore, as ADE20K's reduce_zero_label expects; 1 = background texture, 2.. = shapes).

Usage: ``python -m visionattn.mm.synthetic --coco data/synth_coco --ade data/synth_ade``.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image, ImageDraw

COCO_CLASSES = ("square", "disc", "triangle")
ADE_CLASSES = ("background",) + COCO_CLASSES  # labels 1..4 in the PNGs (0 = ignore)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(60, 200, size=3)
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(0.05, 0.3, size=2)
    stripes = 25 * np.sin(f[0] * xx + f[1] * yy)[..., None]
    img = base + stripes + rng.normal(0, 12, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _shape(rng: np.random.Generator, kind: int, h: int, w: int):
    """A random shape: (polygon [x0, y0, ...] or None, mask HxW bool)."""
    s = int(rng.integers(max(8, min(h, w) // 6), max(12, min(h, w) // 2.5)))
    x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if kind == 0:
        poly = [x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]
        d.polygon(poly, fill=1)
    elif kind == 1:
        poly = None
        d.ellipse([x0, y0, x0 + s, y0 + s], fill=1)
    else:
        poly = [x0 + s / 2, y0, x0 + s, y0 + s, x0, y0 + s]
        d.polygon(poly, fill=1)
    return poly, np.array(m, dtype=bool)


def _rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths, starting with a run of zeros)."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _scene(rng, h, w, max_shapes):
    img = _background(rng, h, w)
    label = np.ones((h, w), np.uint8)
    objs = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        kind = int(rng.integers(0, 3))
        poly, mask = _shape(rng, kind, h, w)
        color = rng.integers(0, 256, size=3)
        img[mask] = color
        label[mask] = kind + 2
        for o in objs:  # later shapes occlude earlier ones
            o[2] &= ~mask
        objs.append([kind, poly, mask])
    label[:2] = 0  # a thin ignore band, as ADE20K's unlabeled pixels
    objs = [o for o in objs if o[2].sum() >= 16]
    return img, label, objs


def make_coco(root: str, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (160, 224),
              max_shapes: int = 3, seed: int = 0) -> str:
    """Write a COCO-format instance set under `root`; returns `root`."""
    rng = np.random.default_rng(seed)
    h, w = size
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img, _, objs = _scene(rng, h, w, max_shapes)
            name = f"{i:06d}.jpg"
            Image.fromarray(img).save(os.path.join(root, split, name), quality=95)
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
            for kind, poly, mask in objs:
                ys, xs = np.nonzero(mask)
                x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
                # occluded shapes and discs carry RLE; intact polygons stay polygons
                intact = poly is not None and mask.sum() >= 0.9 * _shape_area(poly)
                seg = [list(map(float, poly))] if intact else _rle(mask)
                anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=kind + 1, iscrowd=0,
                                 bbox=[float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                 area=float(mask.sum()), segmentation=seg))
        cats = [dict(id=k + 1, name=c, supercategory="shape") for k, c in enumerate(COCO_CLASSES)]
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(dict(images=images, annotations=anns, categories=cats), f)
    return root


def _shape_area(poly) -> float:
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def make_ade(root: str, n_train: int = 8, n_val: int = 4, size: tuple[int, int] = (160, 224), max_shapes: int = 4,
             seed: int = 1) -> str:
    """Write an ADE20K-layout semantic segmentation set under `root`; returns `root`."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("training", n_train), ("validation", n_val)):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        for i in range(n):
            img, label, _ = _scene(rng, h, w, max_shapes)
            Image.fromarray(img).save(os.path.join(root, "images", split, f"{i:06d}.jpg"), quality=95)
            Image.fromarray(label).save(os.path.join(root, "annotations", split, f"{i:06d}.png"))
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco", help="output folder of the COCO-format set")
    p.add_argument("--ade", help="output folder of the ADE20K-format set")
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-val", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, default=(160, 224), metavar=("H", "W"))
    args = p.parse_args(argv)
    if not (args.coco or args.ade):
        p.error("give --coco and/or --ade")
    if args.coco:
        print(make_coco(args.coco, args.n_train, args.n_val, tuple(args.size)))
    if args.ade:
        print(make_ade(args.ade, args.n_train, args.n_val, tuple(args.size)))


if __name__ == "__main__":
    main()
