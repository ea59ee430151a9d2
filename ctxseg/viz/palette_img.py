"""The dataset's classes and colours as one legend picture (OpenCV).

Classes are laid out in columns of at most `rows` entries (150 ADE20K classes -> 4 columns), each
entry "id  name" beside its swatch; the ignore colour is listed last.
"""

from __future__ import annotations

import importlib
import math

import cv2
import numpy as np

from ctxseg.viz.palette import IGNORE_COLOR, default_palette

# dataset name (recipe data.dataset) -> module under ctxseg.data.prepare with CLASSES / PALETTE
_DATASET_MODULES = {
    "coco-stuff10k": "cocostuff",
    "coco-stuff164k": "cocostuff",
    "voc-aug": "voc",
    "pascal-context": "pascal_context",
    "pascal-context-60": "pascal_context",
}


def classes_from_recipe(recipe) -> tuple[list[str], list[list[int]], int, str]:
    """(classes, palette, ignore_index, where they came from) for a recipe: its prepared index when
    present, else the dataset module's tables, else numbered classes with a generated palette."""
    from ctxseg.data.index import PreparedIndex
    from ctxseg.errors import UserError

    d = recipe.data
    try:
        index = PreparedIndex.open(d.root)
        return index.classes, index.palette, index.ignore_index, f"{d.root}/meta.json"
    except UserError:
        pass
    name = _DATASET_MODULES.get(d.dataset, d.dataset.replace("-", "_"))
    classes = palette = None
    try:
        mod = importlib.import_module(f"ctxseg.data.prepare.{name}")
        classes = getattr(mod, "CLASSES", None)
        palette = getattr(mod, "PALETTE", None)
    except ImportError:
        pass
    if classes is None or len(classes) != d.num_classes:
        return (
            [str(i) for i in range(d.num_classes)],
            default_palette(d.num_classes),
            d.ignore_index,
            "generated (dataset not prepared)",
        )
    if palette is None or len(palette) < len(classes):
        palette = default_palette(len(classes))
    return list(classes), [list(c) for c in palette], d.ignore_index, f"ctxseg.data.prepare.{name}"


def palette_image(
    classes: list[str],
    palette,
    ignore_index: int | None = 255,
    rows: int = 40,
    title: str = "",
    col_width: int = 230,
    row_height: int = 22,
) -> np.ndarray:
    """BGR uint8 legend of every class (and the ignore colour)."""
    entries = [(f"{i:>3}  {name}", tuple(int(v) for v in palette[i])) for i, name in enumerate(classes)]
    if ignore_index is not None:
        entries.append((f"{ignore_index:>3}  ignore", IGNORE_COLOR))
    cols = max(1, math.ceil(len(entries) / rows))
    per_col = math.ceil(len(entries) / cols)
    top = 34 if title else 8
    img = np.full((top + per_col * row_height + 8, cols * col_width + 8, 3), 255, np.uint8)
    if title:
        cv2.putText(img, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (text, rgb) in enumerate(entries):
        x = 8 + (k // per_col) * col_width
        y = top + (k % per_col) * row_height
        swatch = np.empty((row_height - 5, 29, 3), np.uint8)
        swatch[:] = rgb[::-1]
        if k == len(classes):  # the ignore entry: hatched like ignore pixels in overlays
            yy, xx = np.mgrid[0 : swatch.shape[0], 0 : swatch.shape[1]]
            swatch[((yy + xx) // 3) % 2 == 0] = (150, 150, 150)
        img[y : y + swatch.shape[0], x : x + swatch.shape[1]] = swatch
        cv2.rectangle(img, (x, y), (x + 28, y + row_height - 6), (0, 0, 0), 1)
        cv2.putText(
            img, text[:28], (x + 34, y + row_height - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA
        )
    return img
