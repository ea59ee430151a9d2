"""The memory layout is measured per machine (ctxseg.engine.layout): forced by CTXSEG_LAYOUT, cached
per CPU kind, chosen only when clearly faster, applied by training and inference alike, and the
results do not depend on it beyond float rounding."""

from __future__ import annotations

import json

import pytest
import torch

from ctxseg.engine import layout
from ctxseg.errors import UserError


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache home and no verdict remembered by this process."""
    monkeypatch.setenv("CTXSEG_HOME", str(tmp_path))
    monkeypatch.delenv("CTXSEG_LAYOUT", raising=False)
    monkeypatch.setattr(layout, "_CHOICES", {})
    return tmp_path


def test_verdict_needs_a_clear_margin():
    sig = {"cpu": "Test CPU", "isa": ["avx2"], "torch": "x", "threads": 2}
    faster = layout.decide({"nchw": 1.0, "channels_last": 0.90}, sig)
    assert faster.channels_last and "10% faster" in faster.reason and "Test CPU (avx2)" in faster.reason
    noise = layout.decide({"nchw": 1.0, "channels_last": 0.99}, sig)
    assert not noise.channels_last and "plain NCHW" in noise.reason
    slower = layout.decide({"nchw": 1.0, "channels_last": 1.09}, sig)
    assert not slower.channels_last and "9% slower" in slower.reason


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="layouts are chosen for oneDNN CPUs only")
def test_measured_once_then_cached_per_cpu_kind(fresh, monkeypatch):
    calls = []

    def fake_measure(phase, *a, **k):
        calls.append(phase)
        return {"nchw": 1.0, "channels_last": 0.8} if phase == "infer" else {"nchw": 1.0, "channels_last": 1.2}

    monkeypatch.setattr(layout, "measure", fake_measure)
    train, infer = layout.choose("cpu", "train"), layout.choose("cpu", "infer")
    assert (train.channels_last, infer.channels_last) == (False, True)
    assert layout.choose("cpu", "train") is train and calls == ["train", "infer"]  # once per process
    cache = json.loads((fresh / "layout.json").read_text())
    sig = layout.cpu_signature()
    assert set(cache) == {layout._cache_key(sig, "train"), layout._cache_key(sig, "infer")}
    assert sig["torch"] in next(iter(cache)) and f"{sig['threads']} threads" in next(iter(cache))
    # a new process reads the verdict instead of measuring again
    monkeypatch.setattr(layout, "_CHOICES", {})
    monkeypatch.setattr(layout, "measure", lambda *a, **k: pytest.fail("measured again"))
    again = layout.choose("cpu", "infer")
    assert again.channels_last and "measured earlier" in again.reason
    # another thread count is another machine kind as far as the kernels go
    monkeypatch.setattr(layout, "_CHOICES", {})
    monkeypatch.setattr(layout, "measure", fake_measure)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        layout.choose("cpu", "train")
    finally:
        torch.set_num_threads(threads)
    assert calls[-1] == "train" and len(json.loads((fresh / "layout.json").read_text())) == 3


def test_forced_layout_and_a_bad_value(fresh, monkeypatch):
    monkeypatch.setattr(layout, "measure", lambda *a, **k: pytest.fail("a forced layout measures nothing"))
    monkeypatch.setenv("CTXSEG_LAYOUT", "nchw")
    assert not layout.choose("cpu", "train").channels_last
    monkeypatch.setenv("CTXSEG_LAYOUT", "channels-last")
    assert layout.choose("cpu", "infer").channels_last == torch.backends.mkldnn.is_available()
    monkeypatch.setenv("CTXSEG_LAYOUT", "nhwc")
    with pytest.raises(UserError, match="CTXSEG_LAYOUT must be auto, nchw or channels_last"):
        layout.choose("cpu", "train")
    assert not layout.choose("meta", "train").channels_last  # not a CPU: NCHW, nothing checked


def test_unwritable_cache_only_costs_a_measurement(fresh, monkeypatch):
    (fresh / "layout.json").mkdir()  # a folder where the file should be: neither readable nor writable
    monkeypatch.setattr(layout, "measure", lambda *a, **k: {"nchw": 1.0, "channels_last": 2.0})
    assert not layout.choose("cpu", "train").channels_last


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="layouts are chosen for oneDNN CPUs only")
def test_calibration_times_both_layouts(fresh):
    seconds = layout.measure("infer", rounds=1, size=(16, 24))
    assert set(seconds) == {"nchw", "channels_last"} and all(v > 0 for v in seconds.values())


def test_inference_runs_in_the_chosen_layout_with_the_same_scores(monkeypatch):
    from ctxseg.config import apply_overrides, load_recipe, validate_recipe
    from ctxseg.engine.inference import _PREPARED, infer, inference_model
    from ctxseg.engine.settings import InferenceSettings
    from ctxseg.models.segmentor import build_segmentor

    recipe = validate_recipe(apply_overrides(load_recipe("demo").to_dict(), ['model.backbone.pretrained=""']))
    torch.manual_seed(0)
    model = build_segmentor(recipe).eval()
    images = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(1))
    settings = InferenceSettings.from_recipe(recipe)
    scores = {}
    for forced in ("nchw", "channels_last"):
        monkeypatch.setenv("CTXSEG_LAYOUT", forced)
        _PREPARED.clear()
        fast = inference_model(model)
        # kxk kernels with several input channels: the two layouts have different strides
        weights = [p for p in fast.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
        assert weights
        if forced == "channels_last" and torch.backends.mkldnn.is_available():
            assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in weights)
        else:
            assert all(p.is_contiguous() for p in weights)
        scores[forced] = infer(model, images, settings)
    _PREPARED.clear()
    torch.testing.assert_close(scores["channels_last"], scores["nchw"], rtol=1e-4, atol=1e-4)
