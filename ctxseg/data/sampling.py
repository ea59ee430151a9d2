"""Image-level re-sampling against class imbalance (recipe key data.sampler).

Both samplers turn per-image class presence into per-image repeat factors r_i that
TrainBatchSampler rounds stochastically each epoch (an image with r = 2.3 appears 2 or 3 times).

  repeat_factor   LVIS (Gupta et al. 2019): f_c = fraction of training images containing class c,
                  r_c = max(1, sqrt(t / f_c)) with t = data.repeat_thresh, r_i = max_{c in i} r_c.
                  Epochs grow by the repeats; images of frequent classes keep r = 1.
  class_balanced  every class is drawn equally often: image weight w_i = sum_{c in i} 1 / n_c
                  (n_c = images containing c), scaled so that sum_i r_i = N (epoch length unchanged).

Presence comes from <index>/class_presence.npy, written by `ctxseg prepare` for the training
split (so training need not read every label); an index without it (or another split) is scanned once.
"""

from __future__ import annotations

import numpy as np

from ctxseg.config import DataConfig
from ctxseg.errors import UserError


def class_presence(index, dataset, cfg: DataConfig) -> np.ndarray:
    """[N, C] bool: does training image i contain class c (after reduce_zero_label, ignore excluded)."""
    meta = index.meta
    path = meta.get("class_presence")
    if (
        path
        and meta.get("class_pixel_counts_split", "train") == cfg.train_split
        and bool(meta.get("reduce_zero_label", False)) == cfg.reduce_zero_label
    ):
        p = index.root / path
        if p.is_file():
            presence = np.load(p)
            if presence.shape == (len(dataset), cfg.num_classes):
                return presence
    from ctxseg.data.dataset import load_label

    presence = np.zeros((len(dataset), cfg.num_classes), bool)
    for i, s in enumerate(dataset.samples):
        lab = load_label(s, cfg)
        values = np.unique(lab)
        presence[i, values[values < cfg.num_classes]] = True
    return presence


def repeat_factors(presence: np.ndarray, thresh: float) -> np.ndarray:
    n = presence.shape[0]
    freq = presence.sum(0) / max(n, 1)
    with np.errstate(divide="ignore"):
        r_c = np.where(freq > 0, np.maximum(1.0, np.sqrt(thresh / np.maximum(freq, 1e-12))), 1.0)
    r = np.where(presence, r_c[None, :], 1.0).max(1) if presence.shape[1] else np.ones(n)
    return r.astype(np.float64)


def class_balanced_factors(presence: np.ndarray) -> np.ndarray:
    n_c = presence.sum(0).astype(np.float64)
    inv = np.where(n_c > 0, 1.0 / np.maximum(n_c, 1), 0.0)
    w = (presence * inv[None, :]).sum(1)
    w = np.where(w > 0, w, inv[inv > 0].min() if (inv > 0).any() else 1.0)  # images of ignore only: rarest weight
    return w * (len(w) / w.sum())


def sample_weights(index, dataset, data_cfg: DataConfig) -> np.ndarray:
    """Per-sample repeat factors for TrainBatchSampler(weights=...)."""
    if data_cfg.sampler == "uniform":
        return np.ones(len(dataset))
    presence = class_presence(index, dataset, data_cfg)
    if data_cfg.sampler == "repeat_factor":
        return repeat_factors(presence, data_cfg.repeat_thresh)
    if data_cfg.sampler == "class_balanced":
        return class_balanced_factors(presence)
    raise UserError(f"Unknown data.sampler '{data_cfg.sampler}'")
