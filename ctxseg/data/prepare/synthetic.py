"""The built-in dataset: textured shapes whose class is carried by texture, not colour.

Every region (background included) draws its two colours from the SAME distribution, so a
per-pixel colour classifier is close to chance (README reports it); the class is in the texture
(stripe orientation, checker, dots, speckle), the layout and the shape, under noise and blur.
Thin bands at object boundaries are marked with the ignore index, as in PASCAL VOC.
Deterministic: sample i of split s is a function of (seed, s, i) only.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from ctxseg.io import write_json, write_png, write_text

CLASSES = [
    "background",
    "horizontal-stripes",
    "vertical-stripes",
    "checkerboard",
    "dots",
    "diagonal-stripes",
    "speckle",
]
PALETTE = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180]]
IGNORE = 255
SPLITS = {"train": 400, "val": 100}


def _texture(cls: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A [0, 1] texture map for class `cls`."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(6, 11)
    phase = rng.uniform(0, period)
    if cls == 0:  # smooth blotches: low-frequency noise
        small = rng.random((max(h // 24, 2), max(w // 24, 2))).astype(np.float32)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    if cls == 1:
        return ((yy + phase) % period < period / 2).astype(np.float32)
    if cls == 2:
        return ((xx + phase) % period < period / 2).astype(np.float32)
    if cls == 3:
        return (((yy + phase) // (period / 2) + (xx + phase) // (period / 2)) % 2).astype(np.float32)
    if cls == 4:
        cy = (yy + phase) % period - period / 2
        cx = (xx + phase) % period - period / 2
        return (cy**2 + cx**2 < (period / 3.2) ** 2).astype(np.float32)
    if cls == 5:
        sign = rng.choice([-1.0, 1.0])
        return ((yy + sign * xx + phase) % (period * 1.2) < period * 0.6).astype(np.float32)
    # speckle: fine binary noise
    return (rng.random((h, w)) < 0.5).astype(np.float32)


def _shape_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    size = rng.uniform(0.12, 0.32) * min(h, w)
    kind = rng.integers(3)
    if kind == 0:
        cv2.ellipse(
            mask,
            (int(cx), int(cy)),
            (int(size), int(size * rng.uniform(0.5, 1.0))),
            float(rng.uniform(0, 180)),
            0,
            360,
            1,
            -1,
        )
    else:
        n = 4 if kind == 1 else 3
        ang = np.sort(rng.uniform(0, 2 * np.pi, n)) if kind == 2 else np.arange(n) * np.pi / 2 + rng.uniform(0, np.pi)
        rad = size * (rng.uniform(0.8, 1.3, n) if kind == 2 else np.ones(n) * 1.2)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, 3).astype(np.float32)


def make_sample(seed: int, split: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(BGR uint8 image, uint8 label) for sample i of `split`."""
    digest = hashlib.sha256(f"{seed}/{split}/{i}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    h, w = int(rng.integers(128, 257)), int(rng.integers(128, 257))
    label = np.zeros((h, w), np.uint8)
    img = np.empty((h, w, 3), np.float32)
    t = _texture(0, h, w, rng)[..., None]
    img[:] = t * _random_colour(rng) + (1 - t) * _random_colour(rng)
    boundary = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, len(CLASSES)))
        mask = _shape_mask(h, w, rng)
        t = _texture(cls, h, w, rng)[..., None]
        tex = t * _random_colour(rng) + (1 - t) * _random_colour(rng)
        img[mask] = tex[mask]
        label[mask] = cls
        if rng.random() < 0.6:  # VOC-like ignore band on this object's outline
            edge = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(bool)
            boundary |= edge
        else:
            boundary &= ~mask
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(0.4, 0.9)))
    img = img * rng.uniform(0.8, 1.2) + rng.uniform(-15, 15)
    label[boundary] = IGNORE
    return np.clip(img, 0, 255).astype(np.uint8), label


def _write_one(args) -> np.ndarray:
    out, seed, split, i = args
    img_path = out / "images" / split / f"{split}_{i:04d}.png"
    lab_path = out / "labels" / split / f"{split}_{i:04d}.png"
    img, lab = make_sample(seed, split, i)
    if not img_path.exists():  # resumable: finished files are kept (writes are atomic)
        write_png(img_path, img)
    if not lab_path.exists():
        write_png(lab_path, lab)
    return np.bincount(lab[lab != IGNORE].ravel(), minlength=len(CLASSES))


def prepare_synthetic(
    out: Path, seed: int = 0, sizes: dict[str, int] | None = None, workers: int = 2, progress=None
) -> dict:
    sizes = sizes or SPLITS
    out = Path(out)
    counts = np.zeros(len(CLASSES), np.int64)
    jobs = [(out, seed, split, i) for split, n in sizes.items() for i in range(n)]
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        for k, c in enumerate(pool.map(_write_one, jobs, chunksize=16)):
            if jobs[k][2] == "train":
                counts += c
            if progress:
                progress(k + 1, len(jobs))
    for split, n in sizes.items():
        lines = [f"images/{split}/{split}_{i:04d}.png labels/{split}/{split}_{i:04d}.png" for i in range(n)]
        write_text(out / "splits" / f"{split}.txt", "\n".join(lines) + "\n")
    meta = {
        "name": "synthetic",
        "classes": CLASSES,
        "palette": PALETTE,
        "num_classes": len(CLASSES),
        "ignore_index": IGNORE,
        "reduce_zero_label": False,
        "image_root": ".",
        "label_root": ".",
        "flip_pairs": [],
        "splits": dict(sizes),
        "class_pixel_counts": counts.tolist(),
        "source_checksum": hashlib.sha256(f"synthetic/{seed}/{sorted(sizes.items())}".encode()).hexdigest(),
        "seed": seed,
    }
    write_json(out / "meta.json", meta)
    return meta
