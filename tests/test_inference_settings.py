"""One InferenceSettings object reaches the one `infer` function from every command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ctxseg.config import load_recipe
from ctxseg.engine.checkpoint import save_weights
from ctxseg.engine.settings import InferenceSettings
from ctxseg.io import write_png
from ctxseg.metrics import ConfusionMatrix, image_miou
from ctxseg.models.segmentor import build_segmentor
from ctxseg.viz.compare import per_image_miou

MS = [
    "eval.scales=[0.5, 1.0]",
    "eval.flip=true",
    "data.flip_pairs=[[1, 2]]",
    "eval.mode='slide'",
    "eval.crop_size=[32, 32]",
    "eval.stride=[16, 16]",
    "eval.window_batch=3",
]


def test_from_recipe_carries_every_setting():
    recipe = load_recipe("demo", MS)
    s = InferenceSettings.from_recipe(recipe, flip_pairs=[(3, 4)])
    assert s == InferenceSettings(
        num_classes=recipe.data.num_classes,
        mode="slide",
        crop=(32, 32),
        stride=(16, 16),
        scales=(0.5, 1.0),
        flip=True,
        flip_pairs=((1, 2),),
        window_batch=3,
        align_corners=recipe.model.align_corners,
    )  # data.flip_pairs wins over the dataset's
    ms = InferenceSettings.from_recipe(load_recipe("demo"), ms_flip=True, flip_pairs=[(3, 4)])
    assert ms.scales == tuple(load_recipe("demo").eval.ms_scales) and ms.flip and ms.flip_pairs == ((3, 4),)
    assert InferenceSettings.from_recipe(recipe, scales=[2.0], flip=False).scales == (2.0,)
    assert s.to_dict()["flip_pairs"] == [[1, 2]] and s.to_dict()["scales"] == [0.5, 1.0]


def test_viz_overlay_of_a_checkpoint_uses_the_recipes_scales_flip_and_pairs(tmp_path: Path, monkeypatch):
    """`viz overlay --images` used to pass mode/crop/stride only, silently dropping scales, flip and pairs."""
    import ctxseg.engine.evaluate as evaluate  # viz overlay scores through evaluate.predict_scores
    from ctxseg.cli.viz import _overlay_checkpoint

    recipe = load_recipe("demo", [f"data.root='{tmp_path / 'no-index'}'", *MS])
    torch.manual_seed(0)
    ckpt = save_weights(tmp_path / "m.safetensors", build_segmentor(recipe), recipe)
    images = tmp_path / "images"
    write_png(images / "a.png", np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    seen: list[InferenceSettings] = []
    real = evaluate.infer

    def spy(model, x, settings, out_size=None):
        seen.append(settings)
        return real(model, x, settings, out_size)

    # patched where it is called (evaluate imported `infer` by name): independent of import order
    monkeypatch.setattr(evaluate, "infer", spy)
    _overlay_checkpoint(str(ckpt), images, tmp_path / "out", 1, 0.5, [])
    assert seen == [InferenceSettings.from_recipe(recipe)]
    assert seen[0].scales == (0.5, 1.0) and seen[0].flip and seen[0].flip_pairs == ((1, 2),)
    assert (tmp_path / "out" / "a.png").is_file()


def test_one_per_image_miou():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (20, 30))
    gt[:3] = 255
    pred = np.where(rng.random((20, 30)) < 0.7, gt, rng.integers(0, 5, (20, 30))) % 5
    m = ConfusionMatrix.compute(torch.from_numpy(pred), torch.from_numpy(gt), 5, 255)
    tp = np.diag(m.numpy())
    union = m.numpy().sum(0) + m.numpy().sum(1) - tp
    expected = np.mean([tp[c] / union[c] for c in range(5) if union[c] > 0])
    assert image_miou(m) == per_image_miou(pred, gt, 5, 255) == float(expected)
    assert np.isnan(image_miou(np.zeros((3, 3))))
