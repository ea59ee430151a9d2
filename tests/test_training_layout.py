"""Training runs in channels-last layout on CPUs where that is faster (ctxseg.engine.layout decides,
ctxseg.engine.trainer.to_training_layout applies): same losses, gradients and updated weights as
NCHW up to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from ctxseg.config import apply_overrides, load_recipe, validate_recipe
from ctxseg.engine.trainer import build_optimizer, channels_last_training, to_training_layout
from ctxseg.losses import Criterion
from ctxseg.models.segmentor import build_segmentor


def _tiny_recipe():
    recipe = load_recipe("ocrnet-hr18-cityscapes-80k")
    return validate_recipe(
        apply_overrides(
            recipe.to_dict(),
            [
                'model.backbone.pretrained=""',
                'model.backbone.arch="w18_small"',
                "model.head.channels=32",
                "model.head.ocr_channels=16",
            ],
        )
    )


def test_layout_choice_per_device(monkeypatch):
    assert not channels_last_training(torch.device("meta"))
    for forced, expected in (("channels_last", torch.backends.mkldnn.is_available()), ("nchw", False)):
        monkeypatch.setenv("CTXSEG_LAYOUT", forced)
        assert channels_last_training(torch.device("cpu")) == expected


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="channels-last training is CPU/oneDNN only")
def test_channels_last_training_step_matches_nchw(monkeypatch):
    monkeypatch.setenv("CTXSEG_LAYOUT", "channels_last")
    recipe = _tiny_recipe()
    torch.manual_seed(0)
    nchw = build_segmentor(recipe).train()
    cl = to_training_layout(copy.deepcopy(nchw), torch.device("cpu"))
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in cl.parameters() if p.dim() == 4)
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 64, 96, generator=g)
    labels = torch.randint(0, 19, (2, 64, 96), generator=g)
    labels[:, :5] = 255
    criterion = Criterion(recipe)
    results = []
    for model, x in ((nchw, images), (cl, to_training_layout(images, torch.device("cpu")))):
        opt = build_optimizer(model, recipe)
        torch.manual_seed(7)
        loss, _ = criterion(model, model(x, labels), labels, 1)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        results.append((loss.detach(), grads, [p.detach().clone() for p in model.parameters()]))
    (l0, g0, w0), (l1, g1, w1) = results
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6)
    # a ReLU whose input is within rounding of 0 may switch on one side and not the other, which
    # moves single gradient entries by their own size (randomly initialised nets have many such
    # pixels): compare the whole gradient as one vector, and the updated weights
    flat0, flat1 = torch.cat([g.flatten() for g in g0]), torch.cat([g.flatten() for g in g1])
    assert torch.nn.functional.cosine_similarity(flat0, flat1, dim=0) > 0.99
    assert (flat1 - flat0).norm() < 0.1 * flat0.norm()
    for a, b in zip(w1, w0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)  # lr 0.01 x the flips above
