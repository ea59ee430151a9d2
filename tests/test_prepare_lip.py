"""LIP: raw layout of TrainVal_images.zip / TrainVal_parsing_annotations.zip, flip pairs in meta."""

from __future__ import annotations

import numpy as np

from ctxseg.data.index import PreparedIndex
from tests.test_prepare_common import prepare_twice, read_back, split_lines, write_gray, write_image


def make_lip(root):
    rng = np.random.default_rng(3)
    for split, ids in {"train": ["100034_483681", "100035_11"], "val": ["val_a", "val_b"]}.items():
        (root / "TrainVal_images").mkdir(parents=True, exist_ok=True)
        (root / "TrainVal_images" / f"{split}_id.txt").write_text("\n".join(ids) + "\n")
        for k, i in enumerate(ids):
            write_image(root / "TrainVal_images" / f"{split}_images" / f"{i}.jpg", 6, 5, k)
            write_gray(
                root / "TrainVal_parsing_annotations" / f"{split}_segmentations" / f"{i}.png",
                rng.integers(0, 20, (6, 5)).astype(np.uint8),
            )
    return root


def test_prepare_lip(tmp_path, monkeypatch, capsys):
    root = make_lip(tmp_path / "raw")
    out = tmp_path / "lip"
    meta, _ = prepare_twice("lip", root, out, monkeypatch, capsys)
    assert meta["num_classes"] == 20 and meta["ignore_index"] == 255 and not meta["reduce_zero_label"]
    assert meta["classes"][14:] == ["left-arm", "right-arm", "left-leg", "right-leg", "left-shoe", "right-shoe"]
    assert meta["flip_pairs"] == [[14, 15], [16, 17], [18, 19]]
    assert meta["splits"] == {"train": 2, "val": 2, "trainval": 4} and meta["official_splits"] == {
        "train": 30462,
        "val": 10000,
    }
    lines = split_lines(out, "train")
    assert lines[0] == [
        "TrainVal_images/train_images/100034_483681.jpg",
        "TrainVal_parsing_annotations/train_segmentations/100034_483681.png",
    ]
    # labels are used in place: the index reads the raw PNG, value for value
    raw = read_back(root, {"r": str(root)}, "r", lines[0][1])
    assert np.array_equal(read_back(out, meta, "label_root", lines[0][1]), raw)
    counts = sum(np.bincount(read_back(out, meta, "label_root", ln[1]).ravel(), minlength=20) for ln in lines)
    assert meta["class_pixel_counts"] == counts.tolist()
    assert PreparedIndex.open(out).flip_pairs == [(14, 15), (16, 17), (18, 19)]
    presence = np.load(out / meta["class_presence"])
    assert presence.shape == (2, 20)


def make_lip_flat(root, with_ids: bool = True):
    """The flat LIP/ folder of mmsegmentation's docs and sssegmentation's LIP.tar.gz:
    LIP/{train,val}_images, LIP/{train,val}_segmentations, LIP/{train,val}_id.txt (sssegmentation)."""
    rng = np.random.default_rng(4)
    base = root / "LIP"
    labs = {}
    for split, ids in {"train": ["1000_1234574", "100035_11", "77_9"], "val": ["100034_483681"]}.items():
        if with_ids:
            base.mkdir(parents=True, exist_ok=True)
            (base / f"{split}_id.txt").write_text("\n".join(ids[:2] if split == "train" else ids) + "\n")
        for k, i in enumerate(ids):
            write_image(base / f"{split}_images" / f"{i}.jpg", 6, 5, k)
            labs[i] = rng.integers(0, 20, (6, 5)).astype(np.uint8)
            write_gray(base / f"{split}_segmentations" / f"{i}.png", labs[i])
    return labs


def test_prepare_lip_flat_layouts(tmp_path, monkeypatch, capsys):
    """Flat layout with id lists (sssegmentation: the lists choose the samples) and without (mmseg docs:
    every annotation PNG); --root may be the LIP folder itself or its parent."""
    root = tmp_path / "with_ids"
    labs = make_lip_flat(root)
    meta, _ = prepare_twice("lip", root, tmp_path / "a", monkeypatch, capsys)
    assert meta["splits"] == {"train": 2, "val": 1, "trainval": 3} and meta["layout"] == "flat"
    assert split_lines(tmp_path / "a", "train") == [
        ["LIP/train_images/1000_1234574.jpg", "LIP/train_segmentations/1000_1234574.png"],
        ["LIP/train_images/100035_11.jpg", "LIP/train_segmentations/100035_11.png"],
    ]
    for img, lab in split_lines(tmp_path / "a", "trainval"):
        assert np.array_equal(read_back(tmp_path / "a", meta, "label_root", lab), labs[img.split("/")[-1][:-4]])
    root = tmp_path / "no_ids"
    make_lip_flat(root, with_ids=False)
    meta, _ = prepare_twice("lip", root / "LIP", tmp_path / "b", monkeypatch, capsys)
    assert meta["splits"] == {"train": 3, "val": 1, "trainval": 4}
    assert [ln[0] for ln in split_lines(tmp_path / "b", "train")] == [  # sorted annotation stems
        f"train_images/{i}.jpg" for i in sorted(["1000_1234574", "100035_11", "77_9"])
    ]
    assert meta["flip_pairs"] == [[14, 15], [16, 17], [18, 19]]


def test_lip_layout_not_found_names_the_folders(tmp_path, monkeypatch, capsys):
    from tests.test_prepare_common import cli_inproc

    (tmp_path / "raw" / "LIP" / "images").mkdir(parents=True)
    code, text = cli_inproc(
        "prepare",
        "lip",
        "--root",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "o"),
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 2 and "train_images/" in text and "Traceback" not in text, text
