"""Overlay: the image blended with a label map in the dataset palette, plus a legend."""

from __future__ import annotations

import cv2
import numpy as np

from ctxseg.viz.palette import IGNORE_COLOR, colorize


def overlay(
    image_bgr: np.ndarray,
    label: np.ndarray,
    palette,
    classes: list[str],
    ignore_index: int = 255,
    alpha: float = 0.5,
    legend: bool = True,
) -> np.ndarray:
    """BGR uint8 picture: colours blended over the image, ignore pixels hatched, legend of present classes."""
    color = colorize(label, palette, len(classes), ignore_index)[..., ::-1].astype(np.float32)
    out = image_bgr.astype(np.float32) * (1 - alpha) + color * alpha
    out = hatch_ignore(out, label == ignore_index).clip(0, 255).astype(np.uint8)
    if legend:
        present = [int(c) for c in np.unique(label) if c != ignore_index and c < len(classes)]
        names, colors = [classes[c] for c in present], [palette[c] for c in present]
        if (label == ignore_index).any():
            names.append("ignore (hatched)")
            colors.append(IGNORE_COLOR)
        out = np.hstack([out, legend_panel(names, colors, out.shape[0])])
    return out


def hatch_ignore(picture: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """Diagonal hatching (IGNORE_COLOR stripes) over ignore pixels, so they are not mistaken for a class."""
    if ignore.any():
        yy, xx = np.mgrid[0 : ignore.shape[0], 0 : ignore.shape[1]]
        picture = picture.copy()
        picture[ignore & (((yy + xx) // 3) % 2 == 0)] = np.asarray(IGNORE_COLOR[::-1], picture.dtype)
    return picture


def legend_panel(names: list[str], colors_rgb, height: int, width: int = 170, row: int = 18) -> np.ndarray:
    rows = max(height, row * (len(names) + 1))
    panel = np.full((rows, width, 3), 255, np.uint8)
    for k, (name, c) in enumerate(zip(names, colors_rgb)):
        y = 6 + k * row
        cv2.rectangle(panel, (6, y), (20, y + 12), tuple(int(v) for v in c[::-1]), -1)
        cv2.rectangle(panel, (6, y), (20, y + 12), (0, 0, 0), 1)
        cv2.putText(panel, name[:22], (26, y + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    if rows > height:
        return cv2.resize(panel, (int(width * height / rows), height), interpolation=cv2.INTER_AREA)
    return panel
