"""The inference function: sliding windows, batching, scales and flip."""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.config import load_recipe
from ctxseg.engine.inference import flip_scores, infer, slide_logits
from ctxseg.engine.settings import InferenceSettings
from ctxseg.models.segmentor import build_segmentor


class PixelModel(nn.Module):
    """Translation-equivariant per-pixel model: sliding windows must reproduce whole-image output."""

    def __init__(self, c=4):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 1)

    def forward(self, x):
        return {"logits": self.conv(x)}


def test_slide_equals_whole_for_pixelwise_model_and_batching_does_not_matter():
    torch.manual_seed(0)
    m = PixelModel().eval()
    x = torch.randn(2, 3, 37, 53)
    whole = infer(m, x, InferenceSettings(4))
    for wb in (1, 3, 16):
        s = slide_logits(m, x, 4, crop=(16, 20), stride=(11, 13), window_batch=wb)
        assert torch.allclose(s, whole, atol=1e-6)


def test_slide_windows_cover_edges_like_mmseg():
    calls = []

    class Recorder(PixelModel):
        def forward(self, x):
            calls.append(tuple(x.shape[-2:]))
            return super().forward(x)

    m = Recorder().eval()
    slide_logits(m, torch.randn(1, 3, 30, 50), 4, crop=(20, 20), stride=(15, 15), window_batch=100)
    # rows: ceil((30-20)/15)+1 = 2, cols: ceil((50-20)/15)+1 = 3 -> one batched call of 6 full-size windows
    assert calls == [(20, 20)]


def test_flip_tta_and_scales_return_probabilities_at_input_size():
    recipe = load_recipe("demo")
    model = build_segmentor(recipe).eval()
    x = torch.randn(1, 3, 45, 70)
    out = infer(model, x, InferenceSettings(7, scales=(0.75, 1.0), flip=True))
    assert out.shape == (1, 7, 45, 70)
    assert torch.allclose(out.sum(1), torch.ones(1, 45, 70), atol=1e-5)


def test_flip_scores_swaps_pairs():
    s = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 1, 3).clone()
    s[..., 0] += 10
    f = flip_scores(s, [(1, 2)])
    assert f[0, :, 0, 2].tolist() == [10, 12, 11, 13] and f[0, :, 0, 0].tolist() == [0, 2, 1, 3]
