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


def _mmseg_iou_metric(preds, targets, c, ignore):
    """mmseg IoUMetric.intersect_and_union restated with numpy: its histc(min=0, max=C-1) drops
    values outside [0, C) from each histogram separately."""
    inter = np.zeros(c)
    area_p = np.zeros(c)
    area_t = np.zeros(c)

    def hist(v):
        v = v[(v >= 0) & (v < c)]
        return np.bincount(v, minlength=c)[:c]

    for p, t in zip(preds, targets):
        keep = t != ignore
        p, t = p[keep], t[keep]
        inter += hist(p[p == t])
        area_p += hist(p)
        area_t += hist(t)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_p + area_t - inter)
        acc = inter / area_t
    return iou, acc, inter.sum() / area_t.sum()


def test_predictions_outside_classes_are_misses_never_misbinned():
    c = 19
    # a small true class predicted as 255: 0 * 19 + 255 = 255 used to land in cell (13, 8)
    target = torch.zeros(4, 4, dtype=torch.int64)
    pred = torch.full((4, 4), 255)
    cm = ConfusionMatrix(c, 255)
    cm.update(pred, target)
    assert int(cm.mat.sum()) == 0 and int(cm.full[0, c]) == 16
    s = cm.summary([str(i) for i in range(c)])
    assert (
        s["per_class"]["0"]["IoU"] == 0.0 and s["per_class"]["13"]["IoU"] is None and s["per_class"]["8"]["IoU"] is None
    )
    assert s["mIoU"] == 0.0 and s["aAcc"] == 0.0
    # a large true class predicted as 255 used to crash: shape '[19, 19]' is invalid
    cm = ConfusionMatrix(c, 255)
    cm.update(torch.full((3, 3), 255), torch.full((3, 3), 18))
    assert cm.summary()["per_class"]["18"]["IoU"] == 0.0


def test_out_of_range_values_follow_mmseg_iou_metric():
    g = torch.Generator().manual_seed(5)
    for c in (3, 19, 150):
        preds, targets = [], []
        cm = ConfusionMatrix(c, 255)
        for _ in range(3):
            t = torch.randint(0, c, (23, 31), generator=g)
            t[torch.rand(t.shape, generator=g) < 0.1] = 255  # ignored
            t[torch.rand(t.shape, generator=g) < 0.05] = c + 3  # not a class, not ignored
            p = torch.randint(0, c, (23, 31), generator=g)
            p[torch.rand(p.shape, generator=g) < 0.1] = 255
            p[torch.rand(p.shape, generator=g) < 0.05] = -1
            p[torch.rand(p.shape, generator=g) < 0.05] = c
            cm.update(p, t)
            preds.append(p.numpy())
            targets.append(t.numpy())
        iou, acc, aacc = _mmseg_iou_metric(preds, targets, c, 255)
        s = cm.summary()
        got = np.array([np.nan if v["IoU"] is None else v["IoU"] for v in s["per_class"].values()])
        got_acc = np.array([np.nan if v["Acc"] is None else v["Acc"] for v in s["per_class"].values()])
        np.testing.assert_allclose(got, iou, atol=1e-12)
        np.testing.assert_allclose(got_acc, acc, atol=1e-12)
        assert np.isclose(s["mIoU"], np.nanmean(iou)) and np.isclose(s["aAcc"], aacc)
        assert np.isclose(s["mAcc"], np.nanmean(acc))
