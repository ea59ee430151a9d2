"""Evaluation protocols of the real datasets: Cityscapes official scoring, mmseg ignore /
reduce-zero-label semantics, LIP flip pairs in training and flip TTA, samplers, class weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import labels as cs_labels

from ctxseg.data.dataset import TrainBatchSampler, reduce_zero_label
from ctxseg.metrics import ConfusionMatrix
from tests.test_prepare_common import write_gray

# --------------------------------------------------------------------------------------------
# Cityscapes: ctxseg eval == cityscapesscripts' evalPixelLevelSemanticLabeling


def test_cityscapes_export_matches_official_evaluation(tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official

    from ctxseg.data.prepare import SUBMISSION_FORMATS
    from ctxseg.data.prepare.cityscapes import convert_labelids

    rng = np.random.default_rng(0)
    valid_ids = [l.id for l in cs_labels if l.id >= 0]
    cm = ConfusionMatrix(19, 255)
    gt_files, pred_files = [], []
    pred_dir = tmp_path / "results"
    for k, city in enumerate(["frankfurt", "lindau", "munster"]):
        stem = f"{city}_{k:06d}_{k + 19:06d}"
        gt_ids = rng.choice(valid_ids, (24, 40)).astype(np.uint8)
        gt_ids[:4] = 0  # a band of 'unlabeled'
        gt_path = tmp_path / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png"
        write_gray(gt_path, gt_ids)
        gt_train = convert_labelids(str(gt_path))  # what `ctxseg prepare cityscapes` writes
        # predictions: mostly right, some noise, one class never predicted, one never in GT
        pred = np.where(rng.random(gt_train.shape) < 0.6, gt_train, rng.integers(0, 19, gt_train.shape))
        pred = np.where(pred == 255, rng.integers(0, 19, gt_train.shape), pred).astype(np.uint8)
        pred[pred == 5] = 6
        cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt_train.astype(np.int64)))
        name, encoded = SUBMISSION_FORMATS["cityscapes"](Path("leftImg8bit/val") / city / f"{stem}_leftImg8bit", pred)
        assert name == f"{stem}_leftImg8bit.png"
        write_gray(pred_dir / name, encoded)
        gt_files.append(str(gt_path))
        pred_files.append(str(pred_dir / name))

    ours = cm.summary()["mIoU"]
    args = official.args
    args.predictionPath, args.predictionWalk = str(pred_dir), None
    args.evalInstLevelScore, args.JSONOutput, args.quiet = False, False, True
    preds = [official.getPrediction(args, g) for g in gt_files]  # the server's file-name matching
    assert preds == pred_files
    result = official.evaluateImgLists(preds, gt_files, args)
    assert abs(result["averageScoreClasses"] - ours) < 1e-6
    per_class = cm.summary(
        [l.name for l in sorted((l for l in cs_labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)]
    )
    for name, score in result["classScores"].items():
        if name in per_class["per_class"]:
            mine = per_class["per_class"][name]["IoU"]
            assert (mine is None and math.isnan(score)) or abs(mine - score) < 1e-9, name


def test_cityscapes_submission_rejects_foreign_names():
    from ctxseg.data.prepare import SUBMISSION_FORMATS
    from ctxseg.errors import UserError

    with pytest.raises(UserError, match="Cityscapes file names"):
        SUBMISSION_FORMATS["cityscapes"]("street", np.zeros((2, 2), np.uint8))


# --------------------------------------------------------------------------------------------
# ADE20K / COCO-Stuff-10k / PASCAL-Context-59: reduce_zero_label + ignore, vs independent code


def mmseg_style_iou(pred: np.ndarray, raw: np.ndarray, num_classes: int, reduce_zero: bool, ignore: int = 255):
    """An independent per-class loop restating mmseg's intersect_and_union."""
    gt = raw.astype(np.int64).copy()
    if reduce_zero:  # mmseg LoadAnnotations: 0 -> 255, -1, 254 -> 255 (so raw 255 stays ignore)
        gt[gt == 0] = 255
        gt = gt - 1
        gt[gt == 254] = 255
    keep = gt != ignore
    p, g = pred[keep], gt[keep]
    ious = []
    for c in range(num_classes):
        inter = np.sum((p == c) & (g == c))
        union = np.sum(p == c) + np.sum(g == c) - inter
        ious.append(inter / union if union else np.nan)
    return np.array(ious)


@pytest.mark.parametrize(
    "num_classes,reduce_zero,raw_max",
    [(150, True, 150), (171, True, 171), (59, True, 59), (171, False, 170), (60, False, 59)],
)
def test_reduce_zero_label_iou_matches_independent(num_classes, reduce_zero, raw_max):
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(num_classes)
    raws = [rng.integers(0, raw_max + 1, (16, 20)).astype(np.uint8) for _ in range(3)]
    for r in raws:
        r[rng.random(r.shape) < 0.1] = 255  # explicit ignore pixels too
    preds = [rng.integers(0, num_classes, r.shape) for r in raws]
    cm = ConfusionMatrix(num_classes, 255)
    for r, p in zip(raws, preds):
        gt = reduce_zero_label(r) if reduce_zero else r.astype(np.int64)
        cm.update(torch.from_numpy(p), torch.from_numpy(np.asarray(gt, np.int64)))
    ours = np.array([np.nan if v["IoU"] is None else v["IoU"] for v in cm.summary()["per_class"].values()])
    ref = mmseg_style_iou(
        np.concatenate([p.ravel() for p in preds]), np.concatenate([r.ravel() for r in raws]), num_classes, reduce_zero
    )
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, equal_nan=True)
    tm = MulticlassJaccardIndex(num_classes=num_classes, ignore_index=255, average="none")
    for r, p in zip(raws, preds):
        gt = reduce_zero_label(r) if reduce_zero else r.astype(np.int64)
        tm.update(torch.from_numpy(p), torch.from_numpy(np.asarray(gt, np.int64)))
    tmv = tm.compute().double().numpy()
    present = ~np.isnan(ref)
    np.testing.assert_allclose(ours[present], tmv[present], atol=1e-6)
    assert abs(cm.summary()["mIoU"] - np.nanmean(ref)) < 1e-12


# --------------------------------------------------------------------------------------------
# LIP: flip pairs in training flips and in flip TTA

LIP_PAIRS = [(14, 15), (16, 17), (18, 19)]


def test_training_flip_swaps_lip_pairs():
    from ctxseg.data.transforms import random_flip

    lab = np.zeros((4, 8), np.uint8)
    lab[:, 5:] = 14  # person's left arm appears on the image's right
    lab[:, :2] = 17
    lab[0, 0] = 255
    img = np.zeros((4, 8, 3), np.uint8)

    class AlwaysFlip:
        def random(self):
            return 0.0

    _, flipped = random_flip(img, lab, 1.0, LIP_PAIRS, AlwaysFlip())
    expect = np.zeros((4, 8), np.uint8)
    expect[:, :3] = 15  # after a mirror it is a right arm, on the left
    expect[:, 6:] = 16
    expect[0, 7] = 255
    assert np.array_equal(flipped, expect)
    _, twice = random_flip(img, flipped, 1.0, LIP_PAIRS, AlwaysFlip())
    assert np.array_equal(twice, lab)


def test_dataset_and_eval_take_flip_pairs_from_meta(tmp_path, monkeypatch, capsys):
    from ctxseg.config import DataConfig
    from ctxseg.data.dataset import SegDataset
    from ctxseg.data.index import PreparedIndex
    from tests.test_prepare_common import cli_inproc
    from tests.test_prepare_lip import make_lip

    root = make_lip(tmp_path / "raw")
    code, text = cli_inproc(
        "prepare",
        "lip",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "lip"),
        "--workers",
        "1",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, text
    index = PreparedIndex.open(tmp_path / "lip")
    ds = SegDataset(index, "val", DataConfig(root=str(tmp_path / "lip"), num_classes=20), train=False)
    assert ds.flip_pairs == LIP_PAIRS  # evaluate() passes ds.flip_pairs to infer()
    override = SegDataset(index, "val", DataConfig(num_classes=20, flip_pairs=[]), train=False)
    assert override.flip_pairs == []


class SideModel(torch.nn.Module):
    """A 'parser' that calls the image's right half the person's left arm (a person facing the
    camera): exactly the left/right semantics a flip must respect."""

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros(n, 20, h, w)
        logits[:, 14, :, w // 2 :] = 5.0
        logits[:, 15, :, : w // 2] = 5.0
        logits[:, 2] = x[:, 0]  # some content-dependent channel
        return {"logits": logits}


def test_flip_tta_swaps_lip_channels():
    from ctxseg.engine.inference import flip_scores, infer
    from ctxseg.engine.settings import InferenceSettings

    model = SideModel()
    x = torch.randn(1, 3, 6, 8)
    plain = infer(model, x, InferenceSettings(20))
    tta = infer(model, x, InferenceSettings(20, flip=True, flip_pairs=LIP_PAIRS))
    assert torch.equal(tta.argmax(1), plain.argmax(1))
    no_swap = infer(model, x, InferenceSettings(20, flip=True, flip_pairs=()))
    assert not torch.equal(no_swap.argmax(1), plain.argmax(1))  # without the swap, arms are confused
    s = torch.randn(2, 20, 3, 5)
    swapped = s.flip(-1)[:, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15, 14, 17, 16, 19, 18]]
    assert torch.equal(flip_scores(swapped, LIP_PAIRS), s)


# --------------------------------------------------------------------------------------------
# samplers and class weights


def test_repeat_factor_and_class_balanced_weights():
    from ctxseg.data.sampling import class_balanced_factors, repeat_factors

    presence = np.zeros((10, 3), bool)
    presence[:, 0] = True  # everywhere
    presence[:2, 1] = True  # 20 % of images
    presence[9, 2] = True  # 10 %
    r = repeat_factors(presence, thresh=0.4)
    np.testing.assert_allclose(r[:2], math.sqrt(0.4 / 0.2))
    np.testing.assert_allclose(r[2:9], 1.0)
    np.testing.assert_allclose(r[9], 2.0)
    w = class_balanced_factors(presence)
    assert abs(w.sum() - 10) < 1e-9 and w[9] > w[0] > w[5]
    # expected draws per class are equalised: sum over images containing c of w_i / n_c ... rarest classes up-weighted
    per_class = (presence * w[:, None]).sum(0)
    assert per_class[2] >= 1.0 and per_class[1] >= 1.0


def test_sample_weights_use_prepare_presence(tmp_path, monkeypatch, capsys):
    from ctxseg.config import DataConfig
    from ctxseg.data.dataset import SegDataset
    from ctxseg.data.index import PreparedIndex
    from ctxseg.data.sampling import class_presence, sample_weights
    from tests.test_prepare_common import cli_inproc
    from tests.test_prepare_lip import make_lip

    root = make_lip(tmp_path / "raw")
    code, text = cli_inproc(
        "prepare",
        "lip",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "lip"),
        "--workers",
        "1",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, text
    index = PreparedIndex.open(tmp_path / "lip")
    cfg = DataConfig(root=str(tmp_path / "lip"), num_classes=20, sampler="repeat_factor", repeat_thresh=0.9)
    ds = SegDataset(index, "train", cfg, train=True)
    from_file = class_presence(index, ds, cfg)
    (tmp_path / "lip" / "class_presence.npy").unlink()  # fallback: scan the labels
    assert np.array_equal(class_presence(index, ds, cfg), from_file)
    w = sample_weights(index, ds, cfg)
    assert w.shape == (2,) and np.all(w >= 1)


def test_weighted_sampler_is_deterministic_and_fast():
    w = np.array([1.0, 2.5, 0.3, 1.0])
    s = TrainBatchSampler(4, 2, seed=3, weights=w)
    it = iter(s)
    first = [next(it) for _ in range(200)]
    # resuming at any batch reproduces the stream (cumulative epoch lengths, no re-walk)
    resumed = TrainBatchSampler(4, 2, seed=3, start_batch=150, weights=w)
    assert next(iter(resumed)) == first[150]
    # reference: walk epochs explicitly as the stochastic-rounding definition says
    stream = []
    e = 0
    while len(stream) < 400:
        rng = np.random.default_rng([3, e])
        reps = np.floor(w + rng.random(4)).astype(np.int64)
        stream += rng.permutation(np.repeat(np.arange(4), reps)).tolist()
        e += 1
    assert [i for b in first for i, _ in b] == stream[:400]
    counts = np.bincount(stream[:400], minlength=4) / 400
    assert counts[1] > counts[0] > counts[2]
    far = TrainBatchSampler(1000, 2, seed=0, start_batch=200_000, weights=np.full(1000, 1.5))
    assert len(next(iter(far))) == 2


def test_class_weight_options():
    """ctxseg's inverse_log_freq is ENet's 1/ln(1.02 + p) normalised to mean 1; openseg's Cityscapes
    list is a fixed table (not reproduced by that formula) and is given as an explicit list."""
    from ctxseg.losses import inverse_log_frequency

    counts = [700, 200, 100]
    w = inverse_log_frequency(counts)
    raw = [1 / math.log(1.02 + c / 1000) for c in counts]
    np.testing.assert_allclose(w, [x / (sum(raw) / 3) for x in raw])
    text = (Path(__file__).resolve().parents[1] / "recipes" / "_base" / "cityscapes.toml").read_text()
    assert "0.8373, 0.918, 0.866, 1.0345" in text


# --------------------------------------------------------------------------------------------
# base recipes carry each dataset's protocol


@pytest.mark.parametrize(
    "name,dataset,num_classes,mode",
    [
        ("cityscapes", "cityscapes", 19, "whole"),
        ("ade20k", "ade20k", 150, "whole"),
        ("cocostuff10k", "coco-stuff10k", 171, "whole"),
        ("cocostuff164k", "coco-stuff164k", 171, "whole"),
        ("voc_aug", "voc-aug", 21, "whole"),
        ("pascal_context", "pascal-context", 59, "slide"),
        ("pascal_context60", "pascal-context-60", 60, "slide"),
        ("lip", "lip", 20, "whole"),
        ("camvid", "camvid", 11, "whole"),
    ],
)
def test_base_recipes(name, dataset, num_classes, mode):
    import tomllib

    from ctxseg.config import DataConfig, EvalConfig
    from ctxseg.data.prepare import PREPARERS

    raw = tomllib.loads((Path(__file__).resolve().parents[1] / "recipes" / "_base" / f"{name}.toml").read_text())
    data, ev = DataConfig(**raw["data"]), EvalConfig(**raw.get("eval", {}))
    assert data.dataset == dataset and dataset in PREPARERS and data.num_classes == num_classes and ev.mode == mode
    assert ev.ms_scales == ([1.0] if name == "lip" else [0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
    if name == "lip":  # ssseg lip_473x473: stretched test resize; flip is the separate --flip protocol
        assert (
            not ev.flip and not ev.keep_ratio and ev.resize == (473, 473) and data.flip_pairs is None
        )  # pairs from meta.json
    if name in ("ade20k", "cocostuff10k", "pascal_context"):
        assert data.reduce_zero_label
