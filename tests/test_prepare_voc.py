"""VOC 2012 + SBD: palette PNGs and GTcls .mat files -> index PNGs; train_aug = VOC train + SBD - VOC val."""

from __future__ import annotations

import numpy as np
import scipy.io
from PIL import Image

from ctxseg.data.prepare.common import bitmap_palette
from tests.test_prepare_common import assert_no_copied_images, prepare_twice, read_back, split_lines, write_image


def write_palette_png(path, lab):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(lab, mode="P")
    pal = bitmap_palette(256)
    im.putpalette([c for rgb in pal for c in rgb])
    im.save(path)


def test_prepare_voc_aug(tmp_path, monkeypatch, capsys):
    root = tmp_path / "raw"
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    rng = np.random.default_rng(5)
    voc_train, voc_val = ["2007_000032", "2007_000039"], ["2007_000033", "2008_000001"]
    sbd_train, sbd_val = ["2008_000002", "2007_000033"], ["2007_000032", "2008_000003"]  # overlaps on purpose
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(voc_train) + "\n")
    (sets / "val.txt").write_text("\n".join(voc_val) + "\n")
    (sets / "trainval.txt").write_text("\n".join(voc_train + voc_val) + "\n")
    sbd.mkdir(parents=True)
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    truth = {}
    for k, n in enumerate(sorted(set(voc_train + voc_val + sbd_train + sbd_val))):
        write_image(voc / "JPEGImages" / f"{n}.jpg", 5, 6, k)
        if n in voc_train + voc_val:
            lab = rng.integers(0, 21, (5, 6)).astype(np.uint8)
            lab[0] = 255  # boundary band
            write_palette_png(voc / "SegmentationClass" / f"{n}.png", lab)
            truth[n] = lab
        if n in sbd_train + sbd_val:
            seg = rng.integers(0, 21, (5, 6)).astype(np.uint8)
            (sbd / "cls").mkdir(exist_ok=True)
            scipy.io.savemat(
                sbd / "cls" / f"{n}.mat",
                {
                    "GTcls": {
                        "Segmentation": seg,
                        "Boundaries": np.zeros((21, 1), object),
                        "CategoriesPresent": np.unique(seg[seg > 0]),
                    }
                },
            )
            truth.setdefault(n, seg)  # the VOC annotation wins where both exist
    out = tmp_path / "voc"
    meta, _ = prepare_twice("voc-aug", root, out, monkeypatch, capsys)
    assert meta["num_classes"] == 21 and meta["classes"][0] == "background" and meta["ignore_index"] == 255
    assert meta["official_splits"] == {"train_aug": 10582, "val": 1449}
    train = [ln[0].split("/")[-1][:-4] for ln in split_lines(out, "train_aug")]
    assert train == sorted({"2007_000032", "2007_000039", "2008_000002", "2008_000003"})
    assert [ln[0].split("/")[-1][:-4] for ln in split_lines(out, "val")] == voc_val
    for split in ("train_aug", "val"):
        for img, lab in split_lines(out, split):
            assert img.startswith("VOCdevkit/VOC2012/JPEGImages/")
            n = img.split("/")[-1][:-4]
            assert np.array_equal(read_back(out, meta, "label_root", lab), truth[n]), n
    assert_no_copied_images(out)
