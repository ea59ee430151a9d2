"""ctxseg.losses.upsampled_ce against the straightforward F.interpolate + F.cross_entropy:
loss and gradients, both align_corners, odd ratios, ignored pixels, several row blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ctxseg.losses.upsampled_ce as uce
from ctxseg.losses.upsampled_ce import upsampled_ce_sum


def straightforward(logits, target, align_corners, ignore_index=255):
    up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners)
    return F.cross_entropy(up, target, ignore_index=ignore_index, reduction="sum")


def _case(seed, b, n, h, w, hh, ww, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, h, w, generator=gen, dtype=torch.float64) * scale
    y = torch.randint(0, n, (b, hh, ww), generator=gen)
    y[torch.rand(b, hh, ww, generator=gen) < 0.1] = 255
    y[:, : hh // 5] = 255  # whole ignored rows too
    return x, y


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "shape", [(2, 5, 8, 8, 64, 64), (2, 7, 9, 11, 37, 45), (1, 3, 6, 5, 6, 5), (3, 4, 16, 12, 33, 20)]
)
@pytest.mark.parametrize("block_bytes", [1, 4 << 20])  # 1 byte: one label row per block
def test_loss_and_gradient_equal_straightforward(monkeypatch, align_corners, shape, block_bytes):
    monkeypatch.setitem(uce.BLOCK_BYTES, "cpu", block_bytes)
    x, y = _case(sum(shape), *shape)
    xr = x.clone().requires_grad_()
    ref = straightforward(xr, y, align_corners)
    (g_ref,) = torch.autograd.grad(ref * 0.37, xr)  # a non-unit upstream gradient
    xf = x.float().requires_grad_()
    out = upsampled_ce_sum(xf, y, align_corners)
    (g,) = torch.autograd.grad(out * 0.37, xf)
    assert out.dtype == torch.float32 and g.shape == x.shape
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5)


def test_label_size_map_of_the_bench_shape(monkeypatch):
    # several 150-class blocks, stride 8, a realistic logit range
    x, y = _case(3, 2, 150, 16, 16, 128, 128, scale=8.0)
    xf = x.float().requires_grad_()
    out = upsampled_ce_sum(xf, y, False)
    out.backward()
    xr = x.float().requires_grad_()
    ref = straightforward(xr, y, False)
    ref.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-4, atol=1e-6)


def test_far_apart_neighbouring_logits_stay_exact():
    # neighbouring feature pixels whose maxima differ by ~1000: the shifted upsampled logits of
    # the label pixels between them are all far below 0, the exact log-sum-exp path takes over
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, 0, 0, 0], x[0, 1, 1, 1], x[0, 2, 0, 1] = 1000.0, 900.0, -50.0
    y = torch.tensor([[[0, 1, 2, 0, 1], [1, 1, 2, 2, 0], [2, 0, 1, 255, 2], [0, 1, 2, 0, 1]]])
    for ac in (False, True):
        xr = x.clone().requires_grad_()
        ref = straightforward(xr, y, ac)
        ref.backward()
        xf = x.float().requires_grad_()
        out = upsampled_ce_sum(xf, y, ac)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(xf.grad).all()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-2)
        torch.testing.assert_close(xf.grad.double(), xr.grad, rtol=1e-4, atol=1e-4)


def test_all_ignored_is_zero_with_zero_gradient():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    y = torch.full((2, 1, 20, 20), 255)
    out = upsampled_ce_sum(x, y)
    out.backward()
    assert out.item() == 0.0 and x.grad.abs().max().item() == 0.0


def test_low_precision_logits_get_a_gradient_of_their_dtype():
    x, y = _case(1, 2, 5, 8, 8, 32, 32)
    xb = x.to(torch.bfloat16).requires_grad_()
    out = upsampled_ce_sum(xb, y)
    out.backward()
    assert out.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    ref = straightforward(x.to(torch.bfloat16).float(), y, False)
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=1e-3)


def test_cac_pre_terms_equal_the_straightforward_upsampled_ce():
    """CAC's PreSelf / Pre losses (and their gradients into the head) through the fused path equal
    torch CrossEntropyLoss(ignore_index) after align_corners=True upsampling, as the reference."""
    from torch import nn

    from ctxseg.models.context.cac import ContextAwareClassifier
    from ctxseg.models.heads.fcn import FCNHead
    from ctxseg.models.segmentor import Segmentor

    torch.manual_seed(0)
    n = 9
    head = FCNHead(
        in_channels=[12], num_classes=n, channels=10, num_convs=1, concat_input=False, in_index=0, dropout_ratio=0.0
    )
    cac = ContextAwareClassifier(classifier=head.classifier_slot(), num_classes=n)
    model = Segmentor(nn.Identity(), head, None, {"cac": cac}, n, False).train()
    x = torch.randn(2, 12, 12, 10)
    _, y = _case(5, 2, n, 12, 10, 45, 38)

    def losses(fused: bool):
        model.zero_grad(set_to_none=True)
        out = model([x], y)
        if fused:
            pre_self, pre = cac.pre_ce(out["vanilla_logits"], y), cac.pre_ce(out["cac_apd_logits"], y)
        else:
            den = (y != 255).sum()
            pre_self = straightforward(out["vanilla_logits"], y, True) / den
            pre = straightforward(out["cac_apd_logits"], y, True) / den
        (pre_self + 2 * pre).backward()
        return (
            pre_self.detach(),
            pre.detach(),
            {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
        )

    a, b = losses(True), losses(False)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert a[2].keys() == b[2].keys() and len(a[2]) > 4
    for k in a[2]:
        torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-4, atol=1e-6, msg=k)
    assert set(cac.losses(model([x], y), y, 0)) == {"loss_cac_pre_self", "loss_cac_pre", "loss_cac_kl"}


def test_under_autocast_it_stays_float32_and_has_a_gradient():
    """bf16 training (autocast): the loss is computed in float32 like outside autocast, and the
    backward runs (it once failed on a bf16 buffer meeting float32 weights)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 6, 7, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (2, 23, 29), generator=g)
    plain = upsampled_ce_sum(logits, target, True, 255)
    (want,) = torch.autograd.grad(plain, logits)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = upsampled_ce_sum(logits, target, True, 255)
    (got,) = torch.autograd.grad(loss, logits)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(got, want)
