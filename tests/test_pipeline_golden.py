"""Training pipelines equal to the official ones, transform by transform, given the same random draws (issue 22 §1).

Data-driven over the case files of tests/golden_pipeline/cases (or $CTXSEG_PIPELINE_GOLDEN), written by
tests/golden_pipeline/generate.py from mmsegmentation 1.2.2's and sssegmentation 1.7.0's own transforms (see
tests/golden_pipeline/README.md). For every sample and step, ctxseg's step (`ctxseg.data.transforms.train_steps`
of the recipe the case stands for, its sizes shrunk as the case's) gets the official step's input and the official
draws (`RecordedDraws`: same kinds, bounds, order and count, or it fails) and must give the official output: labels
and uint8 images exactly (the same OpenCV does the resampling on both sides), the normalised image too. Then the
whole pipeline is run from the original sample through `SegDataset`'s own augmentation code path with all the
sample's draws and must give the official final tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ctxseg.config import load_recipe
from ctxseg.data import transforms as T
from ctxseg.data.prepare.lip import FLIP_PAIRS as LIP_FLIP_PAIRS

GOLDEN = Path(os.environ.get("CTXSEG_PIPELINE_GOLDEN", Path(__file__).parent / "golden_pipeline" / "cases"))
CASES = sorted(GOLDEN.glob("*.json"))
KINDS = ("integers", "uniform", "random")
# Both exact (measured: 0 on every case and step, seeds 0-3 and 7). uint8 images: the same OpenCV calls resample
# on both sides (see README: a golden from another OpenCV build could differ by a grey level). The normalised
# float32 image: both sides compute (x - mean) / std, or ssseg's (x - mean) * float32(1 / std), in float32;
# dividing where ssseg multiplies is one ulp (2.4e-7) off and must fail.
UINT8_MAX_DIFF = 0
IMAGE_ATOL = 0.0


def _meta(path: Path) -> dict:
    return json.loads(path.read_text())


def _official_settings(meta: dict) -> dict:
    """The official pipeline's settings, in ctxseg's DataConfig terms (from the case's json)."""
    out = {"rotate_prob": 0.0}
    for t in meta["official_pipeline"]:
        kind, c = (t["type"], t) if isinstance(t, dict) else t
        if kind == "RandomResize":
            out |= {"scale": tuple(c["scale"]), "ratio_range": tuple(c["ratio_range"]), "keep_ratio": c["keep_ratio"]}
        elif kind == "Resize" and "img_scale" in c:  # mmseg 0.x (the CAC fork); keep_ratio defaults to True
            out |= {"scale": tuple(c["img_scale"]), "ratio_range": tuple(c["ratio_range"])}
            out["keep_ratio"] = c.get("keep_ratio", True)
        elif kind == "Resize":  # ssseg
            out |= {"scale": tuple(c["output_size"]), "ratio_range": tuple(c["scale_range"])}
            out["keep_ratio"] = c["keep_ratio"]
        elif kind == "RandomCrop":
            out["crop_size"] = tuple(c["crop_size"])
            out["cat_max_ratio"] = c.get("cat_max_ratio", c.get("one_category_max_ratio", 1.0))
        elif kind == "RandomFlip":
            out["flip_prob"] = c["prob"]
            pairs = c.get("fixed_seg_target_pairs")
            if pairs:
                out["flip_pairs"] = sorted(tuple(sorted(p)) for p in pairs)
        elif kind == "RandomRotation":
            out |= {"rotate_prob": c["prob"], "rotate_degree": c["angle_upper"]}
        elif kind == "PhotoMetricDistortion":
            out["photometric"] = True
    out["pipeline"] = {"mmseg": "mmseg", "cac": "mmseg0", "ssseg": "ssseg"}[meta["code_base"]]
    return out


def _setup(meta: dict):
    """(the recipe's DataConfig with the case's shrunk sizes, flip pairs), checked against the official config."""
    data = load_recipe(meta["recipe"]).data
    pairs = data.flip_pairs if data.flip_pairs is not None else (LIP_FLIP_PAIRS if data.dataset == "lip" else None)
    official = _official_settings(meta)
    ours = {k: getattr(data, k) for k in official if k != "flip_pairs"}
    if "flip_pairs" in official:
        ours["flip_pairs"] = sorted(tuple(sorted(p)) for p in pairs)
    assert ours == official, f"recipe {meta['recipe']} differs from {meta['official_config']}"

    def shrink(v):
        return tuple(int(round(x / meta["shrink"])) for x in v)

    return data.model_copy(update={"scale": shrink(data.scale), "crop_size": shrink(data.crop_size)}), pairs


def _draws(z, key: str):
    kinds, vals = z[key + "_draws"], z[key + "_draw_vals"]
    return [(KINDS[k], lo, hi, v) for k, (lo, hi, v) in zip(kinds, vals, strict=True)]


def _compare(name: str, where: str, img, lab, ref_img, ref_lab) -> float:
    assert lab.shape == ref_lab.shape, f"{where}: label shape {lab.shape} != official {ref_lab.shape}"
    assert np.array_equal(lab, ref_lab), f"{where}: {(lab != ref_lab).sum()} label pixels differ"
    assert img.shape == ref_img.shape, f"{where}: image shape {img.shape} != official {ref_img.shape}"
    if name == "normalize_pad":
        assert img.dtype == np.float32
        diff = float(np.abs(img - ref_img).max())
        assert diff <= IMAGE_ATOL, f"{where}: normalised image off by {diff}"
    else:
        assert img.dtype == np.uint8
        diff = float(np.abs(img.astype(np.int16) - ref_img.astype(np.int16)).max())
        assert diff <= UINT8_MAX_DIFF, f"{where}: image off by {diff} grey levels"
    return diff


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_pipeline_matches_official(case: Path):
    meta = _meta(case)
    z = np.load(case.with_suffix(".npz"))
    cfg, pairs = _setup(meta)
    steps = T.train_steps(cfg, pairs)
    assert [n for n, _ in steps] == meta["steps"], "ctxseg's steps differ from the official pipeline's"
    worst = dict.fromkeys(meta["steps"], 0.0)
    for i in range(meta["samples"]):
        img, lab = z[f"s{i}_in_img"], z[f"s{i}_in_lab"]
        for k, (name, step) in enumerate(steps):
            rng = T.RecordedDraws(_draws(z, f"s{i}_{k}"))
            out_img, out_lab = step(img, lab, rng)
            rng.done()
            img, lab = z[f"s{i}_{k}_img"], z[f"s{i}_{k}_lab"]  # the next step starts from the official output
            where = f"{case.stem} sample {i} step {name}"
            worst[name] = max(worst[name], _compare(name, where, np.asarray(out_img), np.asarray(out_lab), img, lab))
    print(case.stem, "max differences per step:", worst)


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_dataset_augmentation_matches_official(case: Path):
    """The whole chain through SegDataset._augment (the training code path), all of a sample's draws in one."""
    from ctxseg.data.dataset import SegDataset

    meta = _meta(case)
    z = np.load(case.with_suffix(".npz"))
    cfg, pairs = _setup(meta)
    ds = SegDataset.__new__(SegDataset)  # no index on disk: only the augmentation is exercised
    ds.cfg, ds.train, ds.flip_pairs = cfg, True, pairs
    last = len(meta["steps"]) - 1
    for i in range(meta["samples"]):
        rng = T.RecordedDraws([d for k in range(last + 1) for d in _draws(z, f"s{i}_{k}")])
        out = ds._augment(z[f"s{i}_in_img"], z[f"s{i}_in_lab"], rng)
        rng.done()
        ref_img, ref_lab = z[f"s{i}_{last}_img"], z[f"s{i}_{last}_lab"]
        where = f"{case.stem} sample {i}"
        _compare("normalize_pad", where, out["image"].numpy(), out["label"].numpy(), ref_img, ref_lab)


def test_cases_present():
    assert CASES, f"no pipeline goldens under {GOLDEN}"


def test_recorded_draws_check_kind_bounds_and_count():
    rng = T.RecordedDraws([("integers", 0, 5, 3), ("random", 0, 1, 0.25), ("uniform", -32, 32, 7.5)])
    assert rng.integers(0, 5) == 3
    assert rng.uniform(0.5, 2.0) == 0.25 * 1.5 + 0.5  # a unit draw scaled as random_sample() * (hi - lo) + lo
    with pytest.raises(AssertionError, match="recorded uniform"):
        rng.uniform(-18, 18)
    rng = T.RecordedDraws([("integers", -18, 18, 4)])
    with pytest.raises(AssertionError, match="integers"):
        rng.integers(-18, 19)  # the bounds are part of the draw
    with pytest.raises(AssertionError, match="not consumed"):
        T.RecordedDraws([("random", 0, 1, 0.5)]).done()
