"""Small data helpers: an ImageNet-layout folder (`train/<class>/*.png`, `val/<class>/*.png`) built from
scikit-learn's bundled digits (no network), used by the demo and the trainer tests.

The folder is marked as ours by a marker file written before anything else, so a rebuild (other parameters, or
a build that was killed) deletes only the files this module wrote; a non-empty folder without the marker is
refused, never emptied.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["digits_to_folder", "write_image_folder"]

_MARKER = ".visionattn-digits.json"
_LEGACY_MARKER = "layout.json"  # the marker of earlier versions (same parameters, version 1)
_IMAGE = re.compile(r"^\d{5}\.png$")
_SPLITS = ("train", "val")


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


def _read_marker(root: Path) -> dict | None:
    for name in (_MARKER, _LEGACY_MARKER):
        p = root / name
        if p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and {"size", "val_fraction", "seed", "limit"} <= set(data):
                return data
    return None


def _remove_own_files(root: Path) -> None:
    """Delete what `digits_to_folder` wrote under `root` (split/class/NNNNN.png, then the emptied folders);
    raise if anything else lives in those folders."""
    foreign = []
    for split in _SPLITS:
        d = root / split
        if not d.is_dir():
            continue
        for cls in d.iterdir():
            if not (cls.is_dir() and cls.name.isdigit()):
                foreign.append(cls)
                continue
            foreign.extend(f for f in cls.iterdir() if not (f.is_file() and _IMAGE.match(f.name)))
    if foreign:
        raise FileExistsError(f"digits folder {root} holds files digits_to_folder did not write "
                              f"(e.g. {foreign[0]}); move them away or choose another folder")
    for split in _SPLITS:
        d = root / split
        if not d.is_dir():
            continue
        for cls in list(d.iterdir()):
            for f in cls.iterdir():
                f.unlink()
            cls.rmdir()
        d.rmdir()


def digits_to_folder(root: str | os.PathLike = ".cache/digits", size: int = 32, val_fraction: float = 0.2,
                     seed: int = 0, limit: int | None = None) -> Path:
    """sklearn's 8x8 digits (1797 images, 10 classes) as an ImageNet-layout folder of `size`x`size` PNGs.

    The split is stratified and seeded; the folder is cached and rebuilt only when its parameters change.
    limit: keep only the first `limit` images (tiny test sets). Returns `root`.

    `root` must be absent, empty, or a folder this function made (its marker file): anything else raises
    FileExistsError, and a rebuild deletes only the images this function wrote.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"digits folder {root} is a file, not a folder")
    params = {"size": size, "val_fraction": val_fraction, "seed": seed, "limit": limit, "version": 1}
    marker = _read_marker(root) if root.is_dir() else None
    if marker is not None and marker.get("complete", True) and {k: marker.get(k) for k in params} == params:
        return root
    if marker is None and root.is_dir() and any(root.iterdir()):
        raise FileExistsError(f"digits folder {root} is not empty and was not made by digits_to_folder "
                              f"(no {_MARKER}); refusing to write into it: choose an empty or new folder")
    from sklearn.datasets import load_digits

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
    if np.bincount(y[~is_val], minlength=10).min() < 1 or np.bincount(y[is_val], minlength=10).min() < 1:
        raise ValueError(f"limit={limit}, val_fraction={val_fraction} leave a digit without train or val images")
    if marker is not None:  # ours, other parameters or an unfinished build: remove exactly what we wrote
        _remove_own_files(root)
        for f in root.iterdir():
            if f.name == _LEGACY_MARKER or f.name.startswith(f"{_MARKER}.tmp"):
                f.unlink()
    names = [str(c) for c in range(10)]
    root.mkdir(parents=True, exist_ok=True)
    # marker first: a build killed half-way is still recognised as ours and rebuilt on the next call
    (root / _MARKER).write_text(json.dumps({**params, "complete": False}))
    write_image_folder(root, x[~is_val], y[~is_val], "train", names, size)
    write_image_folder(root, x[is_val], y[is_val], "val", names, size)
    tmp = root / f"{_MARKER}.tmp{os.getpid()}"
    tmp.write_text(json.dumps({**params, "complete": True}))
    os.replace(tmp, root / _MARKER)
    return root
