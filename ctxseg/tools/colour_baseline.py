"""Per-pixel colour classifier baseline: how far does colour alone get on a prepared dataset?

Fits the Bayes-optimal per-pixel rule on quantised colours (32 levels per channel): each colour
bin predicts the class most often seen with it in the train split; scored on the val split with
the same metrics as `ctxseg eval`. Run: python -m ctxseg.tools.colour_baseline data/synthetic
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ctxseg.data.index import PreparedIndex
from ctxseg.io import read_image, read_label
from ctxseg.metrics import ConfusionMatrix

LEVELS = 32


def _bins(img: np.ndarray) -> np.ndarray:
    q = (img.astype(np.int64) * LEVELS) // 256
    return (q[..., 0] * LEVELS + q[..., 1]) * LEVELS + q[..., 2]


def colour_baseline(root: str) -> dict:
    index = PreparedIndex.open(root)
    c, ignore = index.meta["num_classes"], index.ignore_index
    counts = np.zeros((LEVELS**3, c), np.int64)
    for s in index.samples("train"):
        b, lab = _bins(read_image(s.image)), read_label(s.label)
        valid = lab != ignore
        np.add.at(counts, (b[valid], lab[valid].astype(np.int64)), 1)
    rule = counts.argmax(1)
    cm = ConfusionMatrix(c, ignore)
    for s in index.samples("val"):
        pred = rule[_bins(read_image(s.image))]
        cm.update(torch.from_numpy(pred), torch.from_numpy(read_label(s.label).astype(np.int64)))
    return cm.summary(index.classes)


if __name__ == "__main__":
    s = colour_baseline(sys.argv[1] if len(sys.argv) > 1 else "data/synthetic")
    print(f"colour baseline on val: mIoU {100 * s['mIoU']:.2f}  aAcc {100 * s['aAcc']:.2f}  mAcc {100 * s['mAcc']:.2f}")
