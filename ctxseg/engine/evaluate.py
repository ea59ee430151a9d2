"""Evaluation over a prepared split: on-the-fly confusion matrix, optional prediction PNGs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ctxseg.config import Recipe
from ctxseg.data.dataset import SegDataset
from ctxseg.data.index import PreparedIndex
from ctxseg.data.openseg_pipeline import normalize_input
from ctxseg.data.transforms import resize_pair, test_size
from ctxseg.engine.inference import infer
from ctxseg.engine.settings import InferenceSettings
from ctxseg.io import write_png
from ctxseg.metrics import ConfusionMatrix, image_miou


def protocol_of(settings: InferenceSettings) -> str:
    """Name the test protocol a run used: "ss" (one scale 1.0, no flip), "flip" (one scale + flip),
    "ms_flip" (several scales + flip) or "custom" (anything else, e.g. several scales without flip)."""
    scales = [float(s) for s in settings.scales or (1.0,)]
    flip = bool(settings.flip)
    if scales == [1.0]:
        return "flip" if flip else "ss"
    return "ms_flip" if flip and len(scales) > 1 else "custom"


PROTOCOL_FIELDS = {"ss": "miou", "flip": "miou_flip", "ms_flip": "miou_ms"}
PROTOCOL_NAMES = {
    "ss": "single scale",
    "flip": "single scale + flip",
    "ms_flip": "multi-scale + flip",
    "custom": "custom",
}


def published_for(recipe: Recipe, settings: InferenceSettings) -> tuple[str, float | None]:
    """The published mIoU of the protocol `settings` ran (None when the paper has no such number).
    A flip-only number is never compared with a no-flip run, nor single scale with multi-scale."""
    protocol = protocol_of(settings)
    field = PROTOCOL_FIELDS.get(protocol)
    if field == "miou_ms" and recipe.eval.ms_scales and sorted(settings.scales) != sorted(recipe.eval.ms_scales):
        return protocol, None  # other scales than the paper's
    return protocol, getattr(recipe.published, field) if field else None


def load_eval_image(img, settings: InferenceSettings):
    """The official test-time Resize of an HxWx3 image (no-op without eval.resize)."""
    if not settings.resize:
        return img
    size = test_size(img.shape[0], img.shape[1], tuple(settings.resize), settings.keep_ratio)
    return resize_pair(img, None, size)[0]


def predict_scores(model, recipe: Recipe, img, settings: InferenceSettings, device) -> torch.Tensor:
    """Scores [1, C, H, W] at the image's own size for an HxWx3 BGR image (uint8, or float 0..255):
    the test-time Resize, inference, then the logits resized back (bilinear) to the original size,
    as mmseg's postprocess_result and ssseg's tester do before the argmax. A list of N images of one
    size runs as one batch and gives [N, C, H, W] (`ctxseg.load(...).predict(batch_size=...)`)."""
    images = img if isinstance(img, list) else [img]
    x = torch.from_numpy(np.stack([normalize_input(load_eval_image(i, settings), recipe.data) for i in images])).to(
        device
    )
    return infer(model, x, settings, out_size=tuple(images[0].shape[:2]))


@torch.no_grad()
def evaluate(
    model,
    recipe: Recipe,
    index: PreparedIndex,
    split: str,
    settings: InferenceSettings,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    pred_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    limit: int | None = None,
) -> tuple[ConfusionMatrix, dict]:
    """Returns this process's confusion matrix (caller reduces across processes) and per-image stats."""
    ds = SegDataset(index, split, recipe.data, train=False, test_resize=settings.resize, keep_ratio=settings.keep_ratio)
    idx = list(range(len(ds)))[: limit or None][rank::world]
    cm = ConfusionMatrix(recipe.data.num_classes, recipe.data.ignore_index)
    per_image = {}
    model.eval()
    for k, i in enumerate(idx):
        item = ds[i]
        image = item["image"].unsqueeze(0).to(device)
        scores = infer(
            model, image, settings, out_size=tuple(item["size"])
        )  # logits back to the label's size (test-time Resize)
        pred = scores.argmax(1)[0].cpu()
        if "label" in item:
            per_image[ds.samples[i].name] = image_miou(cm.update(pred, item["label"]))
        if pred_dir is not None:
            write_png(
                pred_dir / f"{ds.samples[i].name}.png",
                pred.numpy().astype(np.uint8 if recipe.data.num_classes < 256 else np.uint16),
            )
        if progress:
            progress(k + 1, len(idx))
    return cm, per_image
