"""Side-by-side pictures: image | ground truth | prediction | error map, with the image's mIoU.

Made with OpenCV (fast for hundreds of images). Label tiles are upscaled with nearest neighbour
so small images stay legible; ignore pixels are hatched everywhere, and count as neither right
nor wrong in the error map (as in the metric).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ctxseg.viz.overlay import hatch_ignore, legend_panel
from ctxseg.viz.palette import colorize

CORRECT_BGR = (60, 60, 60)  # dark grey: right
WRONG_BGR = (0, 0, 255)  # red: wrong


def per_image_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> float:
    """mIoU of one image over the classes present in its ground truth or prediction (as `ctxseg eval`)."""
    import torch

    from ctxseg.metrics import ConfusionMatrix, image_miou

    m = ConfusionMatrix.compute(
        torch.from_numpy(np.ascontiguousarray(pred)),
        torch.from_numpy(np.ascontiguousarray(gt)),
        num_classes,
        ignore_index,
    )
    return image_miou(m)


def error_map(pred: np.ndarray, gt: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """BGR: wrong pixels red, right pixels dark grey, ignore pixels hatched."""
    out = np.empty((*gt.shape, 3), np.uint8)
    out[:] = CORRECT_BGR
    out[(pred != gt) & (gt != ignore_index)] = WRONG_BGR
    out[gt == ignore_index] = 0
    return hatch_ignore(out, gt == ignore_index)


def _tile_scale(w: int, tile_width: int) -> float:
    return tile_width / w if w > tile_width else float(max(1, 256 // max(w, 1)))


def _header(width: int, text: str, height: int = 24, scale: float = 0.5) -> np.ndarray:
    bar = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(bar, text, (6, height - 8), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def compare_panel(
    image_bgr: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    palette,
    classes: list[str],
    ignore_index: int = 255,
    title: str = "",
    miou: float | None = None,
    tile_width: int = 480,
) -> np.ndarray:
    """One BGR picture: a title bar, then image | ground truth | prediction | errors, then a legend."""
    if gt.shape != pred.shape or gt.shape != image_bgr.shape[:2]:
        raise ValueError(
            f"shape mismatch: image {image_bgr.shape[:2]}, ground truth {gt.shape}, prediction {pred.shape}"
        )
    n = len(classes)
    if miou is None:
        miou = per_image_miou(np.where(pred < n, pred, 0), gt, n, ignore_index)
    h, w = gt.shape
    s = _tile_scale(w, tile_width)
    size = (max(1, round(w * s)), max(1, round(h * s)))

    def label_tile(lab):
        bgr = colorize(lab, palette, n, ignore_index)[..., ::-1].copy()
        bgr[lab == ignore_index] = 160  # grey under the white hatching, which would vanish on white
        return cv2.resize(hatch_ignore(bgr, lab == ignore_index), size, interpolation=cv2.INTER_NEAREST)

    valid = gt != ignore_index
    wrong = float(((pred != gt) & valid).sum() / max(valid.sum(), 1))
    tiles = [
        ("image", cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)),
        ("ground truth", label_tile(gt)),
        ("prediction", label_tile(pred)),
        (
            f"errors: {100 * wrong:.1f}% wrong (red)",
            cv2.resize(error_map(pred, gt, ignore_index), size, interpolation=cv2.INTER_NEAREST),
        ),
    ]
    gap = np.full((size[1] + 24, 6, 3), 255, np.uint8)
    row = []
    for k, (name, tile) in enumerate(tiles):
        row += ([gap] if k else []) + [np.vstack([_header(size[0], name), tile])]
    body = np.hstack(row)
    present = sorted(
        {int(c) for c in np.unique(np.concatenate([gt.ravel(), pred.ravel()])) if c != ignore_index and c < n}
    )
    names = [classes[c] for c in present]
    colors = [(palette[c] if palette is not None else (128, 128, 128)) for c in present]
    if (gt == ignore_index).any():
        names.append("ignore (hatched)")
        colors.append((255, 255, 255))
    body = np.hstack([body, legend_panel(names, colors, body.shape[0])])
    miou_text = "n/a" if miou is None or math.isnan(miou) else f"{100 * miou:.1f}"
    head = _header(body.shape[1], f"{title}   mIoU {miou_text}", height=30, scale=0.6)
    return np.vstack([head, body])
