"""The one inference function: whole image or sliding window, optional scales + flip.

Returns class scores at the input size. Single scale without flip returns the logits; with
several scales/flips the softmax probabilities are averaged (mmseg's aug_test). Sliding windows
are batched `window_batch` at a time.
"""

from __future__ import annotations

import torch

from ctxseg.engine.settings import InferenceSettings
from ctxseg.models.layers import resize


def _forward_logits(model, images: torch.Tensor, align_corners: bool) -> torch.Tensor:
    return resize(model(images)["logits"], images.shape[-2:], align_corners)


def slide_logits(model, images: torch.Tensor, num_classes: int, crop: tuple[int, int], stride: tuple[int, int],
                 window_batch: int = 4, align_corners: bool = False) -> torch.Tensor:
    """mmseg slide_inference: overlapping windows, edge windows shifted inside, logits averaged."""
    n, _, h, w = images.shape
    ch, cw = crop
    sh, sw = stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            boxes.append((y1, y2, x1, x2))
    out = images.new_zeros((n, num_classes, h, w))
    count = images.new_zeros((1, 1, h, w))
    # every window has the same size (min(crop, image)), so windows of all images batch together
    for start in range(0, len(boxes), max(window_batch, 1)):
        chunk = boxes[start:start + window_batch]
        crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        logits = _forward_logits(model, crops, align_corners)
        for k, (y1, y2, x1, x2) in enumerate(chunk):
            out[:, :, y1:y2, x1:x2] += logits[k * n:(k + 1) * n]
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


def flip_scores(scores: torch.Tensor, flip_pairs) -> torch.Tensor:
    """Undo a horizontal flip on class scores, swapping left/right class channels (LIP)."""
    scores = scores.flip(-1)
    if flip_pairs:
        perm = list(range(scores.shape[1]))
        for a, b in flip_pairs:
            perm[a], perm[b] = b, a
        scores = scores[:, perm]
    return scores


@torch.no_grad()
def infer(model, images: torch.Tensor, settings: InferenceSettings, out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Scores [N, C, H, W] at `out_size` (default: the input size) for normalised images."""
    num_classes, mode, crop, stride = settings.num_classes, settings.mode, settings.crop, settings.stride
    scales, flip, flip_pairs = settings.scales, settings.flip, settings.flip_pairs
    window_batch, align_corners = settings.window_batch, settings.align_corners
    h, w = images.shape[-2:]
    out_size = out_size or (h, w)

    def run(x):
        if mode == "slide":
            s = slide_logits(model, x, num_classes, crop, stride, window_batch, align_corners)
        else:
            s = _forward_logits(model, x, align_corners)
        return resize(s, out_size, align_corners)

    scales = list(scales) or [1.0]
    if len(scales) == 1 and scales[0] == 1.0 and not flip:
        return run(images)
    total = None
    for s in scales:
        x = images if s == 1.0 else resize(images, (int(h * s + 0.5), int(w * s + 0.5)), align_corners)
        probs = run(x).softmax(1)
        if flip:
            probs = probs + flip_scores(run(x.flip(-1)), flip_pairs).softmax(1)
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
