"""Straightforward implementations of ContrastiveSeg's sampler and loss (the official code's
structure, re-written): independent checks of the vectorised / fused code in ctxseg.losses.contrast.

* `naive_sample_anchors`   per-image / per-class loops
* `full_sort_random_indices` the random sampler's choice by a full sort of every pixel's key
* `naive_contrastive_loss` row by row (tiny inputs only)
* `reference_matrix_loss`  the official matrix form: float masks built by repeat/scatter, the queue
                           copied class by class; plain autograd (gradient reference)
"""

from __future__ import annotations

import torch


def naive_sample_anchors(
    feats: torch.Tensor,
    labels: torch.Tensor,
    predict: torch.Tensor,
    max_samples: int,
    max_views: int,
    ignore_index: int = -1,
    random: bool = True,
):
    """Loop version: returns (anchors [T, V, D], labels [T], indices [T, V]) or None."""
    per_image = []
    for b in range(labels.shape[0]):
        classes = [int(c) for c in torch.unique(labels[b]) if int(c) != ignore_index and int(c) >= 0]
        per_image.append([c for c in classes if int((labels[b] == c).sum()) > max_views])
    total = sum(len(c) for c in per_image)
    if total == 0:
        return None
    n_view = min(max_samples // total, max_views)
    if n_view == 0:
        return None
    xs, ys, idxs = [], [], []
    for b, classes in enumerate(per_image):
        for c in classes:
            hard = ((labels[b] == c) & (predict[b] != c)).nonzero()[:, 0]
            easy = ((labels[b] == c) & (predict[b] == c)).nonzero()[:, 0]
            nh, ne = len(hard), len(easy)
            if nh >= n_view / 2 and ne >= n_view / 2:
                kh = n_view // 2
                ke = n_view - kh
            elif nh >= n_view / 2:
                ke = ne
                kh = n_view - ke
            else:
                kh = nh
                ke = n_view - kh
            ph = torch.randperm(nh) if random else torch.arange(nh)
            pe = torch.randperm(ne) if random else torch.arange(ne)
            idx = torch.cat([hard[ph[:kh]], easy[pe[:ke]]])
            xs.append(feats[b, idx].float())
            ys.append(c)
            idxs.append(idx)
    return torch.stack(xs), torch.tensor(ys), torch.stack(idxs)


def naive_contrastive_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    base_temperature: float,
    queue: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row-by-row loss (official formula; with a queue: classes 1.. copied, class 0 rows left zero)."""
    a, v, d = feats.shape
    rows = [(feats[i, j], int(labels[i])) for j in range(v) for i in range(a)]  # view-major
    if queue is None:
        cols = rows
    else:
        c, q, _ = queue.shape
        cols = [(queue[k, s], k) for k in range(1, c) for s in range(q)] + [(queue.new_zeros(d), 0)] * q
    col_x = torch.stack([x for x, _ in cols])
    col_y = torch.tensor([y for _, y in cols])
    losses = []
    for r, (x, y) in enumerate(rows):
        logits = col_x @ x / temperature
        logits = logits - logits.max()
        neg = logits[col_y != y].exp().sum()
        terms = []
        for k in range(len(cols)):
            if col_y[k] == y and k != r:
                terms.append(logits[k] - torch.log(logits[k].exp() + neg))
        losses.append(torch.stack(terms).mean() if terms else torch.tensor(float("nan")))
    return -(temperature / base_temperature) * torch.stack(losses).mean()


def reference_matrix_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    base_temperature: float,
    queue: torch.Tensor | None = None,
) -> torch.Tensor:
    """The official structure: float masks built by repeat/scatter, queue copied class by class."""
    a, v, d = feats.shape
    anchor = torch.cat(torch.unbind(feats, dim=1), dim=0)
    y_anchor = labels.view(-1, 1).float()
    if queue is None:
        contrast, y_contrast, contrast_count = anchor, y_anchor, v
    else:
        c, q, _ = queue.shape
        contrast = queue.new_zeros(c * q, d)
        y_contrast = torch.zeros(c * q, 1)
        ptr = 0
        for k in range(1, c):
            contrast[ptr : ptr + q] = queue[k]
            y_contrast[ptr : ptr + q] = k
            ptr += q
        contrast_count = 1
    mask = torch.eq(y_anchor, y_contrast.T).float().repeat(v, contrast_count)
    logits = anchor @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values
    neg_mask = 1 - mask
    logits_mask = torch.ones_like(mask).scatter_(1, torch.arange(a * v).view(-1, 1), 0)
    mask = mask * logits_mask
    neg = (logits.exp() * neg_mask).sum(1, keepdim=True)
    log_prob = logits - torch.log(logits.exp() + neg)
    return -(temperature / base_temperature) * ((mask * log_prob).sum(1) / mask.sum(1)).mean()


def full_sort_random_indices(
    labels: torch.Tensor,
    predict: torch.Tensor,
    pairs: torch.Tensor,
    hard_keep: torch.Tensor,
    easy_keep: torch.Tensor,
    ignore_index: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """ctxseg's random choice (key = torch.randint(0, 2**31 - 1, [B, N]) from `generator`; per
    (image, class) the hard pixels of smallest key, then the easy ones) by sorting every pixel of
    every class, one (image, class, kind) at a time."""
    b, n = labels.shape
    key = torch.randint(0, 2**31 - 1, (b, n), generator=generator)
    rows = []
    for (i, c), nh, ne in zip(pairs.tolist(), hard_keep.tolist(), easy_keep.tolist()):
        ok = (labels[i] == c) & (labels[i] != ignore_index)
        hard = (ok & (predict[i] != c)).nonzero().squeeze(1)
        easy = (ok & (predict[i] == c)).nonzero().squeeze(1)
        hard = hard[key[i, hard].argsort()][:nh]
        easy = easy[key[i, easy].argsort()][:ne]
        rows.append(torch.cat([hard, easy]))
    return torch.stack(rows)
