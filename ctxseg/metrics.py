"""Confusion matrix -> aAcc / mIoU / mAcc, as mmseg's IoUMetric computes them.

Per class: IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN). A class with no ground-truth pixels
and no predicted pixels has IoU 0/0 = NaN and is left out of mIoU (nanmean); a class with no
ground-truth pixels has Acc NaN and is left out of mAcc. aAcc = sum(TP) / #valid pixels.

Values outside [0, C) follow mmseg's IoUMetric (its histograms simply drop them):
  * a prediction outside [0, C) (e.g. 255 for a void Cityscapes id) on a pixel of class c is a
    miss of c (a false negative of c, a false positive of no class);
  * a ground-truth value outside [0, C) that is not the ignore index is no class's ground truth,
    but the class predicted there gets a false positive.
They are counted in an extra "outside" row/column (index C) of the full matrix, so nothing is
ever binned into another class's cell. `mat` is the C x C part (what training reduces).
"""

from __future__ import annotations

import numpy as np
import torch


class ConfusionMatrix:
    """Accumulated confusion counts (rows: ground truth, columns: prediction) and the metrics read from them.

    Predictions or labels outside [0, num_classes) are counted in an extra row/column (`full`) so they
    lower the scores instead of disappearing.

    Args:
        num_classes: number of classes C.
        ignore_index: label value whose pixels are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # rows: ground truth, columns: prediction; index num_classes = "outside [0, C)"
        self.full = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)

    @property
    def mat(self) -> torch.Tensor:
        """The C x C confusion matrix (a view of `full`)."""
        return self.full[: self.num_classes, : self.num_classes]

    @staticmethod
    def compute_full(
        pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
    ) -> torch.Tensor:
        """(C+1) x (C+1) counts; row/column C collects ground truth/predictions outside [0, C)."""
        valid = target != ignore_index
        t = target[valid].long()
        p = pred[valid].long()
        t = torch.where((t >= 0) & (t < num_classes), t, num_classes)
        p = torch.where((p >= 0) & (p < num_classes), p, num_classes)
        n = num_classes + 1
        return torch.bincount(t * n + p, minlength=n * n).reshape(n, n).cpu()

    @staticmethod
    def compute(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
        return ConfusionMatrix.compute_full(pred, target, num_classes, ignore_index)[:num_classes, :num_classes]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Add one image; returns its C x C matrix (use `update_full` for the outside counts too)."""
        return self.update_full(pred, target)[: self.num_classes, : self.num_classes]

    def update_full(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(target.shape)}")
        m = self.compute_full(pred, target, self.num_classes, self.ignore_index)
        self.full += m
        return m

    def summary(self, class_names: list[str] | None = None) -> dict:
        return summarize(self.full.numpy(), class_names, outside=True)


def summarize(mat: np.ndarray, class_names: list[str] | None = None, outside: bool = False) -> dict:
    """Scores from a C x C matrix, or with outside=True from the (C+1) x (C+1) `ConfusionMatrix.full`
    (last row / column: ground truth / predictions outside [0, C), see the module docstring)."""
    mat = np.asarray(mat, dtype=np.float64)
    c = mat.shape[0] - 1 if outside else mat.shape[0]
    tp = np.diag(mat)[:c]
    gt = mat[:c].sum(1)  # a class's ground truth, whatever was predicted (outside included)
    pred = mat[:, :c].sum(0)  # a class's predictions, wherever the ground truth is valid
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / union
        acc = tp / gt
    names = class_names or [str(i) for i in range(c)]
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
