"""COCO-Stuff 10k (.mat, imageLists) and 164k (stuffthingmaps PNGs): the 182 -> 171 mapping."""

from __future__ import annotations

import numpy as np
import scipy.io

from tests.test_prepare_common import (
    assert_no_copied_images,
    prepare_twice,
    read_back,
    split_lines,
    write_gray,
    write_image,
)

UNUSED_0BASED = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]


def expected_164k(v: int) -> int:
    """Independent restatement of the mapping: drop the 11 unused thing ids, keep the order."""
    if v == 255 or v in UNUSED_0BASED or v > 181:
        return 255
    return v - sum(u < v for u in UNUSED_0BASED)


def test_mapping_spot_values():
    from ctxseg.data.prepare.cocostuff import lut_10k, lut_164k

    assert [int(lut_164k()[v]) for v in (0, 10, 12, 90, 91, 181, 255)] == [0, 10, 11, 255, 80, 170, 255]
    assert [int(lut_10k()[v]) for v in (0, 1, 11, 12, 13, 92, 182)] == [0, 1, 11, 0, 12, 81, 171]
    assert sorted(set(lut_164k()[:182].tolist()) - {255}) == list(range(171))


def test_prepare_cocostuff10k(tmp_path, monkeypatch, capsys):
    root = tmp_path / "cocostuff-10k-v1.1"
    rng = np.random.default_rng(2)
    names = {
        "train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
        "test": ["COCO_train2014_000000000080"],
    }
    raw = {}
    for split, ids in names.items():
        (root / "imageLists").mkdir(parents=True, exist_ok=True)
        (root / "imageLists" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for k, n in enumerate(ids):
            write_image(root / "images" / f"{n}.jpg", 4, 6, k)
            s = rng.integers(0, 183, (4, 6)).astype(np.uint16)
            s[0, :2] = [12, 91]  # unused thing ids -> unlabeled
            raw[n] = s
            (root / "annotations").mkdir(exist_ok=True)
            scipy.io.savemat(
                root / "annotations" / f"{n}.mat",
                {"S": s, "names": np.array(["x"], dtype=object), "captions": np.array(["a"], dtype=object)},
            )
    (root / "imageLists" / "all.txt").write_text("\n".join(names["train"] + names["test"]) + "\n")
    out = tmp_path / "c10k"
    meta, _ = prepare_twice("coco-stuff10k", root, out, monkeypatch, capsys)
    assert meta["num_classes"] == 171 and meta["reduce_zero_label"] is True
    assert meta["splits"] == {"train": 2, "test": 1} and meta["official_splits"] == {"train": 9000, "test": 1000}
    for split in names:
        for img, lab in split_lines(out, split):
            n = img.split("/")[-1][:-4]
            got = read_back(out, meta, "label_root", lab)
            exp = np.vectorize(
                lambda v: 0 if v == 0 else (expected_164k(v - 1) + 1 if expected_164k(v - 1) != 255 else 0)
            )(raw[n])
            assert np.array_equal(got, exp.astype(np.uint8))
            assert got[0, 0] == 0 and got[0, 1] == 0
    assert_no_copied_images(out)


def test_prepare_cocostuff164k(tmp_path, monkeypatch, capsys):
    root = tmp_path / "coco_stuff164k"
    rng = np.random.default_rng(4)
    raw = {}
    for split, ids in {"train": ["000000000009", "000000000025"], "val": ["000000000139"]}.items():
        for k, n in enumerate(ids):
            write_image(root / "images" / f"{split}2017" / f"{n}.jpg", 5, 4, k)
            lab = rng.choice(np.r_[np.arange(182), 255], (5, 4)).astype(np.uint8)
            lab[0, :3] = [11, 181, 255]
            raw[n] = lab
            write_gray(root / "annotations" / f"{split}2017" / f"{n}.png", lab)
    out = tmp_path / "c164k"
    meta, _ = prepare_twice("coco-stuff164k", root, out, monkeypatch, capsys)
    assert meta["num_classes"] == 171 and meta["reduce_zero_label"] is False
    assert meta["classes"][80] == "banner" and meta["classes"][-1] == "wood"
    assert meta["splits"] == {"train": 2, "val": 1, "trainval": 3}
    for split in ("train", "val"):
        for img, lab in split_lines(out, split):
            n = img.split("/")[-1][:-4]
            got = read_back(out, meta, "label_root", lab)
            assert np.array_equal(got, np.vectorize(expected_164k)(raw[n]).astype(np.uint8))
            assert got[0, :3].tolist() == [255, 170, 255]
