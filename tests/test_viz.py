"""`ctxseg viz`: overlay, compare, confusion, curves, palette and the index.html of each output folder.

The commands run in-process through the real Typer app (one eval of a random demo model on the
small synthetic dataset feeds them); the HTML pages are rendered in headless Chromium.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ctxseg.cli as cli
from ctxseg.engine import runs as runs_mod
from ctxseg.viz import sources

_registered = False


def invoke(*args: str) -> str:
    """Run `ctxseg ARGS` in-process; return its output (raises what the command raised)."""
    global _registered
    if not _registered:
        cli._register()
        _registered = True
    result = CliRunner().invoke(cli.app, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def ev(tmp_path_factory, synthetic_small):
    """An eval (4 val images) of a random demo checkpoint; cwd and runs/ inside a temp folder."""
    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import save_weights
    from ctxseg.models.segmentor import build_segmentor

    tmp = tmp_path_factory.mktemp("viz")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setattr(sources, "RUNS_DIR", tmp / "runs")
        mp.setattr(runs_mod, "RUNS_DIR", tmp / "runs")
        recipe = load_recipe("demo", [f"data.root='{synthetic_small}'"])
        torch.manual_seed(0)
        ckpt = save_weights(tmp / "run" / "best.safetensors", build_segmentor(recipe), recipe)
        invoke("eval", "-c", str(ckpt), "--limit", "4")
        yield {"tmp": tmp, "ckpt": ckpt, "eval": tmp / "run" / "eval", "data": synthetic_small, "recipe": recipe}


def pngs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.png"))


def check_index(folder: Path, expected: int | None = None) -> None:
    """index.html references every picture in the folder (and nothing that is missing)."""
    page = (folder / "index.html").read_text()
    refs = re.findall(r'<img src="([^"]+)"', page)
    files = {p.relative_to(folder).as_posix() for p in pngs(folder)}
    assert set(refs) == files, set(refs) ^ files
    if expected is not None:
        assert len(refs) == expected


# ------------------------------------------------------------------------------------------


def test_overlay_newest_predictions_and_gt(ev):
    text = invoke("viz", "overlay")
    target = ev["eval"] / "overlays"
    assert str(target) in text.replace("\n", "")
    files = pngs(target)
    assert len(files) == 4
    manifest = json.loads((ev["eval"] / "predictions.json").read_text())
    name, sample = next(iter(manifest["samples"].items()))
    src = cv2.imread(sample["image"])
    pic = cv2.imread(str(target / f"{name}.png"))
    assert pic.shape[0] == src.shape[0] and pic.shape[1] > src.shape[1]  # the image plus its legend
    check_index(target, 4)
    invoke("viz", "overlay", "--gt", "--limit", "2")
    check_index(ev["eval"] / "overlays_gt", 2)


def test_overlay_images_through_a_checkpoint(ev):
    out = ev["tmp"] / "ov"
    invoke(
        "viz",
        "overlay",
        "--checkpoint",
        str(ev["ckpt"]),
        "--images",
        str(ev["data"] / "images" / "val"),
        "--limit",
        "2",
        "--out",
        str(out),
    )
    assert len(pngs(out)) == 2
    check_index(out, 2)


def test_compare_worst_picks_the_lowest_miou(ev):
    metrics = json.loads((ev["eval"] / "metrics.json").read_text())
    per_image = metrics["per_image_mIoU"]
    worst2 = sorted(per_image, key=per_image.get)[:2]
    out = ev["tmp"] / "worst"
    invoke("viz", "compare", "--worst", "2", "--out", str(out))
    files = pngs(out)
    assert [f.name for f in files] == [f"{k + 1:03d}_{n.replace('/', '_')}.png" for k, n in enumerate(worst2)]
    page = (out / "index.html").read_text()
    for name in worst2:
        assert f"{name} — mIoU {100 * per_image[name]:.1f}" in page
    pic = cv2.imread(str(files[0]))
    assert pic.shape[1] > 4 * 128  # four tiles plus the legend
    check_index(out, 2)


def test_compare_per_image_miou_and_error_map_agree_with_eval(ev):
    from ctxseg.io import read_label
    from ctxseg.viz.compare import WRONG_BGR, error_map, per_image_miou

    metrics = json.loads((ev["eval"] / "metrics.json").read_text())
    manifest = json.loads((ev["eval"] / "predictions.json").read_text())
    for name, s in manifest["samples"].items():
        pred = read_label(ev["eval"] / "predictions" / f"{name}.png").astype(np.int64)
        gt = read_label(s["label"]).astype(np.int64)
        assert per_image_miou(pred, gt, 7, 255) == pytest.approx(metrics["per_image_mIoU"][name], abs=1e-9)
    gt = np.array([[0, 1], [2, 255]])
    pred = np.array([[0, 2], [2, 1]])
    err = error_map(pred, gt, 255)
    assert tuple(err[0, 1]) == WRONG_BGR and tuple(err[0, 0]) != WRONG_BGR and tuple(err[1, 1]) != WRONG_BGR


def test_confusion_from_metrics(ev):
    invoke("viz", "confusion")
    target = ev["eval"] / "confusion"
    assert (target / "confusion.png").is_file() and (target / "top_confusions.png").is_file()
    pairs = json.loads((target / "top_confusions.json").read_text())
    assert all(0 < p["fraction"] <= 1 and p["gt"] != p["pred"] for p in pairs)
    check_index(target, 2)


def test_confusion_many_classes_shows_the_top_confusions(tmp_path):
    from ctxseg.viz.confusion import plot_confusion, row_normalize, select_classes, top_confusions

    n = 150
    rng = np.random.default_rng(0)
    mat = np.diag(rng.integers(900, 1000, n)) + rng.integers(0, 3, (n, n))
    mat[17, 101] = 800  # a strong confusion the picture must show
    mat[40, 3] = 500
    classes = [f"class{i}" for i in range(n)]
    norm = row_normalize(mat)
    assert np.allclose(norm.sum(1), 1)
    chosen = select_classes(mat, 30)
    assert len(chosen) == 30 and {17, 101, 40, 3} <= set(chosen) and chosen == sorted(chosen)
    top = top_confusions(mat, classes, 2)
    assert [(t["gt"], t["pred"]) for t in top] == [("class17", "class101"), ("class40", "class3")]
    path = plot_confusion(mat, classes, tmp_path / "c.png", top=30)
    img = cv2.imread(str(path))
    assert img is not None and 700 <= img.shape[0] <= 2000  # legible: ~0.3 inch per class, not 150 crammed rows


def test_curves_overlay_two_runs(tmp_path):
    for run, lr0 in (("a", 0.01), ("b", 0.02)):
        (tmp_path / run).mkdir()
        recs = [
            {
                "step": s,
                "lr": lr0 * (1 - s / 40),
                "loss": 2 - s / 40,
                "loss_ce": 1.5 - s / 40,
                "loss_aux": 0.5,
                "time_per_iter": 0.1,
            }
            for s in range(10, 41, 10)
        ]
        recs.insert(2, {"step": 20, "val/mIoU": 0.3, "val/aAcc": 0.6, "val/mAcc": 0.4})
        (tmp_path / run / "log.jsonl").write_text(
            "\n".join(json.dumps(r) for r in recs) + '\n{"step": 4'
        )  # torn last line
    out = tmp_path / "curves"
    invoke(
        "viz", "curves", str(tmp_path / "a"), str(tmp_path / "b" / "log.jsonl"), "--smooth", "0.5", "--out", str(out)
    )
    names = {p.name for p in pngs(out)}
    assert {"curves.png", "loss.png", "loss_ce.png", "loss_aux.png", "lr.png", "val_mIoU.png"} <= names
    assert "time_per_iter.png" not in names
    check_index(out)


def test_palette_from_recipe_and_index(ev, tmp_path):
    out = tmp_path / "pal"
    invoke("viz", "palette", "--recipe", "demo", "--set", f"data.root='{ev['data']}'", "--out", str(out))
    img = cv2.imread(str(out / "palette.png"))
    assert img is not None and img.shape[0] > 8 * 20  # 7 classes + ignore, one row each
    # the swatch of class 1 has its palette colour
    meta = json.loads((ev["data"] / "meta.json").read_text())
    assert any((img == np.array(meta["palette"][1][::-1], np.uint8)).all(-1).ravel())
    check_index(out, 1)
    out2 = tmp_path / "pal2"
    invoke("viz", "palette", "--data-root", str(ev["data"]), "--out", str(out2))
    assert (out2 / "palette.png").is_file()


def test_palette_for_an_unprepared_dataset_with_many_classes(tmp_path):
    from ctxseg.viz.palette_img import palette_image

    img = palette_image([f"c{i}" for i in range(150)], [[i, i, i] for i in range(150)], 255, rows=40)
    assert img.shape[1] >= 4 * 230  # 151 entries -> 4 columns


def test_user_errors(ev):
    from ctxseg.errors import UserError

    with pytest.raises(UserError, match="exactly one"):
        invoke("viz", "palette")
    with pytest.raises(UserError, match="--images"):
        invoke("viz", "overlay", "--checkpoint", str(ev["ckpt"]))
    with pytest.raises(UserError, match="No training log"):
        invoke("viz", "curves", str(ev["tmp"] / "nowhere"))


def test_index_pages_render_in_headless_chromium(ev):
    """Every picture of an index.html loads in a real browser (file://, no server)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert browser, (
        "chromium is needed for this test: apt-get install -y --no-install-recommends chromium (.ci/run installs it)"
    )
    invoke("viz", "compare", "--limit", "3")
    folder = ev["eval"] / "compare"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (folder / "index.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    body = re.search(r'<body data-loaded="(\d+)" data-total="(\d+)"', proc.stdout)
    assert body, proc.stdout[:500] + proc.stderr[-2000:]
    assert body.group(1) == body.group(2) == "3"
    # a missing picture is reported as such
    (folder / pngs(folder)[0].relative_to(folder)).unlink()
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (folder / "index.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    body = re.search(r'<body data-loaded="(\d+)" data-total="(\d+)"', proc.stdout)
    assert body and body.group(1) == "2" and body.group(2) == "3"
