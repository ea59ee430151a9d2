"""`ctxseg eval --predictions DIR`: scoring label PNGs without a model; on Cityscapes it equals the
official cityscapesscripts evalPixelLevelSemanticLabeling (every class IoU and the mean, 1e-6)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cs_labels

from ctxseg.data.dataset import reduce_zero_label
from tests.test_prepare_cityscapes import make_cityscapes
from tests.test_prepare_common import cli_inproc, write_gray, write_image

ID2TRAIN = np.full(256, 255, np.uint8)
for _l in cs_labels:
    if 0 <= _l.id < 256 and 0 <= _l.trainId < 255:
        ID2TRAIN[_l.id] = _l.trainId


def official_cityscapes_eval(pred_dir, gt_files):
    """cityscapesscripts' own evaluation. 2.3.0 still calls np.in1d, removed in numpy 2: shimmed here,
    in the test, never in site-packages."""
    if not hasattr(np, "in1d"):
        np.in1d = lambda a, b, invert=False: np.isin(np.asarray(a).ravel(), b, invert=invert)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    ev.args.quiet = True
    ev.args.JSONOutput = False
    ev.args.evalInstLevelScore = True
    ev.args.predictionPath = str(pred_dir)
    ev.args.predictionWalk = None
    preds = [ev.getPrediction(ev.args, str(g)) for g in gt_files]
    return ev.evaluateImgLists(preds, [str(g) for g in gt_files], ev.args)


@pytest.fixture
def cityscapes_index(tmp_path, monkeypatch, capsys):
    root = tmp_path / "raw"
    gts = make_cityscapes(root, n_per_split=3)
    for (split, stem), ids in gts.items():  # the official eval also opens *_instanceIds.png
        city = stem.split("_")[0]
        write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", ids)
    code, text = cli_inproc(
        "prepare",
        "cityscapes",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "cs"),
        "--workers",
        "1",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, text
    return root, tmp_path / "cs", gts


def test_cityscapes_submission_equals_official_evaluation(cityscapes_index, tmp_path, monkeypatch, capsys):
    root, index, gts = cityscapes_index
    rng = np.random.default_rng(11)
    submit = tmp_path / "submit"  # flat labelIds PNGs, as `ctxseg predict --format cityscapes` writes them
    nested = tmp_path / "preds"  # trainIds at <sample name>.png, as `ctxseg eval --save-preds` writes them
    val = sorted((s, ids) for (split, s), ids in gts.items() if split == "val")
    for stem, ids in val:
        pred = np.where(rng.random(ids.shape) < 0.55, ids, rng.integers(0, 34, ids.shape)).astype(np.uint8)
        write_gray(submit / f"{stem}_leftImg8bit.png", pred)
        write_gray(nested / "leftImg8bit" / "val" / "frankfurt" / f"{stem}_leftImg8bit.png", ID2TRAIN[pred])
    assert (ID2TRAIN[np.stack([cv for _, cv in val])] == 255).any()  # void ids predicted on valid pixels: misses
    code, text = cli_inproc(
        "eval",
        "--predictions",
        str(submit),
        "--format",
        "cityscapes",
        "--data-root",
        str(index),
        "--out",
        str(tmp_path / "e1"),
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0 and "mIoU" in text, text
    ours = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    gt_files = sorted((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    official = official_cityscapes_eval(submit, gt_files)
    assert ours["num_images"] == len(gt_files) == 3 and ours["split"] == "val"
    assert abs(ours["mIoU"] - official["averageScoreClasses"]) < 1e-6
    for name, iou in ours["IoU"].items():
        ref = official["classScores"][name]
        assert (iou is None and math.isnan(ref)) or abs(iou - ref) < 1e-6, (name, iou, ref)
    # the same predictions as trainIds (void -> 255) in eval's nested layout: identical numbers
    code, text = cli_inproc(
        "eval",
        "--predictions",
        str(nested),
        "--data-root",
        str(index),
        "--split",
        "val",
        "--out",
        str(tmp_path / "e2"),
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, text
    again = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert again["IoU"] == ours["IoU"] and again["confusion_matrix"] == ours["confusion_matrix"]
    assert sum(again["predicted_outside_classes"]) > 0


def test_prediction_errors_are_user_errors(cityscapes_index, tmp_path, monkeypatch, capsys):
    _, index, gts = cityscapes_index
    preds = tmp_path / "p"
    stems = sorted(s for (split, s) in gts if split == "val")
    for stem in stems[:2]:
        write_gray(preds / f"{stem}_leftImg8bit.png", np.zeros((6, 10), np.uint8))
    code, text = cli_inproc(
        "eval", "--predictions", str(preds), "--data-root", str(index), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "1 of 3" in text and stems[2] in text and "Traceback" not in text, text
    write_gray(preds / f"{stems[2]}_leftImg8bit.png", np.zeros((6, 11), np.uint8))  # wrong size
    code, text = cli_inproc(
        "eval", "--predictions", str(preds), "--data-root", str(index), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "11x6" in text, text
    write_image(preds / f"{stems[2]}_leftImg8bit.png", 6, 10)  # a colour image, not class ids
    code, text = cli_inproc(
        "eval", "--predictions", str(preds), "--data-root", str(index), monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and "single-channel" in text, text
    code, text = cli_inproc("eval", "--predictions", str(preds), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 2 and "--data-root" in text, text


def test_reduce_zero_label_index_scored_as_evaluation_sees_it(tmp_path, monkeypatch, capsys):
    """ADE20K (labels in place, reduce_zero_label): a prediction equal to the label after the shift scores 1.0;
    matched by file stem in a flat folder."""
    base = tmp_path / "raw" / "ADEChallengeData2016"
    rng = np.random.default_rng(3)
    labs = {}
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in (1, 2):
            name = f"{prefix}_{i:08d}"
            write_image(base / "images" / folder / f"{name}.jpg", 5, 7, i)
            labs[name] = rng.integers(0, 151, (5, 7)).astype(np.uint8)
            write_gray(base / "annotations" / folder / f"{name}.png", labs[name])
    code, text = cli_inproc(
        "prepare",
        "ade20k",
        "--root",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "ade"),
        "--workers",
        "1",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, text
    for name in ("ADE_val_00000001", "ADE_val_00000002"):
        write_gray(tmp_path / "p" / f"{name}.png", reduce_zero_label(labs[name]).astype(np.uint8))
    code, text = cli_inproc(
        "eval",
        "--predictions",
        str(tmp_path / "p"),
        "--data-root",
        str(tmp_path / "ade"),
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, text
    m = json.loads((tmp_path / "p_eval" / "metrics.json").read_text())
    assert m["mIoU"] == 1.0 and m["aAcc"] == 1.0 and len(m["IoU"]) == 150
