"""`ctxseg viz embed` through the real CLI, train-free: two tiny random checkpoints (CE-only and
with the pixel_contrast plug-in) on the synthetic_small fixture, projected with PCA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxseg.config import load_recipe
from ctxseg.data.index import PreparedIndex
from ctxseg.engine.checkpoint import save_weights
from ctxseg.io import read_label
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import REPO, run_cli

RECIPES = REPO / "tests" / "recipes"


def _checkpoint(tmp: Path, recipe_file: str, data_root: Path) -> Path:
    torch.manual_seed(0)
    recipe = load_recipe(str(RECIPES / recipe_file), [f"data.root={data_root}"])
    path = tmp / f"{recipe.name}.safetensors"
    save_weights(path, build_segmentor(recipe), recipe)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, synthetic_small) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("embed_ckpt")
    return _checkpoint(tmp, "embed_ce.toml", synthetic_small), _checkpoint(tmp, "embed_contrast.toml", synthetic_small)


def test_embed_side_by_side_pca(checkpoints, synthetic_small, tmp_path):
    ce, contrast = checkpoints
    out = tmp_path / "embed"
    proc = run_cli(
        "viz",
        "embed",
        "-c",
        str(ce),
        "-c",
        str(contrast),
        "--method",
        "pca",
        "--images",
        "3",
        "--per-class",
        "50",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    png = out / "embed.png"
    assert str(png) in proc.stdout.replace("\n", "")
    assert (out / "index.html").is_file() and "embed.png" in (out / "index.html").read_text()

    # non-trivial picture: a real PNG with many distinct colours (the scatter, not a blank canvas)
    import cv2

    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] >= 300 and img.shape[1] >= 600
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50

    points = json.loads((out / "embed_points.json").read_text())
    assert points["method"] == "pca"
    assert [p["source"] for p in points["panels"]] == ["decode-head feats", "contrast embed"]

    # the classes present in the 3 images' labels: labels are downsampled to the stride-8 grid, so a
    # class covering a few pixels may vanish; every class with >= 2% of the pixels must be there
    index = PreparedIndex.open(synthetic_small)
    labels = np.concatenate([read_label(s.label).reshape(-1) for s in index.samples("val")[:3]])
    counts_full = np.bincount(labels[labels != 255], minlength=7)
    full = set(np.flatnonzero(counts_full).tolist())
    major = set(np.flatnonzero(counts_full >= 0.02 * counts_full.sum()).tolist())
    assert len(major) >= 2
    for panel in points["panels"]:
        lab = np.asarray(panel["labels"])
        xy = np.asarray(panel["xy"])
        assert xy.shape == (len(lab), 2) and np.isfinite(xy).all() and xy.std(0).min() > 0
        present = set(lab.tolist())
        assert major <= present <= full
        counts = np.bincount(lab)
        assert counts.max() <= 50  # balanced: at most --per-class of each class


def test_embed_missing_checkpoint(tmp_path):
    proc = run_cli(
        "viz", "embed", "-c", str(tmp_path / "nope.safetensors"), "--method", "pca", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2
    assert "Checkpoint not found" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
