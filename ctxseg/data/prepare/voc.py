"""PASCAL VOC 2012 + SBD augmentation: train_aug 10582 / val 1449, 21 classes, 255 = boundary ignore.

Raw input under --root:
  VOCdevkit/VOC2012/JPEGImages/*.jpg
  VOCdevkit/VOC2012/SegmentationClass/*.png        (palette PNGs: 0..20, 255 = boundary/void)
  VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt
  benchmark_RELEASE/dataset/cls/*.mat               (SBD: GTcls.Segmentation, 0..20)
  benchmark_RELEASE/dataset/{train,val}.txt
(VOCdevkit/ and benchmark_RELEASE/ may also sit directly under --root's parent names VOC2012 /
dataset; see docs/datasets.md.) train_aug = (VOC train + SBD train + SBD val) - VOC val, as
mmseg's voc_aug converter. An image with an official VOC annotation uses it (it has the 255
boundary band); the other train_aug images use SBD's .mat, which has no boundary band.
Both become plain index PNGs under <out>/labels (the palette PNGs are read as indices).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxseg.data.prepare.common import (
    DatasetInfo,
    Job,
    bitmap_palette,
    find_dir,
    need_root,
    prepare_index,
    read_indexed_png,
    read_list,
    require_scipy,
)
from ctxseg.errors import UserError

SPLITS = {"train_aug": 10582, "val": 1449}
CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def convert_voc_png(source: str) -> np.ndarray:
    lab = read_indexed_png(source)
    if lab.dtype != np.uint8:
        raise UserError(f"{source}: expected an 8-bit palette PNG")
    return lab


def convert_sbd_mat(source: str) -> np.ndarray:
    mat = require_scipy().loadmat(source)
    try:
        seg = mat["GTcls"][0]["Segmentation"][0]
    except (KeyError, IndexError, ValueError):
        raise UserError(f"{source}: no GTcls.Segmentation (an SBD dataset/cls/*.mat file is expected)") from None
    return np.asarray(seg).astype(np.uint8)


def prepare(root, out, workers=2, seed=0, progress=None) -> dict:
    root = need_root(root, "voc-aug")
    voc = find_dir(root, "VOCdevkit/VOC2012", "VOC2012", what="VOC 2012 (VOCdevkit/VOC2012)")
    sbd = find_dir(root, "benchmark_RELEASE/dataset", "SBD/dataset", "dataset", what="SBD (benchmark_RELEASE/dataset)")
    seg_sets = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_list(seg_sets / "train.txt"), read_list(seg_sets / "val.txt")
    sbd_all = read_list(sbd / "train.txt") + read_list(sbd / "val.txt")
    val_set = set(voc_val)
    train_aug = sorted(set(voc_train + sbd_all) - val_set)
    sources = [str(seg_sets / "train.txt"), str(seg_sets / "val.txt"), str(sbd / "train.txt"), str(sbd / "val.txt")]
    jobs, missing = [], []
    img_rel = voc.relative_to(root)

    def add(split, name):
        img = voc / "JPEGImages" / f"{name}.jpg"
        voc_png = voc / "SegmentationClass" / f"{name}.png"
        mat = sbd / "cls" / f"{name}.mat"
        if not img.is_file():
            missing.append(name)
            return
        if voc_png.is_file():
            job = Job(
                split, f"{img_rel.as_posix()}/JPEGImages/{name}.jpg", f"{name}.png", str(voc_png), convert_voc_png
            )
        elif split != "val" and mat.is_file():
            job = Job(split, f"{img_rel.as_posix()}/JPEGImages/{name}.jpg", f"{name}.png", str(mat), convert_sbd_mat)
        else:
            missing.append(name)
            return
        jobs.append(job)
        sources.extend([str(img), job.source])

    for name in train_aug:
        add("train_aug", name)
    for name in voc_val:
        add("val", name)
    warnings = (
        [
            f"{len(missing)} listed image(s) lack the image or any annotation and were left out, e.g. "
            f"{', '.join(missing[:5])}"
        ]
        if missing
        else []
    )
    info = DatasetInfo(
        "voc-aug",
        CLASSES,
        bitmap_palette(21),
        255,
        False,
        [],
        SPLITS,
        {
            "label_convention": "0 = background, 1..20 = classes, 255 = boundary/void (ignored)",
            "train_split": "train_aug",
        },
    )
    # converted labels of both splits live in one folder keyed by image name (VOC names are unique)
    return prepare_index(
        info, jobs, Path(out), root, "labels", workers, progress, sources, warnings, stats_split="train_aug"
    )
