"""Pixel-wise contrastive loss of ContrastiveSeg (Wang et al., ICCV 2021), vectorised.

The official code (tfzhou/ContrastiveSeg, lib/loss/loss_contrast*.py) loops over images and
classes in Python. Here every step is a tensor operation over all (image, class) pairs at once:

* `downsample_labels`  legacy 'nearest' label down-sampling (source index floor(i * H / h)),
                       exactly the official `F.interpolate(labels.float(), (h, w), mode='nearest')`.
* `sample_anchors`     hard-anchor sampling: per (image, class) counts with one scatter_add, the
                       hard/easy candidate masks as a [T, N] batch, and the random choice as a
                       top-k over random keys (or over the pixel index, which reproduces the
                       official code under an identity permutation: candidates in index order).
* `contrastive_loss`   the loss in one matrix product (anchors x anchors, or anchors x queue).

Facts carried over from the reference (see docs/contrastiveseg.md for the list and the goldens):
the sampler is called as (feats, ground truth, prediction); hard = GT==c & pred!=c, easy =
GT==c & pred==c; a class needs *more than* max_views pixels; one n_view for every pair; rows
view-major; each positive's denominator is its own exp plus the sum over negatives (not SupCon's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H, W] int labels -> [B, h, w] with PyTorch's legacy 'nearest' (top-left pixel of each block)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    down = F.interpolate(labels[:, None].float(), size=tuple(int(s) for s in size), mode="nearest")
    return down[:, 0].to(labels.dtype)


@dataclass
class Anchors:
    """Result of hard-anchor sampling. T = number of (image, class) pairs, V = n_view."""

    feats: torch.Tensor  # [T, V, D] float32 (the official code writes into a float32 tensor)
    labels: torch.Tensor  # [T] class of each pair
    pairs: torch.Tensor  # [T, 2] (image, class), images in batch order, classes ascending
    indices: torch.Tensor  # [T, V] flat pixel indices: hard ones first, then easy
    num_hard: torch.Tensor  # [T] candidates
    num_easy: torch.Tensor
    num_hard_keep: torch.Tensor  # [T] kept
    num_easy_keep: torch.Tensor

    @property
    def n_view(self) -> int:
        return int(self.indices.shape[1])


def class_pairs(labels: torch.Tensor, max_views: int, ignore_index: int) -> torch.Tensor:
    """(image, class) pairs whose class has more than `max_views` pixels in that image: [T, 2]."""
    valid = (labels != ignore_index) & (labels >= 0)
    num_classes = int(labels[valid].max()) + 1 if bool(valid.any()) else 1
    counts = torch.zeros(labels.shape[0], num_classes, dtype=torch.long, device=labels.device)
    counts.scatter_add_(1, torch.where(valid, labels, 0), valid.long())
    return (counts > max_views).nonzero()  # row-major: image order, then ascending class


def kept_counts(num_hard: torch.Tensor, num_easy: torch.Tensor, n_view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official branch table (with float n_view / 2), evaluated for all pairs at once."""
    half = n_view / 2
    hard_ok, easy_ok = num_hard >= half, num_easy >= half
    both = hard_ok & easy_ok
    hard_keep = torch.where(both, torch.full_like(num_hard, n_view // 2),
                            torch.where(hard_ok, n_view - num_easy, num_hard))
    # the official `else: raise` is unreachable: hard + easy > max_views >= n_view
    easy_keep = n_view - hard_keep
    return hard_keep, easy_keep


def sample_anchors(feats: torch.Tensor, labels: torch.Tensor, predict: torch.Tensor, max_samples: int, max_views: int,
                   ignore_index: int = -1, random: bool = True, generator: torch.Generator | None = None) -> Anchors | None:
    """Hard-anchor sampling over a batch.

    feats [B, N, D] (flattened feature map, any strides), labels [B, N] ground truth at feature
    resolution, predict [B, N]. random=False takes the candidates in index order, which is what
    the official code does under an identity `torch.randperm` (the golden data). Returns None
    where the official code returns (None, None) or would build an empty anchor set (n_view 0).

    One sort per image does all the work: each pixel gets the key (group, tie-break) with
    group = 2 * class + (prediction correct), so the hard then easy candidates of every class
    sit in contiguous runs of the sorted order; the tie-break is random (a uniformly random
    subset in random order, as randperm) or the pixel index (identity permutation).
    """
    b, n = labels.shape
    dev = labels.device
    pairs = class_pairs(labels, max_views, ignore_index)
    total = pairs.shape[0]
    if total == 0:
        return None
    n_view = min(max_samples // total, max_views)
    if n_view == 0:
        return None
    valid = (labels != ignore_index) & (labels >= 0)
    num_groups = 2 * (int(pairs[:, 1].max()) + 1) + 1
    group = torch.where(valid, 2 * labels + (predict == labels).long(), num_groups - 1)
    group = group.clamp(max=num_groups - 1)  # classes above every eligible one: out of the way
    if random:
        tie = torch.randint(0, 2**31 - 1, (b, n), generator=generator, device=dev)
        order = torch.sort(group * 2**31 + tie, dim=1).indices
    else:
        order = torch.sort(group, dim=1, stable=True).indices  # stable: index order within a group
    counts = torch.zeros(b, num_groups, dtype=torch.long, device=dev).scatter_add_(1, group, torch.ones_like(group))
    starts = counts.cumsum(1) - counts
    img, cls = pairs[:, 0], pairs[:, 1]
    num_hard, num_easy = counts[img, 2 * cls], counts[img, 2 * cls + 1]
    hard_keep, easy_keep = kept_counts(num_hard, num_easy, n_view)
    j = torch.arange(n_view, device=dev).expand(total, n_view)
    pos = torch.where(j < hard_keep[:, None], starts[img, 2 * cls][:, None] + j,
                      starts[img, 2 * cls + 1][:, None] + j - hard_keep[:, None])
    indices = order[img[:, None], pos]
    chosen = feats[img[:, None], indices].float()  # [T, V, D]
    return Anchors(chosen, cls, pairs, indices, num_hard, num_easy, hard_keep, easy_keep)


def queue_contrast_set(queue: torch.Tensor, skip_class0: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Queue [C, Q, D] -> contrast rows [C*Q, D] and their labels [C*Q].

    skip_class0=True is the official `_sample_negative`: classes 1..C-1 are copied in order and
    class 0 is skipped, so the last Q rows stay all-zero and carry label 0.
    """
    c, q, d = queue.shape
    labels = torch.arange(c, device=queue.device).repeat_interleave(q)
    if not skip_class0:
        return queue.reshape(c * q, d), labels
    rows = torch.cat([queue[1:].reshape((c - 1) * q, d), queue.new_zeros(q, d)])
    labels = torch.cat([labels[q:], labels.new_zeros(q)])
    return rows, labels


def contrastive_loss(feats: torch.Tensor, labels: torch.Tensor, temperature: float, base_temperature: float,
                     queue: torch.Tensor | None = None, skip_class0: bool = True, self_mask: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervised pixel contrast. feats [A, V, D] anchors, labels [A]; optional queue [C, Q, D].

    Returns (loss, positives per row). Rows are view-major (row = v * A + a). Without a queue
    the contrast set is the anchors themselves (self excluded from the positives); with a queue
    it is the queue (`queue_contrast_set`), and the official code still removes column r from
    the positives of row r (`self_mask`, a quirk kept by default). A row without positives
    gives NaN, as the official code: callers check `positives` to skip such steps.
    """
    a, v, d = feats.shape
    rows = feats.transpose(0, 1).reshape(v * a, d)
    row_labels = labels.repeat(v)
    if queue is not None:
        return _queue_loss(rows, row_labels, queue.to(rows.dtype), temperature, base_temperature, skip_class0, self_mask)
    logits = rows @ rows.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = row_labels[:, None] == row_labels[None, :]
    pos = same.clone()
    pos.fill_diagonal_(False)
    exp = logits.exp()
    neg_sum = (exp * (~same)).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp + neg_sum)
    num_pos = pos.sum(1)
    mean_log_prob_pos = (log_prob * pos).sum(1) / num_pos
    return -(temperature / base_temperature) * mean_log_prob_pos.mean(), num_pos


def _queue_loss(rows: torch.Tensor, row_labels: torch.Tensor, queue: torch.Tensor, temperature: float,
                base_temperature: float, skip_class0: bool, self_mask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors against the queue without [R, C*Q] masks: the contrast set is made of class blocks
    of Q rows, so negatives are (sum over all columns) - (sum over the own block) and the
    positives are the own block, read with one gather."""
    c, q, d = queue.shape
    cols, col_labels = queue_contrast_set(queue, skip_class0)
    block_labels = col_labels[::q]  # the label of each block of Q columns
    block_of_class = torch.empty(c, dtype=torch.long, device=rows.device)
    block_of_class[block_labels] = torch.arange(c, device=rows.device)
    logits = rows @ cols.T / temperature  # [R, C*Q]
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    exp = logits.exp().view(-1, c, q)
    own = block_of_class[row_labels]  # [R]
    r_idx = torch.arange(rows.shape[0], device=rows.device)
    own_exp_sum = exp[r_idx, own].sum(1)
    neg_sum = exp.sum((1, 2)) - own_exp_sum
    pos_logits = logits.view(-1, c, q)[r_idx, own]  # [R, Q]
    log_prob = pos_logits - torch.log(pos_logits.exp() + neg_sum[:, None])
    pos = torch.ones_like(log_prob, dtype=torch.bool)
    if self_mask:  # official quirk: column r is removed from the positives of row r
        hit = (r_idx < c * q) & (r_idx // q == own)
        pos[r_idx[hit], r_idx[hit] % q] = False
    num_pos = pos.sum(1)
    mean_log_prob_pos = (log_prob * pos).sum(1) / num_pos
    return -(temperature / base_temperature) * mean_log_prob_pos.mean(), num_pos


@dataclass
class ContrastResult:
    loss: torch.Tensor | None  # None: no class with enough pixels (the official code raises)
    anchors: Anchors | None
    labels_down: torch.Tensor  # [B, h, w]
    num_pos: torch.Tensor | None  # positives per row; a 0 makes the official loss NaN

    @property
    def degenerate(self) -> bool:
        return self.loss is None or bool((self.num_pos == 0).any())


def pixel_contrast_loss(embed: torch.Tensor, labels: torch.Tensor, predict: torch.Tensor, temperature: float,
                        base_temperature: float, max_samples: int, max_views: int, ignore_index: int = -1,
                        queue: torch.Tensor | None = None, skip_class0: bool = True, self_mask: bool = True,
                        random: bool = True, generator: torch.Generator | None = None) -> ContrastResult:
    """The official `PixelContrastLoss.forward`: embed [B, D, h, w], labels [B, H, W] (image
    resolution), predict [B, h, w]. A NaN-producing step (row without positives) is returned
    as-is (`degenerate` tells); the plug-in skips such steps instead of crashing."""
    b, d, h, w = embed.shape
    labels_down = downsample_labels(labels, (h, w))
    flat = embed.permute(0, 2, 3, 1).reshape(b, h * w, d)
    anchors = sample_anchors(flat, labels_down.reshape(b, -1), predict.reshape(b, -1), max_samples, max_views,
                             ignore_index, random, generator)
    if anchors is None:
        return ContrastResult(None, None, labels_down, None)
    loss, num_pos = contrastive_loss(anchors.feats, anchors.labels, temperature, base_temperature, queue, skip_class0,
                                     self_mask)
    return ContrastResult(loss, anchors, labels_down, num_pos)
