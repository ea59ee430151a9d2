"""ADE20K: ADEChallengeData2016 layout; labels in place with reduce_zero_label."""

from __future__ import annotations

import numpy as np

from ctxseg.data.dataset import reduce_zero_label
from tests.test_prepare_common import (
    assert_no_copied_images,
    prepare_twice,
    read_back,
    split_lines,
    write_gray,
    write_image,
)


def test_prepare_ade20k(tmp_path, monkeypatch, capsys):
    root = tmp_path / "raw"
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(1)
    labs = {}
    for folder, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in (1, 2, 3):
            name = f"{prefix}_{i:08d}"
            write_image(base / "images" / folder / f"{name}.jpg", 5, 7, i)
            labs[name] = rng.integers(0, 151, (5, 7)).astype(np.uint8)
            write_gray(base / "annotations" / folder / f"{name}.png", labs[name])
    write_image(base / "images" / "training" / "ADE_train_00000099.jpg")  # no annotation: left out, reported
    out = tmp_path / "ade"
    meta, stdout = prepare_twice("ade20k", root, out, monkeypatch, capsys)
    assert "ADE_train_00000099" in stdout
    assert (
        meta["num_classes"] == 150
        and meta["reduce_zero_label"] is True
        and meta["classes"][:3] == ["wall", "building", "sky"]
    )
    assert meta["splits"] == {"train": 3, "val": 3, "trainval": 6} and meta["official_splits"] == {
        "train": 20210,
        "val": 2000,
    }
    lines = split_lines(out, "val")
    assert lines[0] == ["images/validation/ADE_val_00000001.jpg", "annotations/validation/ADE_val_00000001.png"]
    assert np.array_equal(read_back(out, meta, "label_root", lines[0][1]), labs["ADE_val_00000001"])
    # counts are per training class, after 0 -> ignore and k -> k-1
    expect = np.zeros(150, np.int64)
    for i in (1, 2, 3):
        r = reduce_zero_label(labs[f"ADE_train_{i:08d}"])
        expect += np.bincount(r[r != 255], minlength=150)
    assert meta["class_pixel_counts"] == expect.tolist()
    assert_no_copied_images(out)
