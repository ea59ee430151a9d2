"""The context methods compose: MCIBI memory -> CAC classifier -> pixel contrast on one model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ctxseg.config import load_recipe
from ctxseg.losses import Criterion
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import REPO, run_cli

RECIPE = REPO / "tests" / "recipes" / "compose_all.toml"


def test_all_plugins_train_together_and_every_parameter_learns():
    torch.manual_seed(0)
    recipe = load_recipe(RECIPE)
    model = build_segmentor(recipe).train()
    # CAC adapts the classifier that is final after MCIBI (its stage-2 decoder), not the head's
    assert model.plugins["cac"].classifier.owner is model.plugins["memory"].decoder_stage2
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 7, (2, 64, 64))
    y[:, :6] = 255
    memory_before = model.plugins["memory"].memory.clone()
    out = model(x, y)
    loss, terms = Criterion(recipe)(model, out, y, step=10)
    for key in (
        "loss_ce",
        "loss_aux",
        "loss_cls_stage1",
        "loss_memory",
        "loss_cac_pre_self",
        "loss_cac_pre",
        "loss_cac_kl",
        "loss_contrast",
    ):
        assert key in terms and terms[key] > 0 and torch.isfinite(torch.tensor(terms[key])), key
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert not torch.equal(model.plugins["memory"].memory, memory_before)  # the memory was updated
    model.eval()
    out = model(x)
    assert out["logits"].shape == (2, 7, 8, 8) and "embed" not in out  # nothing extra at test time


def test_composed_recipe_trains_evaluates_and_exports_through_cli(synthetic_small: Path, tmp_path: Path):
    data = [
        "--set",
        f"data.root='{synthetic_small}'",
        "--set",
        "data.num_workers=0",
        "--set",
        "data.batch_size=2",
        "--set",
        "data.crop_size=[64, 64]",
    ]
    run_cli(
        "train",
        "--recipe",
        str(RECIPE),
        "--set",
        "train.iters=3",
        "--set",
        "train.eval_interval=3",
        *data,
        "--no-progress",
        cwd=tmp_path,
    )
    run = (tmp_path / "runs" / "latest").resolve()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert steps and all("loss_cac_kl" in r and "loss_cls_stage1" in r and "loss_contrast" in r for r in steps)
    run_cli("eval", "--limit", "2", cwd=tmp_path)
    assert json.loads((run / "eval" / "metrics.json").read_text())["num_images"] == 2
    run_cli(
        "convert",
        "onnx",
        "--checkpoint",
        str(run / "final.safetensors"),
        "-o",
        str(tmp_path / "m.onnx"),
        "--height",
        "64",
        "--width",
        "64",
        cwd=tmp_path,
    )
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_mcibi_on_ocrnet_uses_the_object_context():
    torch.manual_seed(1)
    recipe = load_recipe(REPO / "tests" / "recipes" / "mcibi_ocr_tiny.toml")
    model = build_segmentor(recipe).train()
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, 7, (2, 64, 64))
    out = model(x, y)
    loss, terms = Criterion(recipe)(model, out, y, step=1)
    # OCR's first stage (aux, 0.4), MCIBI's stage 1 and memory loss, and the final CE all train
    assert {"loss_ce", "loss_aux", "loss_cls_stage1", "loss_memory"} <= set(terms)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    # the within-image context is the OCR head's output: changing it changes the final logits
    model.eval()
    base = model(x)["logits"]
    with torch.no_grad():
        model.decode_head.object_context_block.bottleneck.conv.weight.mul_(1.5)  # OCR's object attention output
    assert not torch.allclose(model(x)["logits"], base)
