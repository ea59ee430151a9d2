"""Cross-entropy as mmseg computes it, plus mmseg's OHEM pixel sampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctxseg.models.layers import resize


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Loss inputs in float32 or better: half/bfloat16 logits (mixed precision) are upcast, float64 ones
    (a float64 reference run) are kept, not rounded to float32."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    class_weight: torch.Tensor | None = None,
    avg_non_ignore: bool = False,
    pixel_weight: torch.Tensor | None = None,
    weight_norm: str = "pixels",
) -> torch.Tensor:
    """Per-pixel CE averaged like mmseg's CrossEntropyLoss.

    avg_non_ignore=False (mmseg's default): sum over pixels / number of ALL pixels, ignored ones
    included; with class weights the sum is still divided by the pixel count (not the weight sum).
    avg_non_ignore=True: divided by the number of non-ignored pixels.
    `pixel_weight` (OHEM) zeroes the dropped pixels but keeps them in the denominator, as mmseg.
    weight_norm="weights" with class weights: divide by the summed class weights of the counted
    pixels instead (torch's weighted mean, as openseg's CE).
    """
    if class_weight is not None:
        class_weight = class_weight.to(logits.dtype)
    loss = F.cross_entropy(logits, target, weight=class_weight, ignore_index=ignore_index, reduction="none")
    if pixel_weight is not None:
        loss = loss * pixel_weight
    valid = target != ignore_index
    if class_weight is not None and weight_norm == "weights":
        w = class_weight[target.clamp(0, len(class_weight) - 1)] * valid
        if pixel_weight is not None:
            w = w * pixel_weight
        return loss.sum() / w.sum().clamp(min=1e-12)
    if avg_non_ignore:
        denom = valid.sum().clamp(min=1)
    else:
        denom = target.numel()
    return loss.sum() / denom


@torch.no_grad()
def ohem_weights(
    logits: torch.Tensor, target: torch.Tensor, thresh: float, min_kept: int, ignore_index: int
) -> torch.Tensor:
    """mmseg OHEMPixelSampler: keep pixels whose true-class probability is below `thresh`, and at
    least `min_kept` per image (the threshold rises to the (min_kept*N)-th smallest probability)."""
    valid = target != ignore_index
    weight = torch.zeros_like(target, dtype=logits.dtype)
    num_valid = int(valid.sum())
    if num_valid == 0:
        return weight
    prob = logits.softmax(dim=1)
    t = target.clone()
    t[~valid] = 0
    p = prob.gather(1, t.unsqueeze(1)).squeeze(1)
    sorted_p, _ = p[valid].sort()
    k = min(min_kept * target.shape[0], num_valid - 1)
    threshold = max(float(sorted_p[k]), thresh)
    weight[valid & (p < threshold)] = 1.0
    return weight


def seg_ce_term(logits: torch.Tensor, target: torch.Tensor, align_corners: bool, **kw) -> torch.Tensor:
    """Upsample feature-resolution logits to the label size (bilinear, mmseg) and apply CE."""
    logits = resize(logits, target.shape[-2:], align_corners)
    return cross_entropy(logits, target, **kw)
