"""Confusion matrix and IoU/Acc against a hand-computed case and an independent implementation."""

from __future__ import annotations

import numpy as np
import torch

from ctxseg.metrics import ConfusionMatrix, summarize


def test_hand_computed_confusion_and_scores():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 3]])
    cm = ConfusionMatrix(4, 255)
    cm.update(pred, target)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert (cm.mat.numpy() == expected).all()
    s = cm.summary(["a", "b", "c", "d"])
    # IoU: a 1/(2+2-1)=1/3, b 2/(3+3-2)=1/2, c 1/(2+1-1)=1/2, d 0/(0+1-0)=0 (predicted but absent: counts)
    assert np.isclose(s["per_class"]["a"]["IoU"], 1 / 3)
    assert np.isclose(s["per_class"]["b"]["IoU"], 1 / 2)
    assert np.isclose(s["per_class"]["d"]["IoU"], 0.0)
    assert np.isclose(s["mIoU"], (1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    # Acc: d has no ground truth -> excluded from mAcc
    assert s["per_class"]["d"]["Acc"] is None
    assert np.isclose(s["mAcc"], (1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert np.isclose(s["aAcc"], 4 / 7)


def test_class_absent_from_gt_and_pred_is_excluded():
    mat = np.array([[5, 0, 0], [0, 3, 0], [0, 0, 0]])
    s = summarize(mat)
    assert s["per_class"]["2"]["IoU"] is None
    assert np.isclose(s["mIoU"], 1.0)


def test_matches_torchmetrics_on_random_predictions():
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    g = torch.Generator().manual_seed(3)
    for c in (5, 19):
        target = torch.randint(0, c, (3, 37, 53), generator=g)
        target[torch.rand(target.shape, generator=g) < 0.1] = 255
        pred = torch.randint(0, c, (3, 37, 53), generator=g)
        cm = ConfusionMatrix(c, 255)
        for p, t in zip(pred, target):  # accumulated per image, like eval
            cm.update(p, t)
        ref = multiclass_confusion_matrix(pred, target, c, ignore_index=255)
        assert torch.equal(cm.mat, ref)
        s = summarize(ref.numpy())
        ref_iou = np.array([ref[i, i] / (ref[i].sum() + ref[:, i].sum() - ref[i, i]) for i in range(c)], dtype=float)
        assert np.isclose(s["mIoU"], ref_iou.mean())
