"""Class palettes and label colouring."""

from __future__ import annotations

import numpy as np

IGNORE_COLOR = (255, 255, 255)  # RGB; ignore pixels are drawn white (and hatched in overlays)


def default_palette(num_classes: int, seed: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (num_classes, 3)).tolist()


def colorize(
    label: np.ndarray, palette: list[list[int]] | None, num_classes: int, ignore_index: int = 255
) -> np.ndarray:
    """HxW class ids -> HxWx3 RGB uint8; ignore (and any id outside the palette) -> IGNORE_COLOR."""
    pal = np.asarray(palette if palette is not None else default_palette(num_classes), np.uint8)
    lut = np.tile(np.asarray(IGNORE_COLOR, np.uint8), (max(int(label.max()) + 1, len(pal)), 1))
    lut[: len(pal)] = pal
    if ignore_index < len(lut):
        lut[ignore_index] = IGNORE_COLOR
    return lut[label.astype(np.int64)]
