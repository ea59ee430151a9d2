"""Pixel-contrast loss timing: ctxseg's vectorised sampler + loss vs a naive per-image/per-class loop.

    python -m ctxseg.tools.bench_contrast [--repeats 3] [--threads 2]

The reference is the official code's structure, re-written: a sampler looping over images and
classes (`naive_sample_anchors`), and the loss as a matrix product with float masks built by
repeat/scatter and the queue copied class by class (`reference_matrix_loss`). The tests also
use these, and a row-by-row loop (`naive_contrastive_loss`, tiny inputs only), as independent
checks of the vectorised code. Results: docs/benchmarks/contrast.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ctxseg.losses.contrast import contrastive_loss, downsample_labels, sample_anchors


def naive_sample_anchors(feats: torch.Tensor, labels: torch.Tensor, predict: torch.Tensor, max_samples: int,
                         max_views: int, ignore_index: int = -1, random: bool = True):
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


def naive_contrastive_loss(feats: torch.Tensor, labels: torch.Tensor, temperature: float, base_temperature: float,
                           queue: torch.Tensor | None = None) -> torch.Tensor:
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


def reference_matrix_loss(feats: torch.Tensor, labels: torch.Tensor, temperature: float, base_temperature: float,
                          queue: torch.Tensor | None = None) -> torch.Tensor:
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
            contrast[ptr:ptr + q] = queue[k]
            y_contrast[ptr:ptr + q] = k
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


def _naive_total(embed, labels, predict, queue, **kw):
    b, d, h, w = embed.shape
    lab = downsample_labels(labels, (h, w)).reshape(b, -1)
    flat = embed.permute(0, 2, 3, 1).reshape(b, h * w, d)
    x, y, _ = naive_sample_anchors(flat, lab, predict.reshape(b, -1), kw["max_samples"], kw["max_views"])
    return reference_matrix_loss(x, y, kw["temperature"], kw["base_temperature"], queue)


def _vector_total(embed, labels, predict, queue, **kw):
    b, d, h, w = embed.shape
    lab = downsample_labels(labels, (h, w)).reshape(b, -1)
    flat = embed.permute(0, 2, 3, 1).reshape(b, h * w, d)
    anchors = sample_anchors(flat, lab, predict.reshape(b, -1), kw["max_samples"], kw["max_views"])
    return contrastive_loss(anchors.feats, anchors.labels, kw["temperature"], kw["base_temperature"], queue)[0]


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    b, c, h, w, d = 8, 19, 128, 256, 256
    embed = torch.nn.functional.normalize(torch.randn(b, d, h, w), dim=1)
    # blocky labels (regions of 16x16 embedding pixels) at 4x the embedding size, ~20% mispredicted
    labels = torch.randint(0, c, (b, h // 16, w // 16)).repeat_interleave(64, 1).repeat_interleave(64, 2)
    predict = downsample_labels(labels, (h, w)).clone()
    flip = torch.rand(predict.shape) < 0.2
    predict[flip] = torch.randint(0, c, (int(flip.sum()),))
    queue = torch.nn.functional.normalize(torch.randn(c, 2 * 5000, d), dim=2)  # segment + pixel queues, 5000 each
    kw = dict(temperature=0.1, base_temperature=0.07, max_samples=1024, max_views=100)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"batch {b}, {c} classes, embedding {h}x{w}x{d}, max_samples 1024, max_views 100")
    for name, q in (("no queue", None), ("queues 2x5000/class", queue)):
        vec = _time(lambda: _vector_total(embed, labels, predict, q, **kw), args.repeats)
        naive = _time(lambda: _naive_total(embed, labels, predict, q, **kw), args.naive_repeats)
        print(f"{name:22s} vectorised {vec * 1000:9.1f} ms   naive loop {naive * 1000:10.1f} ms   x{naive / vec:.0f}")


if __name__ == "__main__":
    main()
