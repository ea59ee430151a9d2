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
    # rows: ceil((30-20)/15)+1 = 2, cols: ceil((50-20)/15)+1 = 3 -> 6 full-size windows; on the CPU
    # one per call (a batch is no faster there, only bigger in memory)
    assert calls == [(20, 20)] * 6
    # elsewhere (here: the meta device, shapes only) they are batched window_batch at a time
    calls.clear()
    m.to("meta")
    out = slide_logits(m, torch.empty(1, 3, 30, 50, device="meta"), 4, crop=(20, 20), stride=(15, 15), window_batch=4)
    assert calls == [(20, 20), (20, 20)] and out.shape == (1, 4, 30, 50)


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


# ------------------------------------------------------------------------------------------
# the inference fast path: folded BN, fused conv + ReLU (+ residual add), channels-last copy
# ------------------------------------------------------------------------------------------


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so folding is really exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)


def _tiny_ocrnet():
    from ctxseg.config import apply_overrides, validate_recipe

    recipe = load_recipe("ocrnet-hr18-cityscapes-80k")
    d = apply_overrides(
        recipe.to_dict(),
        [
            'model.backbone.pretrained=""',
            'model.backbone.arch="w18_small"',
            "model.head.channels=32",
            "model.head.ocr_channels=16",
        ],
    )
    torch.manual_seed(0)
    model = build_segmentor(validate_recipe(d))
    _randomise_bn(model)
    return model.eval()


def test_fast_path_matches_the_plain_model_whole_slide_and_tta():
    from ctxseg.engine.inference import inference_model, plain_inference

    model = _tiny_ocrnet()
    x = torch.randn(1, 3, 72, 104)
    for kwargs in (
        dict(mode="whole"),
        dict(mode="slide", crop=(48, 64), stride=(32, 40)),
        dict(mode="whole", scales=(0.75, 1.0), flip=True),
    ):
        with plain_inference():
            ref = infer(model, x, InferenceSettings(num_classes=19, **kwargs))
        fast = infer(model, x, InferenceSettings(num_classes=19, **kwargs))
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    fast_model = inference_model(model)
    assert fast_model is not model and inference_model(model) is fast_model  # cached
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast_model.modules())  # every BN folded here
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model itself is untouched
    # the copy follows weight updates (in-place changes bump the version counters)
    with torch.no_grad():
        model.decode_head.conv_seg.bias.add_(1.0)
    assert inference_model(model) is not fast_model
    with plain_inference():
        ref = infer(model, x, InferenceSettings(num_classes=19))
    torch.testing.assert_close(
        infer(model, x, InferenceSettings(num_classes=19)), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item()
    )
    # a training model is used as it is
    assert inference_model(model.train()) is model


def test_fused_conv_equals_conv_bn_relu_and_residual():
    from ctxseg.models.layers import FusedConv2d

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
    _randomise_bn(nn.Sequential(conv, bn))
    bn.eval()
    x, res = torch.randn(2, 6, 9, 11), torch.randn(2, 8, 9, 11)
    fused = FusedConv2d(conv, bn, relu=True)
    with torch.no_grad():
        ref = torch.relu(bn(conv(x)))
        ref_res = torch.relu(bn(conv(x)) + res)
        for fmt in (torch.contiguous_format, torch.channels_last):
            xf = x.contiguous(memory_format=fmt)
            torch.testing.assert_close(fused(xf), ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(fused(xf, res), ref_res, rtol=1e-5, atol=1e-5)
        no_act = FusedConv2d(conv, bn, relu=False)
        torch.testing.assert_close(no_act(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_object_attention_out_projection_before_mixing_equals_after():
    """OCR: out_project's 1x1 conv runs on the K object values before the attention mixes them;
    the straightforward order (mix, then project every pixel) gives the same map, in training
    (BN batch statistics) and in eval."""
    from ctxseg.models.heads.ocr import ObjectAttentionBlock

    torch.manual_seed(0)
    block = ObjectAttentionBlock(12, 8)
    _randomise_bn(block)
    pixels, objects = torch.randn(2, 12, 7, 9), torch.randn(2, 12, 5, 1)

    def straightforward(b):
        n = pixels.shape[0]
        q = b.query_project(pixels).reshape(n, 8, -1).transpose(1, 2)
        k = b.key_project(objects).reshape(n, 8, -1)
        v = b.value_project(objects).reshape(n, 8, -1).transpose(1, 2)
        ctx = torch.bmm((torch.bmm(q, k) * 8**-0.5).softmax(-1), v).transpose(1, 2).reshape(n, 8, 7, 9)
        return b.bottleneck(torch.cat([b.out_project(ctx), pixels], 1))

    for train in (True, False):
        block.train(train)
        torch.testing.assert_close(block(pixels, objects), straightforward(block), rtol=1e-5, atol=1e-5)


def test_fast_path_leaves_the_models_own_tensors_alone(monkeypatch):
    """The inference copy shares unfolded tensors with the model; making the copy channels-last
    must not change the layout (or storage) of the model's own parameters: a periodic eval during
    training would otherwise change the training numerics from then on."""
    from ctxseg.engine.inference import inference_model

    monkeypatch.setenv("CTXSEG_LAYOUT", "channels_last")  # where this CPU measures it faster
    model = _tiny_ocrnet()
    before = {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()}
    fast = inference_model(model)
    assert any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and p.shape[1] > 1 and not p.is_contiguous()
        for p in fast.parameters()
    )  # the copy is channels-last
    after = {n: (p.data_ptr(), p.stride()) for n, p in model.named_parameters()}
    assert after == before


def test_fast_copy_is_built_once_and_leaves_the_model_untouched(monkeypatch):
    """The channels-last copy must not re-layout the tensors it shares with the model (that
    changed the model's weights and the cache key, so the copy was rebuilt on every call)."""
    from ctxseg.engine.inference import inference_model

    monkeypatch.setenv("CTXSEG_LAYOUT", "channels_last")

    model = _tiny_ocrnet()
    before = {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()}
    first = inference_model(model)
    assert inference_model(model) is first
    assert {k: (v.data_ptr(), v.stride()) for k, v in model.state_dict().items()} == before
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in first.parameters() if p.dim() == 4)


def test_object_context_is_channels_last_for_a_single_image():
    """N == 1: the attention output must have true channels-last strides, or the concat before
    the OCR bottleneck silently falls back to NCHW (a slow transposing copy, then a re-layout)."""
    from ctxseg.models.heads.ocr import ObjectAttentionBlock
    from ctxseg.models.layers import fuse_for_inference

    block = fuse_for_inference(ObjectAttentionBlock(12, 8).eval()).to(memory_format=torch.channels_last)
    seen = {}
    block.bottleneck.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    pixels = torch.randn(1, 12, 7, 9).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        block(pixels, torch.randn(1, 12, 5, 1))
    assert seen["x"].is_contiguous(memory_format=torch.channels_last)
