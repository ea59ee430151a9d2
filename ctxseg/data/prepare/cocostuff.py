"""COCO-Stuff: the 182 -> 171 class mapping of the benchmarks (mmseg's converters).

The 182 ids are COCO's 91 thing ids (only 80 used) and 91 stuff ids. The 11 thing ids COCO never
annotates (1-based 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91) are dropped; the rest keep their
order, giving 171 classes (80 things + 91 stuff).

COCO-Stuff-10k (cocostuff-10k-v1.1), under --root:
  images/COCO_train2014_000000000077.jpg ...
  annotations/COCO_train2014_000000000077.mat   (variable S: 0 = unlabeled, 1..182 = 1-based ids)
  imageLists/train.txt, imageLists/test.txt      (9000 / 1000 names without suffix)
  -> labels 1..171 with 0 = unlabeled and reduce_zero_label = true (exactly mmseg's 10k setup).
COCO-Stuff-164k (stuffthingmaps_trainval2017 + COCO 2017 images), under --root:
  images/{train2017,val2017}/000000000009.jpg
  annotations/{train2017,val2017}/000000000009.png  (0..181 = 0-based ids, 255 = unlabeled)
  -> labels 0..170 with 255 = ignore (mmseg's 164k setup).
Ids outside the mapping (never present in the official data) become ignore; mmseg would keep them
unchanged, which only matters for corrupt files (`ctxseg prepare --check` reports them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxseg.data.prepare.common import (
    DatasetInfo,
    Job,
    bitmap_palette,
    need_root,
    paired,
    prepare_index,
    read_indexed_png,
    read_list,
    require_scipy,
)
from ctxseg.errors import UserError

SPLITS_10K = {"train": 9000, "test": 1000}
SPLITS_164K = {"train": 118287, "val": 5000}
UNUSED_1BASED = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
USED_1BASED = [i for i in range(1, 183) if i not in UNUSED_1BASED]  # 171 ids; position = train id

CLASSES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "banner",
    "blanket",
    "branch",
    "bridge",
    "building-other",
    "bush",
    "cabinet",
    "cage",
    "cardboard",
    "carpet",
    "ceiling-other",
    "ceiling-tile",
    "cloth",
    "clothes",
    "clouds",
    "counter",
    "cupboard",
    "curtain",
    "desk-stuff",
    "dirt",
    "door-stuff",
    "fence",
    "floor-marble",
    "floor-other",
    "floor-stone",
    "floor-tile",
    "floor-wood",
    "flower",
    "fog",
    "food-other",
    "fruit",
    "furniture-other",
    "grass",
    "gravel",
    "ground-other",
    "hill",
    "house",
    "leaves",
    "light",
    "mat",
    "metal",
    "mirror-stuff",
    "moss",
    "mountain",
    "mud",
    "napkin",
    "net",
    "paper",
    "pavement",
    "pillow",
    "plant-other",
    "plastic",
    "platform",
    "playingfield",
    "railing",
    "railroad",
    "river",
    "road",
    "rock",
    "roof",
    "rug",
    "salad",
    "sand",
    "sea",
    "shelf",
    "sky-other",
    "skyscraper",
    "snow",
    "solid-other",
    "stairs",
    "stone",
    "straw",
    "structural-other",
    "table",
    "tent",
    "textile-other",
    "towel",
    "tree",
    "vegetable",
    "wall-brick",
    "wall-concrete",
    "wall-other",
    "wall-panel",
    "wall-stone",
    "wall-tile",
    "wall-wood",
    "water-other",
    "waterdrops",
    "window-blind",
    "window-other",
    "wood",
]


def lut_10k() -> np.ndarray:
    """1-based COCO-Stuff id -> 1-based train id (0 stays 0 = unlabeled; unmapped -> 0)."""
    lut = np.zeros(256, np.uint8)
    for t, cid in enumerate(USED_1BASED):
        lut[cid] = t + 1
    return lut


def lut_164k() -> np.ndarray:
    """0-based COCO-Stuff id -> 0-based train id (255 unlabeled; unmapped -> 255)."""
    lut = np.full(256, 255, np.uint8)
    for t, cid in enumerate(USED_1BASED):
        lut[cid - 1] = t
    return lut


def convert_mat(source: str) -> np.ndarray:
    mat = require_scipy().loadmat(source)
    if "S" not in mat:
        raise UserError(f"{source}: no variable 'S' (COCO-Stuff-10k v1.1 annotation expected)")
    s = np.asarray(mat["S"])
    if s.min() < 0 or s.max() > 255:
        raise UserError(f"{source}: label values outside 0..255")
    return lut_10k()[s.astype(np.uint8)]


def convert_png(source: str) -> np.ndarray:
    lab = read_indexed_png(source)
    if lab.dtype != np.uint8:
        raise UserError(f"{source}: expected an 8-bit stuffthingmaps PNG, got {lab.dtype}")
    return lut_164k()[lab]


def _palette():
    return bitmap_palette(len(CLASSES) + 1)[1:]


def prepare_10k(root, out, workers=2, seed=0, progress=None) -> dict:
    root = need_root(root, "coco-stuff10k")
    jobs, sources, missing = [], [], []
    for split in SPLITS_10K:
        names = read_list(root / "imageLists" / f"{split}.txt")
        sources.append(str(root / "imageLists" / f"{split}.txt"))
        for name in names:
            name = Path(name).stem
            img, mat = root / "images" / f"{name}.jpg", root / "annotations" / f"{name}.mat"
            if not img.is_file() or not mat.is_file():
                missing.append(name)
                continue
            jobs.append(Job(split, f"images/{name}.jpg", f"annotations/{name}.png", str(mat), convert_mat))
            sources += [str(img), str(mat)]
    warnings = (
        [f"{len(missing)} listed sample(s) lack an image or .mat and were left out, e.g. {', '.join(missing[:5])}"]
        if missing
        else []
    )
    info = DatasetInfo(
        "coco-stuff10k",
        CLASSES,
        _palette(),
        255,
        True,
        [],
        SPLITS_10K,
        {"label_convention": "1..171 = classes, 0 = unlabeled (reduce_zero_label), as mmseg's 10k converter"},
    )
    return prepare_index(info, jobs, Path(out), root, "labels", workers, progress, sources, warnings)


def prepare_164k(root, out, workers=2, seed=0, progress=None) -> dict:
    root = need_root(root, "coco-stuff164k")
    jobs, sources, warnings = [], [], []
    for split in SPLITS_164K:
        folder = f"{split}2017"
        img_dir, ann_dir = root / "images" / folder, root / "annotations" / folder
        if not img_dir.is_dir() or not ann_dir.is_dir():
            raise UserError(f"COCO-Stuff-164k: {img_dir} and {ann_dir} are expected (see docs/datasets.md)")
        images = {p.stem: p for p in img_dir.glob("*.jpg")}
        labels = {p.stem: p for p in ann_dir.glob("*.png") if not p.stem.endswith("_labelTrainIds")}
        for stem in paired(images, labels, split, warnings):
            jobs.append(
                Job(
                    split,
                    f"images/{folder}/{stem}.jpg",
                    f"annotations/{folder}/{stem}.png",
                    str(labels[stem]),
                    convert_png,
                )
            )
            sources += [str(images[stem]), str(labels[stem])]
    info = DatasetInfo(
        "coco-stuff164k",
        CLASSES,
        _palette(),
        255,
        False,
        [],
        SPLITS_164K,
        {"label_convention": "0..170 = classes, 255 = unlabeled, as mmseg's 164k converter"},
    )
    return prepare_index(info, jobs, Path(out), root, "labels", workers, progress, sources, warnings)
