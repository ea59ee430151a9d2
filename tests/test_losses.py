"""Cross-entropy averaging conventions (mmseg vs torch mean), class weights, OHEM, Criterion."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctxseg.config import load_recipe
from ctxseg.losses import Criterion, cross_entropy, inverse_log_frequency, ohem_weights


def _data(seed=0, n=2, c=5, h=7, w=9):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g)
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < 0.3] = 255
    return logits, target


def test_mmseg_default_averages_over_all_pixels_including_ignored():
    logits, target = _data()
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    assert torch.allclose(cross_entropy(logits, target), per_pixel.sum() / target.numel())
    assert torch.allclose(
        cross_entropy(logits, target, avg_non_ignore=True), F.cross_entropy(logits, target, ignore_index=255)
    )


def test_class_weight_normalisations():
    logits, target = _data(1)
    w = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.7])
    per_pixel = F.cross_entropy(logits, target, weight=w, ignore_index=255, reduction="none")
    assert torch.allclose(cross_entropy(logits, target, class_weight=w), per_pixel.sum() / target.numel())
    # openseg / torch: weighted mean
    assert torch.allclose(
        cross_entropy(logits, target, class_weight=w, weight_norm="weights"),
        F.cross_entropy(logits, target, weight=w, ignore_index=255),
    )


def test_ohem_keeps_hard_pixels_and_min_kept():
    logits, target = _data(2)
    prob = logits.softmax(1).gather(1, target.clamp(max=4).unsqueeze(1)).squeeze(1)
    valid = target != 255
    w = ohem_weights(logits, target, thresh=0.3, min_kept=1, ignore_index=255)
    # threshold 0.3 dominates a small min_kept: exactly the valid pixels below it are kept
    assert torch.equal(w.bool(), valid & (prob < 0.3))
    w = ohem_weights(logits, target, thresh=0.0, min_kept=10, ignore_index=255)
    # thresh 0 would keep nothing: the (min_kept*N)-th smallest probability becomes the threshold
    assert int(w.sum()) == 20 and not w[~valid].any()


def test_inverse_log_frequency_mean_one_and_rare_classes_heavier():
    w = inverse_log_frequency([1000, 10, 1])
    assert abs(sum(w) / 3 - 1) < 1e-9 and w[2] > w[1] > w[0]


def test_criterion_sums_decode_aux_and_skips_stat_terms():
    recipe = load_recipe("demo")
    crit = Criterion(recipe)
    logits, target = _data(3, c=7)

    class Core(torch.nn.Module):
        def plugin_losses(self, outputs, targets, step):
            return {"loss_extra": torch.tensor(0.25), "stat_skipped": torch.tensor(3.0)}

    total, terms = crit(Core(), {"logits": logits, "aux_logits": logits * 2}, target, step=0)
    expect = crit.ce(logits, target) + 0.4 * crit.ce(logits * 2, target) + 0.25
    assert torch.allclose(total, expect)
    assert terms["stat_skipped"] == 3.0 and set(terms) == {"loss_ce", "loss_aux", "loss_extra", "stat_skipped"}
