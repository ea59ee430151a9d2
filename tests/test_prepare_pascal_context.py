"""PASCAL-Context from the official trainval/*.mat (LabelMap, 459 ids): 59 and 60 class variants."""

from __future__ import annotations

import numpy as np
import scipy.io

from ctxseg.data.dataset import reduce_zero_label
from tests.test_prepare_common import prepare_twice, read_back, split_lines, write_image

# (459-class id, 59-class index) spot values from the official 59-class list
KNOWN = {2: 1, 9: 2, 284: 37, 458: 59, 1: 0, 3: 0, 459: 0, 0: 0}


def make_context(root):
    voc = root / "VOCdevkit" / "VOC2010"
    rng = np.random.default_rng(6)
    ids = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}
    raw = {}
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for split, names in ids.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for k, n in enumerate(names):
            write_image(voc / "JPEGImages" / f"{n}.jpg", 4, 5, k)
            lab = rng.choice([2, 9, 284, 458, 1, 3, 459, 18, 440], (4, 5)).astype(np.uint16)
            raw[n] = lab
            (root / "trainval").mkdir(exist_ok=True)
            scipy.io.savemat(root / "trainval" / f"{n}.mat", {"LabelMap": lab})
    return raw


def test_prepare_pascal_context_59_and_60(tmp_path, monkeypatch, capsys):
    root = tmp_path / "raw"
    raw = make_context(root)
    lut = {**KNOWN, 18: 3, 440: 56}
    m59, _ = prepare_twice("pascal-context", root, tmp_path / "pc59", monkeypatch, capsys)
    m60, _ = prepare_twice("pascal-context-60", root, tmp_path / "pc60", monkeypatch, capsys)
    assert m59["num_classes"] == 59 and m59["reduce_zero_label"] is True and m59["classes"][0] == "aeroplane"
    assert m60["num_classes"] == 60 and m60["reduce_zero_label"] is False and m60["classes"][:2] == ["background", "aeroplane"]
    assert m59["classes"][36] == "person" and m60["classes"][37] == "person" and m59["classes"][-1] == "wood"
    assert m59["official_splits"] == {"train": 4998, "val": 5105}
    for out, meta in ((tmp_path / "pc59", m59), (tmp_path / "pc60", m60)):
        for split in ("train", "val"):
            for img, lab in split_lines(out, split):
                n = img.split("/")[-1][:-4]
                assert img == f"VOCdevkit/VOC2010/JPEGImages/{n}.jpg"
                got = read_back(out, meta, "label_root", lab)
                assert np.array_equal(got, np.vectorize(lut.get)(raw[n]).astype(np.uint8))
    # 59: background ignored, counts over 59 classes; 60: background is class 0
    t59 = [reduce_zero_label(np.vectorize(lut.get)(raw[n])) for n in ("2008_000002", "2008_000003")]
    assert m59["class_pixel_counts"] == sum(np.bincount(t[t != 255], minlength=59) for t in t59).tolist()
    assert m60["class_pixel_counts"][0] == sum(int((np.vectorize(lut.get)(raw[n]) == 0).sum()) for n in ("2008_000002", "2008_000003"))
