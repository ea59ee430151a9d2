"""Atomic file writes: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from ctxseg.errors import UserError


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path next to `path`; renamed over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_png(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), array):
            raise UserError(f"Could not write image {path}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 BGR HxWx3. Grayscale is expanded, RGBA drops alpha, 16-bit is rejected."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"Cannot read image {path} (missing or corrupt)")
    if img.dtype != np.uint8:
        raise UserError(f"{path}: {img.dtype} images are not supported; convert to 8-bit (e.g. cv2.convertScaleAbs)")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise UserError(f"{path}: {img.shape[2]}-channel images are not supported")
    return img


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map (single-channel PNG of class ids) as uint8/uint16 HxW."""
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise UserError(f"Cannot read label {path} (missing or corrupt)")
    if lab.ndim == 3:
        raise UserError(f"{path}: label maps must be single-channel class-id PNGs, got {lab.shape[2]} channels")
    return lab
