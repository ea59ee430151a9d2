"""Confusion matrix -> aAcc / mIoU / mAcc, as mmseg's IoUMetric computes them.

Per class: IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN). A class with no ground-truth pixels
and no predicted pixels has IoU 0/0 = NaN and is left out of mIoU (nanmean); a class with no
ground-truth pixels has Acc NaN and is left out of mAcc. aAcc = sum(TP) / #valid pixels.
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # rows: ground truth

    @staticmethod
    def compute(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
        valid = target != ignore_index
        idx = target[valid].long() * num_classes + pred[valid].long()
        return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).cpu()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.compute(pred, target, self.num_classes, self.ignore_index)
        self.mat += m
        return m

    def summary(self, class_names: list[str] | None = None) -> dict:
        return summarize(self.mat.numpy(), class_names)


def summarize(mat: np.ndarray, class_names: list[str] | None = None) -> dict:
    mat = mat.astype(np.float64)
    tp = np.diag(mat)
    gt = mat.sum(1)
    pred = mat.sum(0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / union
        acc = tp / gt
    names = class_names or [str(i) for i in range(len(tp))]
    total = gt.sum()

    def clean(x):
        return None if np.isnan(x) else float(x)

    return {
        "aAcc": float(tp.sum() / total) if total else 0.0,
        "mIoU": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else 0.0,
        "mAcc": float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else 0.0,
        "per_class": {n: {"IoU": clean(i), "Acc": clean(a)} for n, i, a in zip(names, iou, acc)},
    }


def image_miou(mat) -> float:
    """mIoU of ONE image's confusion matrix (torch or numpy): the mean IoU over the classes present
    in its ground truth or prediction (union > 0); NaN when there are none. Used by `ctxseg eval`
    (per_image_mIoU in metrics.json) and `viz compare`, so both rank images the same way."""
    m = np.asarray(mat.cpu() if isinstance(mat, torch.Tensor) else mat, dtype=np.float64)
    tp = np.diag(m)
    union = m.sum(0) + m.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")
