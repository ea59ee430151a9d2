"""Criterion's fused decode / auxiliary CE (no label-size logit map) against its label-size path:
loss and gradient w.r.t. the logits, fp32 and bf16 autocast, ignored pixels, class weights and
both normalisations, avg_non_ignore, OHEM, odd sizes, both align_corners."""

from __future__ import annotations

import pytest
import torch

import ctxseg.losses as losses
from ctxseg.config import OhemConfig, load_recipe
from ctxseg.losses import Criterion


def _criterion(align_corners, avg_non_ignore=False, class_weight=None, norm="pixels", ohem=None, n=7):
    recipe = load_recipe("demo")
    recipe.model.align_corners = align_corners
    loss = recipe.train.loss
    loss.avg_non_ignore = avg_non_ignore
    loss.class_weight = class_weight
    loss.class_weight_norm = norm
    if ohem is not None:
        loss.ohem = OhemConfig(thresh=ohem[0], min_kept=ohem[1])
    return Criterion(recipe)


def _data(seed, b, n, h, w, hh, ww):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, n, h, w, generator=g) * 3
    target = torch.randint(0, n, (b, hh, ww), generator=g)
    target[torch.rand(b, hh, ww, generator=g) < 0.2] = 255
    target[:, : hh // 6] = 255
    return logits, target


def _both(crit, logits, target, autocast=False):
    out = []
    for fused in (True, False):
        x = logits.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            # the model's logits are bf16 under autocast (a conv's output)
            xin = x.to(torch.bfloat16) if autocast else x
            loss = crit._fused_ce(xin, target, True) if fused else crit.label_size_ce(xin, target, ohem=True)
        (g,) = torch.autograd.grad(loss * 1.7, x)
        out.append((loss.detach(), g))
    return out


CASES = [
    dict(),
    dict(avg_non_ignore=True),
    dict(class_weight=[0.5, 1.0, 2.0, 1.5, 0.7, 1.2, 0.9]),
    dict(class_weight=[0.5, 1.0, 2.0, 1.5, 0.7, 1.2, 0.9], norm="weights"),
    dict(ohem=(0.7, 50)),
    dict(ohem=(0.0, 30), class_weight=[0.5, 1.0, 2.0, 1.5, 0.7, 1.2, 0.9], norm="weights"),
    dict(ohem=(0.9, 10), avg_non_ignore=True),
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("shape", [(2, 7, 9, 11, 37, 45), (1, 7, 16, 8, 64, 32)])
def test_fused_equals_label_size_path_fp32(align_corners, case, shape):
    crit = _criterion(align_corners, **CASES[case])
    logits, target = _data(case + sum(shape), *shape)
    (a, ga), (b, gb) = _both(crit, logits, target)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("case", [0, 3])
def test_fused_equals_label_size_path_bf16_autocast(align_corners, case):
    crit = _criterion(align_corners, **CASES[case])
    logits, target = _data(11, 2, 7, 9, 11, 37, 45)
    logits = logits.to(torch.bfloat16).float()  # representable logits: only the resize's rounding differs
    (a, ga), (b, gb) = _both(crit, logits, target, autocast=True)
    assert a.dtype == b.dtype == torch.float32 and ga.dtype == torch.float32
    # the label-size path resizes in bf16, the fused one in float32: bf16 rounding apart
    torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(ga, gb, rtol=5e-2, atol=2e-3)


def test_same_size_labels_and_switch_take_the_label_size_path(monkeypatch):
    crit = _criterion(False)
    logits, target = _data(3, 2, 7, 9, 11, 9, 11)
    assert torch.equal(crit.ce(logits, target), crit.label_size_ce(logits, target))
    logits, target = _data(3, 2, 7, 9, 11, 30, 20)
    monkeypatch.setitem(losses.FUSED_CE, "enabled", False)
    assert torch.equal(crit.ce(logits, target), crit.label_size_ce(logits, target))


def test_out_of_range_label_raises_as_before():
    crit = _criterion(False)
    logits, target = _data(4, 1, 7, 5, 5, 20, 20)
    target[0, 3, 3] = 9
    with pytest.raises((IndexError, RuntimeError)):
        crit._fused_ce(logits, target, False)


def test_all_ignored_is_zero_with_zero_gradient():
    crit = _criterion(False, ohem=(0.7, 10))
    x = torch.randn(2, 7, 5, 5, requires_grad=True)
    loss = crit._fused_ce(x, torch.full((2, 20, 20), 255), True)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().max().item() == 0.0
