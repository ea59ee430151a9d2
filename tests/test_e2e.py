"""The documented flow through the real CLI: prepare -> train -> eval -> predict -> viz overlay."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import run_cli

FAST = [
    "--set",
    "data.num_workers=0",
    "--set",
    "data.batch_size=2",
    "--set",
    "train.log_interval=1",
    "--set",
    "data.val_split='val_small'",
    "--no-progress",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("e2e")
    run_cli("prepare", "synthetic", cwd=wd)
    # a short validation split keeps the periodic eval inside training cheap
    splits = wd / "data" / "synthetic" / "splits"
    (splits / "val_small.txt").write_text("\n".join((splits / "val.txt").read_text().splitlines()[:6]) + "\n")
    return wd


def test_prepare_synthetic_format(workdir: Path):
    root = workdir / "data" / "synthetic"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["num_classes"] == 7 and len(meta["classes"]) == 7 and len(meta["palette"]) == 7
    assert meta["splits"] == {"train": 400, "val": 100} and meta["ignore_index"] == 255
    assert sum(meta["class_pixel_counts"]) > 0 and min(meta["class_pixel_counts"]) > 0
    lines = (root / "splits" / "train.txt").read_text().split("\n")
    img_rel, lab_rel = lines[0].split()
    img = cv2.imread(str(root / img_rel))
    lab = cv2.imread(str(root / lab_rel), cv2.IMREAD_UNCHANGED)
    assert 128 <= img.shape[0] <= 256 and 128 <= img.shape[1] <= 256 and lab.shape == img.shape[:2]
    ignore_share = np.mean([(cv2.imread(str(root / l.split()[1]), 0) == 255).mean() for l in lines[:20] if l])
    assert ignore_share > 0  # ignore-index pixels present
    # idempotent and deterministic: a second prepare rewrites nothing and yields the same files
    before = (root / lab_rel).stat().st_mtime_ns
    run_cli("prepare", "synthetic", cwd=workdir)
    assert (root / lab_rel).stat().st_mtime_ns == before


def test_train_eval_predict_viz(workdir: Path):
    proc = run_cli(
        "train",
        "--recipe",
        "demo",
        "--set",
        "train.iters=4",
        "--set",
        "train.eval_interval=4",
        "--set",
        "train.checkpoint_interval=2",
        *FAST,
        cwd=workdir,
    )
    assert "done 4 iterations" in proc.stdout
    run = (workdir / "runs" / "latest").resolve()
    for name in (
        "recipe.toml",
        "log.jsonl",
        "best.safetensors",
        "final.safetensors",
        "checkpoints/iter_0000004.safetensors",
        "checkpoints/iter_0000004.state.pt",
    ):
        assert (run / name).is_file(), name
    log = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert any("val/mIoU" in r for r in log)

    run_cli("eval", "--split", "val", "--limit", "6", cwd=workdir)  # defaults: runs/latest, best checkpoint
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in ("aAcc", "mIoU", "mAcc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["IoU"]) == {
        "background",
        "horizontal-stripes",
        "vertical-stripes",
        "checkerboard",
        "dots",
        "diagonal-stripes",
        "speckle",
    }
    assert metrics["inference"]["mode"] == "whole" and metrics["num_images"] == 6
    assert len(list((run / "eval" / "predictions").rglob("*.png"))) == 6

    proc = run_cli("eval", "--ms-flip", "--limit", "2", "--out", str(workdir / "msflip"), cwd=workdir)
    assert "mIoU" in proc.stdout
    ms = json.loads((workdir / "msflip" / "metrics.json").read_text())
    assert ms["inference"]["flip"] is True and ms["inference"]["scales"] == [0.75, 1.0, 1.25]

    imgs = workdir / "few"
    imgs.mkdir()
    for p in sorted((workdir / "data" / "synthetic" / "images" / "val").glob("*.png"))[:3]:
        shutil.copy(p, imgs / p.name)
    run_cli("predict", str(imgs), "--out", str(workdir / "preds"), "--color", cwd=workdir)
    pred = cv2.imread(str(workdir / "preds" / "val_0000.png"), cv2.IMREAD_UNCHANGED)
    assert pred.shape == cv2.imread(str(imgs / "val_0000.png")).shape[:2] and pred.max() < 7
    assert (workdir / "preds" / "val_0000_color.png").is_file()

    proc = run_cli("viz", "overlay", cwd=workdir)  # newest predictions: the predict call above
    overlays = sorted((workdir / "overlays").glob("*.png"))
    assert len(overlays) == 3 and "overlays" in proc.stdout
    assert all(p.name in (workdir / "overlays" / "index.html").read_text() for p in overlays)


def test_errors_are_one_message_exit_2(workdir: Path, tmp_path: Path):
    proc = run_cli("eval", "--checkpoint", str(tmp_path / "missing.safetensors"), cwd=workdir, check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    proc = run_cli("eval", "--checkpoint", str(bad), cwd=workdir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = run_cli("train", "--recipe", "demo", "--set", "data.root='nowhere'", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "ctxseg prepare" in proc.stderr
    proc = run_cli("predict", str(tmp_path / "nothing-here"), cwd=workdir, check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_nan_loss_stops_with_message_and_keeps_checkpoint(workdir: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    proc = run_cli(
        "train",
        "--recipe",
        "demo",
        "--runs-dir",
        str(runs),
        "--set",
        "train.iters=30",
        "--set",
        "train.optimizer.type='sgd'",
        "--set",
        "train.optimizer.lr=1e12",
        "--set",
        "train.checkpoint_interval=1",
        "--set",
        "train.eval_interval=1000",
        "--set",
        "train.schedule.warmup_iters=0",
        *FAST,
        cwd=workdir,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Loss became" in proc.stderr and "Traceback" not in proc.stderr
    run = (runs / "latest").resolve()
    assert list((run / "checkpoints").glob("iter_*.safetensors"))  # the last good checkpoint is kept
    assert not (run / "final.safetensors").exists()


def test_help_shows_examples():
    for cmd in ("prepare", "train", "eval", "predict", "viz", "convert", "recipes"):
        proc = run_cli(cmd, "--help")
        assert "ctxseg" in proc.stdout
    assert "ctxseg train --recipe demo" in run_cli("train", "--help").stdout


def test_usage_errors_are_one_message_exit_2(tmp_path: Path):
    """An unknown option or a bad value: click's usage message and exit 2, never a traceback (recent
    typer releases raise their vendored click's exceptions, not click's own)."""
    for args in (("eval", "--no-such-option"), ("train", "--recipe")):
        proc = run_cli(*args, cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "Error:" in proc.stderr
