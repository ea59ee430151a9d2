"""Cityscapes: extracted folders (labelIds PNGs and a polygons-only sample) and the official zips."""

from __future__ import annotations

import json
import zipfile

import numpy as np
from cityscapesscripts.helpers.labels import labels as cs_labels

from tests.test_prepare_common import (
    assert_no_copied_images,
    prepare_twice,
    read_back,
    split_lines,
    write_gray,
    write_image,
)

H, W = 6, 10
ID2TRAIN = {l.id: (l.trainId if 0 <= l.trainId < 255 else 255) for l in cs_labels if l.id >= 0}
CITIES = {"train": "aachen", "val": "frankfurt", "test": "berlin"}


def expected_trainids(ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: ID2TRAIN.get(int(v), 255))(ids).astype(np.uint8)


def make_cityscapes(root, n_per_split=2, polygons_for=None):
    """leftImg8bit/ + gtFine/ as extracted from the official zips; returns {stem: labelIds}."""
    rng = np.random.default_rng(0)
    gts = {}
    for split, city in CITIES.items():
        for k in range(n_per_split):
            stem = f"{city}_{k:06d}_{19 + k:06d}"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", H, W, k)
            ids = rng.integers(0, 34, (H, W)).astype(np.uint8)
            gdir = root / "gtFine" / split / city
            if stem == polygons_for:
                gdir.mkdir(parents=True, exist_ok=True)
                objects = [
                    {"label": "road", "polygon": [[0, 0], [9, 0], [9, 5], [0, 5]]},
                    {"label": "car", "polygon": [[2, 1], [5, 1], [5, 3], [2, 3]]},
                    {"label": "license plate", "polygon": [[3, 2], [4, 2], [4, 2], [3, 2]]},
                    {"label": "person", "polygon": [[7, 4], [8, 4], [8, 5], [7, 5]], "deleted": 1},
                ]
                (gdir / f"{stem}_gtFine_polygons.json").write_text(
                    json.dumps({"imgHeight": H, "imgWidth": W, "objects": objects})
                )
                ids = np.full((H, W), 7, np.uint8)  # road everywhere, car box on top; the plate (id -1) is not drawn
                ids[1:4, 2:6] = 26
            else:
                write_gray(gdir / f"{stem}_gtFine_labelIds.png", ids)
                write_gray(gdir / f"{stem}_gtFine_color.png", ids)  # other official files are ignored
            gts[(split, stem)] = ids
    return gts


def test_prepare_cityscapes_folders(tmp_path, monkeypatch, capsys):
    root = tmp_path / "raw"
    gts = make_cityscapes(root, polygons_for="aachen_000001_000020")
    out = tmp_path / "cs"
    meta, _ = prepare_twice("cityscapes", root, out, monkeypatch, capsys, subprocess=True)
    assert meta["num_classes"] == 19 and meta["classes"][:3] == ["road", "sidewalk", "building"]
    assert meta["palette"][0] == [128, 64, 128] and meta["ignore_index"] == 255
    assert meta["splits"] == {"train": 2, "val": 2, "test": 2, "trainval": 4}
    assert split_lines(out, "trainval") == split_lines(out, "train") + split_lines(out, "val")
    assert meta["official_splits"] == {"train": 2975, "val": 500, "test": 1525}
    assert meta["image_root"] == str(root.resolve())
    for split in ("train", "val"):
        for img, lab in split_lines(out, split):
            stem = img.split("/")[-1][: -len("_leftImg8bit.png")]
            assert lab == f"gtFine/{split}/{CITIES[split]}/{stem}_gtFine_labelTrainIds.png"
            got = read_back(out, meta, "label_root", lab)
            assert np.array_equal(got, expected_trainids(gts[(split, stem)])), (split, stem)
    assert [len(ln) for ln in split_lines(out, "test")] == [1, 1]  # test images have no labels
    counts = sum(
        np.bincount(v[v < 255], minlength=19)
        for v in (expected_trainids(gts[("train", s)]) for s in ("aachen_000000_000019", "aachen_000001_000020"))
    )
    assert meta["class_pixel_counts"] == counts.tolist()
    assert_no_copied_images(out)


def test_prepare_cityscapes_zips(tmp_path, monkeypatch, capsys):
    staging = tmp_path / "staging"
    gts = make_cityscapes(staging)
    root = tmp_path / "raw"
    root.mkdir()
    for name, top in (("leftImg8bit_trainvaltest.zip", "leftImg8bit"), ("gtFine_trainvaltest.zip", "gtFine")):
        with zipfile.ZipFile(root / name, "w") as z:
            z.writestr("README", "official archives carry a README and license")
            for p in sorted((staging / top).rglob("*")):
                if p.is_file():
                    z.write(p, p.relative_to(staging).as_posix())
    out = tmp_path / "cs"
    meta, _ = prepare_twice("cityscapes", root, out, monkeypatch, capsys, workers=1)
    assert meta["image_root"] == "raw" and meta["splits"] == {"train": 2, "val": 2, "test": 2, "trainval": 4}
    for split in ("train", "val"):
        for img, lab in split_lines(out, split):
            assert (out / "raw" / img).is_file()
            stem = img.split("/")[-1][: -len("_leftImg8bit.png")]
            assert np.array_equal(read_back(out, meta, "label_root", lab), expected_trainids(gts[(split, stem)]))
