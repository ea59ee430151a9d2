"""PASCAL-Context: 59 classes (background ignored) and the 60-class variant (background a class).

Raw format: the official annotations from the PASCAL-Context site (trainval.tar.gz: one
trainval/<image id>.mat per VOC 2010 train/val image, variable LabelMap holding the full 459-class
ids of labels.txt) plus the VOC 2010 images. Under --root:
  VOCdevkit/VOC2010/JPEGImages/*.jpg
  VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt         (4998 / 5105 ids; the split every paper uses)
  trainval/*.mat                                           (or VOCdevkit/VOC2010/trainval/*.mat)
If VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt exists (written by mmseg's
Detail-API converter), it is used instead of ImageSets/Main.
(mmseg converts trainval_merged.json with the Detail API, a package not on PyPI; the .mat files
carry the same 459-class masks and need only scipy.)

Conversion (mmseg's _class_to_index): the 59 benchmark classes are 59 of the 459 ids; sorted,
they become 1..59; every other id (and 0) becomes 0 = background. Both variants share these
labels: pascal-context (60) uses them as is; pascal-context-59 sets reduce_zero_label = true
(background -> 255, k -> k-1), exactly as mmseg's PascalContextDataset59.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxseg.data.prepare.common import (DatasetInfo, Job, bitmap_palette, find_dir, need_root, prepare_index,
                                        read_list, require_scipy)
from ctxseg.errors import UserError

# VOC 2010 train / val (ImageSets/Main), the split of the PASCAL-Context benchmark
SPLITS = {"train": 4998, "val": 5105}
# ids in the 459-class labels.txt of the 59 benchmark classes (ascending = alphabetical)
CONTEXT59_IDS = [2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115,
                 144, 158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349,
                 354, 355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458]
CLASSES59 = ["aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
             "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup",
             "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard",
             "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road",
             "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train",
             "tree", "truck", "tvmonitor", "wall", "water", "window", "wood"]


def context_lut() -> np.ndarray:
    lut = np.zeros(65536, np.uint8)
    for k, cid in enumerate(CONTEXT59_IDS):
        lut[cid] = k + 1
    return lut


def convert_mat(source: str) -> np.ndarray:
    mat = require_scipy().loadmat(source)
    if "LabelMap" not in mat:
        raise UserError(f"{source}: no variable 'LabelMap' (a PASCAL-Context trainval/*.mat file is expected)")
    lab = np.asarray(mat["LabelMap"]).astype(np.int64)
    if lab.min() < 0 or lab.max() > 65535:
        raise UserError(f"{source}: LabelMap values outside 0..65535")
    return context_lut()[lab]


def _prepare(root, out, workers, progress, name: str, sixty: bool) -> dict:
    root = need_root(root, name)
    voc = find_dir(root, "VOCdevkit/VOC2010", "VOC2010", what="VOC 2010 (VOCdevkit/VOC2010)")
    ann = find_dir(root, "trainval", "VOCdevkit/VOC2010/trainval", "pascal-context/trainval",
                   what="PASCAL-Context annotations (trainval/*.mat from trainval.tar.gz)")
    sets = voc / "ImageSets" / "SegmentationContext"
    if not (sets / "train.txt").is_file():
        sets = voc / "ImageSets" / "Main"
    jobs, sources, missing = [], [], []
    img_rel = voc.relative_to(root).as_posix()
    for split in SPLITS:
        sources.append(str(sets / f"{split}.txt"))
        for image_id in read_list(sets / f"{split}.txt"):
            img, mat = voc / "JPEGImages" / f"{image_id}.jpg", ann / f"{image_id}.mat"
            if not img.is_file() or not mat.is_file():
                missing.append(image_id)
                continue
            jobs.append(Job(split, f"{img_rel}/JPEGImages/{image_id}.jpg", f"{image_id}.png", str(mat), convert_mat))
            sources += [str(img), str(mat)]
    warnings = [f"{len(missing)} listed image(s) lack the image or its .mat and were left out, e.g. "
                f"{', '.join(missing[:5])}"] if missing else []
    classes = (["background"] + CLASSES59) if sixty else CLASSES59
    palette = bitmap_palette(60) if sixty else bitmap_palette(60)[1:]
    info = DatasetInfo(name, classes, palette, 255, not sixty, [], SPLITS,
                       {"label_convention": "PNG 0 = background, 1..59 = classes; "
                                            + ("background is class 0 (60 classes)" if sixty else
                                               "background ignored via reduce_zero_label (59 classes)")})
    return prepare_index(info, jobs, Path(out), root, "labels", workers, progress, sources, warnings)


def prepare59(root, out, workers=2, seed=0, progress=None) -> dict:
    return _prepare(root, out, workers, progress, "pascal-context", sixty=False)


def prepare60(root, out, workers=2, seed=0, progress=None) -> dict:
    return _prepare(root, out, workers, progress, "pascal-context-60", sixty=True)
