"""Loading a checkpoint never fetches pretrained weights (issue 11, item 11): eval, predict, viz,
export and resume rebuild the model through one path (ctxseg.engine.offline) that skips the
backbone's `pretrained`. Checked with every download made to raise, on checkpoints whose recipe
names timm weights, a URL, and a local file that does not exist here."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxseg.config import load_recipe
from ctxseg.engine.checkpoint import load_model, read_checkpoint, save_weights
from ctxseg.models.segmentor import build_segmentor
from tests.test_pretrained import no_downloads  # noqa: F401 - fixture

SOURCES = [
    "timm",
    "timm:resnet18.a1_in1k",
    "https://example.invalid/weights-0123abcd.pth",
    "/nowhere/resnet18-imagenet.pth",
]


def _checkpoint(tmp_path: Path, pretrained: str, extra: list[str] | None = None) -> tuple[Path, dict]:
    recipe = load_recipe("demo", [f"model.backbone.pretrained='{pretrained}'", "data.num_classes=7", *(extra or [])])
    model = build_segmentor(load_recipe("demo", ["data.num_classes=7", *(extra or [])]))  # trained weights stand-in
    path = tmp_path / "model.safetensors"
    save_weights(path, model, recipe)
    return path, model.state_dict()


@pytest.mark.parametrize("pretrained", SOURCES)
def test_load_model_never_fetches(tmp_path, no_downloads, pretrained):  # noqa: F811
    path, state = _checkpoint(tmp_path, pretrained)
    model, recipe, _ = load_model(path)
    assert recipe.model.backbone["pretrained"] == pretrained  # the recipe is kept as trained
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def _run_cli(monkeypatch, *args: str) -> None:
    from ctxseg.cli import main

    monkeypatch.setattr(sys, "argv", ["ctxseg", *args])
    try:
        main()
    except SystemExit as e:
        assert e.code in (0, None), f"ctxseg {' '.join(args)} exited {e.code}"


def test_predict_viz_and_export_never_fetch(tmp_path, no_downloads, monkeypatch):  # noqa: F811
    from PIL import Image

    path, _ = _checkpoint(tmp_path, "timm")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / "a.png")
    monkeypatch.chdir(tmp_path)
    _run_cli(monkeypatch, "predict", str(images), "-c", str(path), "--out", str(tmp_path / "pred"))
    assert (tmp_path / "pred" / "a.png").is_file()
    _run_cli(monkeypatch, "viz", "overlay", "-c", str(path), "--images", str(images), "--out", str(tmp_path / "viz"))
    assert any((tmp_path / "viz").rglob("*.png"))
    pytest.importorskip("onnx")
    _run_cli(
        monkeypatch,
        "convert",
        "onnx",
        "-c",
        str(path),
        "-o",
        str(tmp_path / "m.onnx"),
        "--height",
        "32",
        "--width",
        "32",
        "--no-check",
    )
    assert (tmp_path / "m.onnx").is_file()


def test_resume_never_fetches(tmp_path, synthetic_small, no_downloads):  # noqa: F811
    """A run trained with pretrained weights resumes on a machine that cannot fetch them."""
    from ctxseg.engine.trainer import Trainer

    over = [
        f"data.root='{synthetic_small}'",
        "train.iters=1",
        "train.checkpoint_interval=1",
        "train.eval_interval=100",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.crop_size=[64, 64]",
        "train.check_labels=false",
    ]
    trainer = Trainer(load_recipe("demo", over), tmp_path / "runs", progress=False, eval_limit=1)
    trainer.train()
    ckpt = sorted((trainer.run_dir / "checkpoints").glob("iter_*.safetensors"))[-1]
    state, recipe, extra = read_checkpoint(ckpt)
    # the same run as if it had started from timm's ImageNet weights
    trained = build_segmentor(recipe)
    trained.load_state_dict(state)
    as_pretrained = load_recipe("demo", [*over, "train.iters=3", "model.backbone.pretrained='timm'"])
    save_weights(ckpt, trained, as_pretrained, extra)
    resumed = Trainer(as_pretrained, tmp_path / "runs", resume=ckpt, progress=False)
    assert resumed.step == 1
    core = resumed.acc.unwrap_model(resumed.model)
    assert torch.equal(core.state_dict()["backbone.net.conv1.0.weight"], state["backbone.net.conv1.0.weight"])
