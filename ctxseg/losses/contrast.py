"""Pixel-wise contrastive loss of ContrastiveSeg (Wang et al., ICCV 2021), vectorised.

The official code (tfzhou/ContrastiveSeg, lib/loss/loss_contrast*.py) loops over images and
classes in Python. Here every step is a tensor operation over all (image, class) pairs at once:

* `downsample_labels`  legacy 'nearest' label down-sampling (source index floor(i * H / h)),
                       exactly the official `F.interpolate(labels.float(), (h, w), mode='nearest')`,
                       by index (a strided view for integer ratios): no pass over every label.
* `sample_anchors`     hard-anchor sampling: per (image, class) counts with one scatter_add, the
                       hard/easy candidate masks as a [T, N] batch, and the random choice as a
                       top-k over random keys (or over the pixel index, which reproduces the
                       official code under an identity permutation: candidates in index order).
* `contrastive_loss`   the loss in one matrix product (anchors x anchors, or anchors x queue);
                       with a queue `QueueContrast`, a fused forward/backward over one logit buffer.
The anchors are gathered straight from the [B, D, h, w] embedding (no permuted copy of the map),
so the backward writes the embedding's gradient once.

Facts carried over from the reference (see docs/contrastiveseg.md for the list and the goldens):
the sampler is called as (feats, ground truth, prediction); hard = GT==c & pred!=c, easy =
GT==c & pred==c; a class needs *more than* max_views pixels; one n_view for every pair; rows
view-major; each positive's denominator is its own exp plus the sum over negatives (not SupCon's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def nearest_source_index(out_size: int, in_size: int, device=None) -> torch.Tensor:
    """Source index of each output position of PyTorch's legacy 'nearest' resize, computed as its
    kernel does (float32 scale in / out, floor(dst * scale), clamped): exactly F.interpolate's choice."""
    if out_size == in_size:
        return torch.arange(out_size, device=device)
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = (torch.arange(out_size, dtype=torch.float32) * scale).floor().long().clamp(max=in_size - 1)
    return src.to(device)


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, H, W] int labels -> [B, h, w] with PyTorch's legacy 'nearest' (top-left pixel of each block).

    The official code casts to float and calls F.interpolate(mode='nearest'); picking the same
    source rows and columns by index gives the identical map without touching every label pixel."""
    h, w = (int(x) for x in size)
    H, W = labels.shape[-2:]
    if (H, W) == (h, w):
        return labels
    if H % h == 0 and W % w == 0:  # integer ratio: floor(i * H / h) = i * (H // h), a strided view
        return labels[..., :: H // h, :: W // w]
    rows = nearest_source_index(h, H, labels.device)
    cols = nearest_source_index(w, W, labels.device)
    return labels.index_select(-2, rows).index_select(-1, cols)


@dataclass
class Anchors:
    """Result of hard-anchor sampling. T = number of (image, class) pairs, V = n_view.

    Args:
        feats: [T, V, D] float32 anchor embeddings (the official code writes into a float32 tensor).
        labels: [T] class of each pair.
        pairs: [T, 2] (image, class), images in batch order, classes ascending.
        indices: [T, V] flat pixel indices of the anchors: hard ones first, then easy.
        num_hard: [T] hard candidates (ground truth c, predicted otherwise).
        num_easy: [T] easy candidates (ground truth c, predicted c).
        num_hard_keep: [T] hard anchors kept.
        num_easy_keep: [T] easy anchors kept.
    """

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
    hard_keep = torch.where(
        both, torch.full_like(num_hard, n_view // 2), torch.where(hard_ok, n_view - num_easy, num_hard)
    )
    # the official `else: raise` is unreachable: hard + easy > max_views >= n_view
    easy_keep = n_view - hard_keep
    return hard_keep, easy_keep


def sample_anchors(
    feats: torch.Tensor,
    labels: torch.Tensor,
    predict: torch.Tensor,
    max_samples: int,
    max_views: int,
    ignore_index: int = -1,
    random: bool = True,
    generator: torch.Generator | None = None,
    channels_first: bool = False,
    official_draws: bool = False,
) -> Anchors | None:
    """Hard-anchor sampling over a batch.

    feats [B, N, D] (flattened feature map, any strides; [B, D, N] with channels_first, e.g. a
    [B, D, h, w] embedding flattened without a copy), labels [B, N] ground truth at feature
    resolution, predict [B, N]. random=False takes the candidates in index order, which is what
    the official code does under an identity `torch.randperm` (the golden data). With random and
    official_draws the choice is the official one draw for draw (`official_order`: the official
    `torch.randperm` calls, in its order, from the same generator); without official_draws random
    keys on the feature device choose a subset of the same distribution. Returns None
    where the official code returns (None, None) or would build an empty anchor set (n_view 0).

    One sort does all the work: each pixel gets the key (group, tie-break) with
    group = 2 * class + (prediction correct), so the hard then easy candidates of every class
    sit in contiguous runs of the sorted order; the tie-break is random (a uniformly random
    subset in random order, as randperm; only the pixels that can be chosen are sorted,
    `_random_candidates`) or the pixel index (identity permutation: a stable sort per image).
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
    counts = torch.zeros(b, num_groups, dtype=torch.long, device=dev).scatter_add_(1, group, torch.ones_like(group))
    img, cls = pairs[:, 0], pairs[:, 1]
    num_hard, num_easy = counts[img, 2 * cls], counts[img, 2 * cls + 1]
    hard_keep, easy_keep = kept_counts(num_hard, num_easy, n_view)
    if random and official_draws:
        order, starts = official_order(group, counts, pairs, generator)
    elif random:
        order, starts = _random_candidates(group, counts, img, cls, hard_keep, easy_keep, generator)
    else:
        # flat over the batch: image i's pixels sit at i * n + (index), its groups' runs start likewise
        offset = (torch.arange(b, device=dev) * n)[:, None]
        order = (torch.sort(group, dim=1, stable=True).indices + offset).view(-1)  # stable: index order
        starts = (counts.cumsum(1) - counts + offset).view(-1)
    j = torch.arange(n_view, device=dev).expand(total, n_view)
    first = img * num_groups + 2 * cls  # the pair's hard group; its easy group is the next one
    pos = torch.where(
        j < hard_keep[:, None], starts[first][:, None] + j, starts[first + 1][:, None] + j - hard_keep[:, None]
    )
    indices = order[pos] - (img * n)[:, None]  # flat over the batch -> pixel index in its image
    if channels_first:  # feats [B, D, N]: gather the anchors' vectors without a permuted copy of the map
        chosen = feats[img[:, None], :, indices]  # advanced indices around a slice: [T, V, D]
    else:
        chosen = feats[img[:, None], indices]
    return Anchors(chosen.float(), cls, pairs, indices, num_hard, num_easy, hard_keep, easy_keep)


def official_order(
    group: torch.Tensor, counts: torch.Tensor, pairs: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official draws: for every (image, class) pair in the official loop order (images in batch
    order, classes ascending), `torch.randperm(num_hard)` then `torch.randperm(num_easy)` on the CPU
    (the official calls: no device, so the default CPU generator unless `generator` is given), and the
    candidates of each group ordered by their position in that permutation: the first k of a run
    are the official `indices[perm[:k]]`, in the official order. The same number of draws as the
    official code, so the generator leaves in the same state.

    -> (flat batch pixel ids i * n + index sorted by (image, group, permutation position);
        [B * G] position in that list where each (image, group) run starts)."""
    b, n = group.shape
    dev = group.device
    group_cpu = group.cpu()
    rank = torch.full((b, n), n, dtype=torch.long)  # pixels of groups not sampled: after the sampled ones
    for ii, c in pairs.tolist():
        for g in (2 * c, 2 * c + 1):  # hard (prediction wrong) then easy, as the official calls
            idx = (group_cpu[ii] == g).nonzero()[:, 0]
            perm = torch.randperm(idx.numel(), generator=generator)
            rank[ii, idx[perm]] = torch.arange(idx.numel())
    key = group_cpu * (n + 1) + rank
    offset = (torch.arange(b) * n)[:, None]
    order = (torch.sort(key, dim=1).indices + offset).view(-1).to(dev)
    starts = (counts.cumsum(1) - counts + offset.to(dev)).view(-1)
    return order, starts


# candidates per (image, group) sorted by the random sampler: about factor x kept + extra (the
# fallback for a group short of candidates keeps the choice exact whatever these are)
CANDIDATE_MARGIN = (2, 16)


def _random_candidates(
    group: torch.Tensor,
    counts: torch.Tensor,
    img: torch.Tensor,
    cls: torch.Tensor,
    hard_keep: torch.Tensor,
    easy_keep: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random keys for every pixel; per (image, group) the kept pixels are those of smallest key
    (a uniformly random subset in random order, as the official randperm). Only a few keys per
    group can be among the smallest, so only pixels whose key lies below a per-group threshold
    (about twice the number kept, out of the group's size) are sorted, not the whole batch; a group
    short of candidates (unlikely) takes all its pixels, so the choice is exact.

    -> (flat batch pixel ids i * n + index sorted by (image, group, key), candidates only;
        [B * G] position in that list where each (image, group) run starts)."""
    b, n = group.shape
    num_groups = counts.shape[1]
    dev = group.device
    need = torch.zeros_like(counts)
    need[img, 2 * cls] = hard_keep
    need[img, 2 * cls + 1] = easy_keep
    top = 2**31 - 1
    key = torch.randint(0, top, (b, n), generator=generator, device=dev)
    factor, extra = CANDIDATE_MARGIN
    share = (factor * need + extra).double() / counts.clamp(min=1)
    threshold = torch.where(need > 0, (share * top).clamp(max=top).long(), 0)
    take = key < threshold.gather(1, group)
    found = torch.zeros_like(counts).scatter_add_(1, group, take.long())
    if not bool((found >= need).all()):  # a group short of candidates: all of its pixels (keys < top)
        threshold = torch.where(found >= need, threshold, top)
        take = key < threshold.gather(1, group)
        found = torch.zeros_like(counts).scatter_add_(1, group, take.long())
    flat = take.view(-1).nonzero().squeeze(1)  # candidates, flat batch ids in (image, index) order
    image_group = (flat // n) * num_groups + group.view(-1)[flat]
    order = flat[torch.sort(image_group * 2**31 + key.view(-1)[flat]).indices]
    starts = found.view(-1).cumsum(0) - found.view(-1)
    return order, starts


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


def contrastive_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    base_temperature: float,
    queue: torch.Tensor | None = None,
    skip_class0: bool = True,
    self_mask: bool = True,
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
        return _queue_loss(
            rows, row_labels, queue.to(rows.dtype), temperature, base_temperature, skip_class0, self_mask
        )
    # the official masked sums as matmuls with the rows' one-hot labels [R, K]: no [R, R] masks,
    # no bool -> float conversions; the self column is taken out by subtracting the diagonal
    logits = (rows @ rows.T).div_(temperature)  # the official order: divide after the product
    logits = logits.sub_(logits.max(dim=1, keepdim=True).values.detach())
    exp = logits.exp()
    onehot = F.one_hot(row_labels, int(row_labels.max()) + 1).to(rows.dtype)
    own = row_labels[:, None]
    neg_sum = (exp @ onehot).scatter(1, own, 0.0).sum(1, keepdim=True)  # other classes' blocks only
    if torch.is_grad_enabled() and rows.requires_grad:
        log_prob = logits - torch.log(exp + neg_sum)
    else:  # forward only: the same operations in place (no fresh [R, R] buffers)
        log_prob = logits.sub_(exp.add_(neg_sum).log_())
    pos_sum = (log_prob @ onehot).gather(1, own)[:, 0] - log_prob.diagonal()
    num_pos = torch.bincount(row_labels)[row_labels] - 1
    # no positive: NaN, as the official 0 / 0 (the subtraction above need not give an exact 0)
    mean_log_prob_pos = torch.where(num_pos > 0, pos_sum / num_pos, torch.full_like(pos_sum, float("nan")))
    return -(temperature / base_temperature) * mean_log_prob_pos.mean(), num_pos


def _queue_loss(
    rows: torch.Tensor,
    row_labels: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    base_temperature: float,
    skip_class0: bool,
    self_mask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors against the queue: `QueueContrast` (one [R, C*Q] buffer, no masks, no queue copy)."""
    c, q, _ = queue.shape
    # each row's own block of Q columns in the contrast set (queue_contrast_set order); -1: none
    if skip_class0:  # blocks: classes 1..C-1, then the all-zero block labelled 0
        own = torch.where(row_labels == 0, c - 1, row_labels - 1)
    else:
        own = row_labels.clone()
    own = torch.where((row_labels >= 0) & (row_labels < c), own, -1)
    r_idx = torch.arange(rows.shape[0], device=rows.device)
    pos = (own >= 0)[:, None].expand(-1, q).clone()
    if self_mask:  # official quirk: column r is removed from the positives of row r
        hit = (r_idx < c * q) & (r_idx // q == own)
        pos[r_idx[hit], r_idx[hit] % q] = False
    num_pos = pos.sum(1)
    loss = QueueContrast.apply(rows, queue, own, pos, temperature, base_temperature, skip_class0)
    return loss, num_pos


def _shifted_exp(
    rows: torch.Tensor, cols: torch.Tensor, temperature: float, zero_block: bool, own: torch.Tensor, q: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (exp(logits - row max) [R, n_blocks*Q], row max [R], own-block logits - row max [R, Q]).
    One buffer, updated in place: logits = rows @ cols.T / T (the official order: divide after the
    product), then shifted and exponentiated."""
    r = rows.shape[0]
    nb = cols.shape[0] // q
    logits = (rows @ cols.T).div_(temperature)
    row_max = logits.max(dim=1).values if nb else rows.new_full((r,), float("-inf"))
    if zero_block:
        row_max = row_max.clamp_min(0.0)  # the zero block's logits are 0
    real_own = (own >= 0) & (own < nb)
    if nb:
        pos_logits = logits.view(r, nb, q)[torch.arange(r, device=rows.device), torch.where(real_own, own, 0)]
        pos_logits = torch.where(real_own[:, None], pos_logits, torch.zeros_like(pos_logits))  # zero block: 0
    else:
        pos_logits = rows.new_zeros(r, q)
    return logits.sub_(row_max[:, None]).exp_(), row_max, pos_logits - row_max[:, None]


class QueueContrast(torch.autograd.Function):
    """The official memory-bank loss (loss_contrast_mem._contrastive with a queue) as one fused pass.

    Columns are the queue's class blocks (classes 1..C-1 then Q zero rows labelled 0 with
    skip_class0, else classes 0..C-1), read in place from the queue. Forward: one matmul into an
    [R, n_blocks*Q] buffer, the row max (zero block: logit 0), exp in place, per-block sums; the
    negatives of a row are the sum over the other blocks (never total - own: no cancellation),
    the positives its own block. Backward turns the same buffer into d loss / d logits in place
    (b_r exp for negatives, a_r S_r / (e + S_r) for positives) and makes one matmul with the queue;
    a second backward (retain_graph) recomputes the buffer. The max is a detached shift, as in the
    official code; the loss is invariant to it.
    """

    @staticmethod
    def forward(ctx, rows, queue, own, pos, temperature, base_temperature, skip_class0):
        c, q, d = queue.shape
        cols = (queue[1:] if skip_class0 else queue).reshape(-1, d)  # a view, no copy
        r = rows.shape[0]
        exp, row_max, pos_logits = _shifted_exp(rows, cols, temperature, skip_class0, own, q)
        nb = exp.shape[1] // q
        block_sums = exp.view(r, nb, q).sum(2)  # [R, nb]
        if skip_class0:
            block_sums = torch.cat([block_sums, q * torch.exp(-row_max)[:, None]], dim=1)
        own_mask = torch.zeros_like(block_sums, dtype=torch.bool)
        has_own = own >= 0
        own_mask[has_own, own[has_own]] = True
        neg_sum = block_sums.masked_fill(own_mask, 0).sum(1)
        denom = pos_logits.exp() + neg_sum[:, None]
        log_prob = pos_logits - torch.log(denom)
        num_pos = pos.sum(1)
        mean_log_prob_pos = (log_prob * pos).sum(1) / num_pos
        loss = -(temperature / base_temperature) * mean_log_prob_pos.mean()
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.save_for_backward(rows, queue, denom, neg_sum, pos, own)
            ctx.exp = exp  # an intermediate, consumed in place by the first backward
            ctx.scale, ctx.temperature, ctx.skip_class0 = temperature / base_temperature, temperature, skip_class0
        return loss

    @staticmethod
    def backward(ctx, grad):
        rows, queue, denom, neg_sum, pos, own = ctx.saved_tensors
        c, q, d = queue.shape
        cols = (queue[1:] if ctx.skip_class0 else queue).reshape(-1, d)
        exp = ctx.exp
        if exp is None:  # a second backward through the same graph: rebuild the buffer
            exp = _shifted_exp(rows, cols, ctx.temperature, ctx.skip_class0, own, q)[0]
        ctx.exp = None
        r = rows.shape[0]
        nb = exp.shape[1] // q
        num_pos = pos.sum(1).to(rows.dtype)
        # d loss / d log_prob of each positive of row r, with the 1/T of the logits folded in
        a = -ctx.scale * grad / r / num_pos / ctx.temperature
        inv = torch.where(pos, denom.reciprocal(), torch.zeros_like(denom))
        g = exp.mul_((-a * inv.sum(1))[:, None])  # negatives: b_r * exp; the buffer is d loss / d (rows @ cols.T)
        real_own = (own >= 0) & (own < nb)
        if bool(real_own.any()):
            ridx = real_own.nonzero().squeeze(1)
            g_pos = a[:, None] * neg_sum[:, None] * inv  # positives: a * S / (e + S); 0 off the positives
            g.view(r, nb, q)[ridx, own[ridx]] = g_pos[ridx]
        d_rows = g @ cols if ctx.needs_input_grad[0] else None
        d_queue = None
        if ctx.needs_input_grad[1]:
            d_cols = (g.T @ rows).view(nb, q, d)
            d_queue = torch.cat([torch.zeros_like(queue[:1]), d_cols]) if ctx.skip_class0 else d_cols
        return d_rows, d_queue, None, None, None, None, None


@dataclass
class ContrastResult:
    """What `pixel_contrast_loss` computed; `degenerate` when the official code would raise or give NaN.

    Args:
        loss: the contrast loss; None when no class has enough pixels (the official code raises).
        anchors: the sampled anchors; None with `loss`.
        labels_down: [B, h, w] labels down-sampled to the embedding grid (legacy nearest).
        num_pos: positives per anchor row; a 0 makes the official loss NaN.
    """

    loss: torch.Tensor | None  # None: no class with enough pixels (the official code raises)
    anchors: Anchors | None
    labels_down: torch.Tensor  # [B, h, w]
    num_pos: torch.Tensor | None  # positives per row; a 0 makes the official loss NaN

    @property
    def degenerate(self) -> bool:
        return self.loss is None or bool((self.num_pos == 0).any())


def pixel_contrast_loss(
    embed: torch.Tensor,
    labels: torch.Tensor,
    predict: torch.Tensor,
    temperature: float,
    base_temperature: float,
    max_samples: int,
    max_views: int,
    ignore_index: int = -1,
    queue: torch.Tensor | None = None,
    skip_class0: bool = True,
    self_mask: bool = True,
    random: bool = True,
    generator: torch.Generator | None = None,
    official_draws: bool = False,
) -> ContrastResult:
    """The official `PixelContrastLoss.forward`: embed [B, D, h, w], labels [B, H, W] (image
    resolution), predict [B, h, w]. A NaN-producing step (row without positives) is returned
    as-is (`degenerate` tells); the plug-in skips such steps instead of crashing."""
    b, d, h, w = embed.shape
    labels_down = downsample_labels(labels, (h, w))
    anchors = sample_anchors(
        embed.reshape(b, d, h * w),
        labels_down.reshape(b, -1),
        predict.reshape(b, -1),
        max_samples,
        max_views,
        ignore_index,
        random,
        generator,
        channels_first=True,
        official_draws=official_draws,
    )
    if anchors is None:
        return ContrastResult(None, None, labels_down, None)
    loss, num_pos = contrastive_loss(
        anchors.feats, anchors.labels, temperature, base_temperature, queue, skip_class0, self_mask
    )
    return ContrastResult(loss, anchors, labels_down, num_pos)
