"""The inputs ../shared/perf/ref_bench.py gives the official code, reproduced for ctxseg's side.

Same generators, same seeds, same draw order, so both sides see identical tensors
(tests/test_bench.py checks them against ref_bench.py's own functions when that file exists):
  smooth_image_u8   smooth random uint8 images (a 1/16-resolution field upsampled + 30% noise)
  voronoi_labels    blob label maps: anisotropic Voronoi cells with a random class each, a
                    fraction of the cells set to the ignore value
  seg_batch         ref_bench's `_seg_batch`: images then labels (32 cells, 19 classes, 8% ignore)
"""

from __future__ import annotations

import torch

MMSEG_MEAN = (123.675, 116.28, 103.53)  # RGB, mmseg's SegDataPreProcessor for Cityscapes
MMSEG_STD = (58.395, 57.12, 57.375)


def voronoi_labels(gen: torch.Generator, batch: int, height: int, width: int, n_cells: int, num_classes: int,
                   ignore_value: int, ignore_prob: float) -> torch.Tensor:
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None, :]
    out = torch.empty(batch, height, width, dtype=torch.long)
    for b in range(batch):
        cy = torch.rand(n_cells, generator=gen) * height
        cx = torch.rand(n_cells, generator=gen) * width
        sy = 0.5 + 1.5 * torch.rand(n_cells, generator=gen)
        sx = 0.5 + 1.5 * torch.rand(n_cells, generator=gen)
        cls = torch.randint(0, num_classes, (n_cells,), generator=gen)
        cls[torch.rand(n_cells, generator=gen) < ignore_prob] = ignore_value
        best = torch.full((height, width), float("inf"))
        arg = torch.zeros((height, width), dtype=torch.long)
        for k in range(n_cells):  # running argmin: O(H*W) memory
            d = ((yy - cy[k]) * sy[k]) ** 2 + ((xx - cx[k]) * sx[k]) ** 2
            closer = d < best
            best = torch.where(closer, d, best)
            arg[closer] = k
        out[b] = cls[arg]
    return out


def smooth_image_u8(gen: torch.Generator, shape: tuple[int, int, int, int]) -> torch.Tensor:
    n, c, h, w = shape
    low = torch.rand((n, c, max(h // 16, 2), max(w // 16, 2)), generator=gen)
    low = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    img = (0.7 * low + 0.3 * torch.rand((n, c, h, w), generator=gen)) * 255.0
    return img.round().clamp(0, 255).to(torch.uint8)


def seg_batch(gen: torch.Generator, batch: int, height: int, width: int, num_classes: int = 19,
              ignore_value: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [B,3,H,W] as mmseg receives them (BGR), labels [B,H,W])."""
    images = smooth_image_u8(gen, (batch, 3, height, width))
    labels = voronoi_labels(gen, batch, height, width, 32, num_classes, ignore_value, 0.08)
    return images, labels


def mmseg_normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """mmseg's data preprocessor: BGR -> RGB, float, (x - mean) / std."""
    x = images_u8[:, [2, 1, 0]].float()
    mean = torch.tensor(MMSEG_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(MMSEG_STD).view(1, 3, 1, 1)
    return (x - mean) / std
