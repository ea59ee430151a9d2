"""Evaluation over a prepared split: on-the-fly confusion matrix, optional prediction PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ctxseg.config import Recipe
from ctxseg.data.dataset import SegDataset
from ctxseg.data.index import PreparedIndex
from ctxseg.engine.inference import infer
from ctxseg.engine.settings import InferenceSettings
from ctxseg.io import write_png
from ctxseg.metrics import ConfusionMatrix, image_miou


@torch.no_grad()
def evaluate(model, recipe: Recipe, index: PreparedIndex, split: str, settings: InferenceSettings, device: torch.device,
             rank: int = 0, world: int = 1, pred_dir: Path | None = None, progress: Callable[[int, int], None] | None = None,
             limit: int | None = None) -> tuple[ConfusionMatrix, dict]:
    """Returns this process's confusion matrix (caller reduces across processes) and per-image stats."""
    ds = SegDataset(index, split, recipe.data, train=False)
    idx = list(range(len(ds)))[: limit or None][rank::world]
    cm = ConfusionMatrix(recipe.data.num_classes, recipe.data.ignore_index)
    per_image = {}
    model.eval()
    for k, i in enumerate(idx):
        item = ds[i]
        image = item["image"].unsqueeze(0).to(device)
        scores = infer(model, image, settings)
        pred = scores.argmax(1)[0].cpu()
        if "label" in item:
            per_image[ds.samples[i].name] = image_miou(cm.update(pred, item["label"]))
        if pred_dir is not None:
            write_png(pred_dir / f"{ds.samples[i].name}.png", pred.numpy().astype(np.uint8 if recipe.data.num_classes < 256 else np.uint16))
        if progress:
            progress(k + 1, len(idx))
    return cm, per_image
