"""ContrastiveSeg loss: vectorised vs naive loops on random data, degenerate batches, fast paths vs
straightforward implementations. The goldens of ../shared/golden/contrastiveseg are in
tests/test_contrast_golden.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctxseg.losses import contrast as contrast_module
from ctxseg.losses.contrast import contrastive_loss, downsample_labels, pixel_contrast_loss, sample_anchors
from ctxseg.models.context.contrast import PixelContrast
from ctxseg.models.heads.base import ClassifierSlot
from tests.reference_impls.contrast import (
    full_sort_random_indices,
    naive_contrastive_loss,
    naive_sample_anchors,
    reference_matrix_loss,
)


class _Head(torch.nn.Module):
    channels = 8


def test_legacy_nearest_downsampling():
    labels = torch.arange(37 * 50).view(1, 37, 50)
    down = downsample_labels(labels, (10, 13))
    rows = torch.floor(torch.arange(10) * 37 / 10).long()
    cols = torch.floor(torch.arange(13) * 50 / 13).long()
    assert torch.equal(down[0], labels[0][rows][:, cols])


# ------------------------------------------------------------------------------------------------
# vectorised vs naive loops, other seeds and shapes


@pytest.mark.parametrize(
    "seed,b,n,c,max_samples,max_views", [(1, 3, 200, 5, 60, 8), (2, 2, 900, 4, 1024, 100), (3, 4, 120, 3, 40, 10)]
)
def test_official_draws_replay_the_official_randperm_calls(seed, b, n, c, max_samples, max_views):
    """sampler "official": from the same torch seed, the anchors the official loop (randperm per
    class, hard then easy) picks, in its order, and the default generator left in the same state."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, c, (b, n), generator=g)
    predict = torch.where(
        torch.rand(b, n, generator=g) < 0.3, torch.randint(0, c, (b, n), generator=g), labels.clamp(min=0)
    )
    feats = F.normalize(torch.randn(b, n, 6, generator=g), dim=2)
    torch.manual_seed(100 + seed)
    ref = naive_sample_anchors(feats, labels, predict, max_samples, max_views, -1, random=True)
    after_ref = torch.rand(3)
    torch.manual_seed(100 + seed)
    vec = sample_anchors(feats, labels, predict, max_samples, max_views, -1, random=True, official_draws=True)
    after_vec = torch.rand(3)
    x, y, idx = ref
    assert torch.equal(vec.indices, idx) and torch.equal(vec.labels, y) and torch.equal(vec.feats, x)
    assert torch.equal(after_ref, after_vec)
    fast = sample_anchors(feats, labels, predict, max_samples, max_views, -1, random=True)
    assert not torch.equal(fast.indices, idx)  # the fast sampler draws otherwise (same distribution)


@pytest.mark.parametrize(
    "seed,b,n,c,max_samples,max_views",
    [(1, 3, 200, 5, 60, 8), (2, 2, 500, 9, 1024, 100), (3, 4, 120, 3, 7, 10), (4, 1, 90, 4, 1024, 1)],
)
def test_vectorised_matches_naive(seed, b, n, c, max_samples, max_views):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, c, (b, n), generator=g)
    predict = torch.where(
        torch.rand(b, n, generator=g) < 0.3, torch.randint(0, c, (b, n), generator=g), labels.clamp(min=0)
    )
    feats = F.normalize(torch.randn(b, n, 6, generator=g, dtype=torch.float64), dim=2)
    ref = naive_sample_anchors(feats, labels, predict, max_samples, max_views, -1, random=False)
    vec = sample_anchors(feats, labels, predict, max_samples, max_views, -1, random=False)
    assert (ref is None) == (vec is None)
    if ref is None:
        return
    x, y, idx = ref
    assert torch.equal(vec.indices, idx) and torch.equal(vec.labels, y) and torch.equal(vec.feats, x)
    xd = vec.feats.double()
    for queue in (None, F.normalize(torch.randn(c, 5, 6, generator=g, dtype=torch.float64), dim=2)):
        if queue is not None and xd.shape[0] * xd.shape[1] > c * 5:
            continue  # the official scatter needs A*V <= C*Q
        got, num_pos = contrastive_loss(xd, y, 0.1, 0.07, queue=queue)
        want = naive_contrastive_loss(xd, y, 0.1, 0.07, queue)
        want2 = reference_matrix_loss(xd, y, 0.1, 0.07, queue)
        if bool((num_pos == 0).any()):
            assert torch.isnan(got) and torch.isnan(want)
        else:
            assert torch.allclose(got, want, rtol=1e-10) and torch.allclose(got, want2, rtol=1e-10)


def test_queue_without_class0_skip_is_plain_supervised_contrast():
    g = torch.Generator().manual_seed(5)
    x = F.normalize(torch.randn(4, 2, 8, generator=g, dtype=torch.float64), dim=2)
    y = torch.tensor([0, 1, 2, 0])
    queue = F.normalize(torch.randn(3, 4, 8, generator=g, dtype=torch.float64), dim=2)
    got, num_pos = contrastive_loss(x, y, 0.1, 0.07, queue=queue, skip_class0=False, self_mask=False)
    assert (num_pos == 4).all()
    rows = x.transpose(0, 1).reshape(8, 8)
    logits = rows @ queue.reshape(12, 8).T / 0.1
    same = y.repeat(2)[:, None] == torch.arange(3).repeat_interleave(4)[None]
    neg = (logits.exp() * ~same).sum(1, keepdim=True)
    want = -(0.1 / 0.07) * ((logits - torch.log(logits.exp() + neg)) * same).sum(1).div(4).mean()
    assert torch.allclose(got, want, rtol=1e-10)


# ------------------------------------------------------------------------------------------------
# degenerate batches: the official code raises or returns NaN; ctxseg skips the step and counts it


def _plugin(**kw):
    return PixelContrast(
        classifier=ClassifierSlot(_Head()),
        in_channels=[8],
        num_classes=3,
        align_corners=False,
        proj_dim=4,
        proj="linear",
        max_views=5,
        ignore_index=255,
        warmup=0,
        **kw,
    )


@pytest.mark.parametrize("kind", ["no_class", "single_class_v1", "all_ignore"])
def test_degenerate_batches_are_skipped(kind):
    plugin = _plugin(max_samples=1024)
    embed = F.normalize(torch.randn(2, 4, 4, 4, requires_grad=True), dim=1)
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    if kind == "no_class":
        target = torch.arange(2 * 256).view(2, 16, 16) % 3  # every class has few pixels at 4x4... (3 classes)
        plugin.max_views = 100
    elif kind == "single_class_v1":
        plugin.max_views = 1  # V=1 and one class seen once among anchors -> official NaN
        target[1] = 255
    else:
        target[:] = 255
    outputs = {"embed": embed, "logits": torch.randn(2, 3, 4, 4)}
    terms = plugin.losses(outputs, target, step=0)
    assert float(terms["loss_contrast"].detach()) == 0.0 and terms["loss_contrast"].requires_grad
    assert float(terms["stat_contrast_skipped"]) == 1.0
    terms["loss_contrast"].backward()  # keeps the graph (DDP: every parameter gets a gradient)


def test_criterion_ignores_stat_terms():
    from ctxseg.config import validate_recipe
    from ctxseg.losses import Criterion

    recipe = validate_recipe(
        {"model": {"backbone": {"type": "resnet", "depth": 18}, "head": {"type": "fcn"}}, "data": {"num_classes": 3}}
    )

    class M(torch.nn.Module):
        def plugin_losses(self, outputs, target, step):
            return {"loss_x": torch.tensor(1.0), "stat_count": torch.tensor(5.0)}

    total, terms = Criterion(recipe)(
        M(), {"logits": torch.zeros(1, 3, 4, 4)}, torch.zeros(1, 4, 4, dtype=torch.long), 0
    )
    assert terms["stat_count"] == 5.0
    assert math.isclose(float(total), terms["loss_ce"] + 1.0, rel_tol=1e-6)


# ------------------------------------------------------------------------------------------------
# fast paths vs straightforward implementations (values and gradients)


@pytest.mark.parametrize(
    "out_size,in_size",
    [
        ((10, 13), (37, 50)),
        ((128, 256), (512, 1024)),
        ((7, 9), (7, 18)),
        ((33, 65), (97, 129)),
        ((64, 64), (512, 512)),
        ((5, 3), (5, 3)),
    ],
)
def test_downsampling_by_index_equals_interpolate(out_size, in_size):
    labels = torch.randint(-1, 200, (2, *in_size))
    want = F.interpolate(labels[:, None].float(), size=out_size, mode="nearest")[:, 0].long()
    assert torch.equal(downsample_labels(labels, out_size), want)


@pytest.mark.parametrize("skip_class0,self_mask", [(True, True), (False, False), (True, False)])
def test_queue_contrast_backward_gradcheck(skip_class0, self_mask):
    """The fused memory-bank loss's hand-written backward against autograd's numerical gradient."""
    g = torch.Generator().manual_seed(11)
    rows = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1).requires_grad_(True)
    queue = F.normalize(torch.randn(4, 6, 5, generator=g, dtype=torch.float64), dim=2).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 1, 0, 2])

    def f(x, qu):
        return contrastive_loss(
            x.view(7, 1, 5), labels, 0.5, 0.07, queue=qu, skip_class0=skip_class0, self_mask=self_mask
        )[0]

    assert torch.autograd.gradcheck(f, (rows, queue), eps=1e-6, atol=1e-6)


def test_queue_contrast_equals_reference_in_value_and_gradient():
    """Official sizes' structure (a few views, two queues per class) on float32: the fused loss and
    its gradient equal the official matrix form run through plain autograd."""
    g = torch.Generator().manual_seed(3)
    c, q, d = 5, 40, 16
    x = F.normalize(torch.randn(9, 2, d, generator=g), dim=2).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 4, 1, 2, 0, 3])
    queue = F.normalize(torch.randn(c, q, d, generator=g), dim=2)
    got, _ = contrastive_loss(x, y, 0.07, 0.07, queue=queue)
    (gx,) = torch.autograd.grad(got, x)
    want = reference_matrix_loss(x, y, 0.07, 0.07, queue)
    (wx,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, wx, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("with_queue", [False, True])
def test_pixel_contrast_gradient_equals_permuted_reference(with_queue):
    """Anchors gathered from the channel-first map (no permuted copy) give the official loss and the
    same gradient as the official permute + view + index path."""
    g = torch.Generator().manual_seed(8)
    b, d, h, w, c = 2, 6, 8, 10, 4
    embed = F.normalize(torch.randn(b, d, h, w, generator=g), dim=1).requires_grad_(True)
    labels = torch.randint(-1, c, (b, 2 * h, 2 * w), generator=g)
    predict = torch.randint(0, c, (b, h, w), generator=g)
    queue = F.normalize(torch.randn(c, 30, d, generator=g), dim=2) if with_queue else None
    res = pixel_contrast_loss(embed, labels, predict, 0.1, 0.07, 40, 6, -1, queue=queue, random=False)
    (got,) = torch.autograd.grad(res.loss, embed)
    flat = embed.permute(0, 2, 3, 1).reshape(b, h * w, d)
    lab = F.interpolate(labels[:, None].float(), (h, w), mode="nearest")[:, 0].long().reshape(b, -1)
    x, y, _ = naive_sample_anchors(flat, lab, predict.reshape(b, -1), 40, 6, -1, random=False)
    assert torch.equal(res.anchors.feats, x)
    want = reference_matrix_loss(x, y, 0.1, 0.07, queue)
    (wgrad,) = torch.autograd.grad(want, embed)
    torch.testing.assert_close(res.loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, wgrad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("margin", [(2, 16), (1, 0)], ids=["default", "short-of-candidates"])
def test_random_sampling_equals_full_sort(monkeypatch, margin):
    """The random sampler sorts only pixels below a per-group key threshold; its choice equals the
    choice by sorting every pixel's key (same draws), also when groups run short of candidates
    (margin (1, 0): about as many candidates as kept, so the all-pixels fallback runs)."""
    monkeypatch.setattr(contrast_module, "CANDIDATE_MARGIN", margin)
    g = torch.Generator().manual_seed(21)
    b, n, c = 3, 900, 5
    labels = torch.randint(-1, c, (b, n), generator=g)
    predict = torch.where(
        torch.rand(b, n, generator=g) < 0.4, torch.randint(0, c, (b, n), generator=g), labels.clamp(min=0)
    )
    feats = torch.randn(b, n, 4, generator=g)
    for max_samples, max_views in ((60, 12), (400, 100)):
        got = sample_anchors(
            feats, labels, predict, max_samples, max_views, -1, random=True, generator=torch.Generator().manual_seed(5)
        )
        want = full_sort_random_indices(
            labels, predict, got.pairs, got.num_hard_keep, got.num_easy_keep, -1, torch.Generator().manual_seed(5)
        )
        assert torch.equal(got.indices, want)
        assert torch.equal(got.feats, feats[got.pairs[:, :1], got.indices])
