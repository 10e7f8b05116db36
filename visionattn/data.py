"""Small data helpers: an ImageNet-layout folder (`train/<class>/*.png`, `val/<class>/*.png`) built from
scikit-learn's bundled digits (no network), used by the demo and the trainer tests."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["digits_to_folder", "write_image_folder"]

_STAMP = "layout.json"


def write_image_folder(root: str | os.PathLike, images: np.ndarray, labels: np.ndarray, split: str,
                       class_names: list[str], size: int | None = None) -> None:
    """Write uint8 grey `images` [N, H, W] as RGB PNGs under `root/split/<class>/<i>.png` (resized to `size`)."""
    from PIL import Image

    root = Path(root)
    for name in class_names:
        (root / split / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        im = Image.fromarray(img, mode="L").convert("RGB")
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        im.save(root / split / class_names[int(y)] / f"{i:05d}.png")


def digits_to_folder(root: str | os.PathLike = ".cache/digits", size: int = 32, val_fraction: float = 0.2,
                     seed: int = 0, limit: int | None = None) -> Path:
    """sklearn's 8x8 digits (1797 images, 10 classes) as an ImageNet-layout folder of `size`x`size` PNGs.

    The split is stratified and seeded; the folder is cached and rebuilt only when its parameters change.
    limit: keep only the first `limit` images (tiny test sets). Returns `root`.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    root = Path(root)
    params = {"size": size, "val_fraction": val_fraction, "seed": seed, "limit": limit, "version": 1}
    stamp = root / _STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return root
    import shutil

    from sklearn.datasets import load_digits

    if root.exists():
        shutil.rmtree(root)
    d = load_digits()
    x = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    y = d.target
    if limit is not None:
        x, y = x[:limit], y[:limit]
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        val_idx.extend(idx[: max(1, round(len(idx) * val_fraction))].tolist())
    is_val = np.zeros(len(y), dtype=bool)
    is_val[val_idx] = True
    names = [str(c) for c in range(10)]
    write_image_folder(root, x[~is_val], y[~is_val], "train", names, size)
    write_image_folder(root, x[is_val], y[is_val], "val", names, size)
    stamp.write_text(json.dumps(params))
    return root
