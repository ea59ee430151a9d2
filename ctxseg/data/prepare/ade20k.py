"""ADE20K (SceneParsing, ADEChallengeData2016): 150 classes; label 0 = "other" -> ignore.

Raw input under --root (or --root/ADEChallengeData2016):
  images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
  annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png   (0 = other, 1..150 = classes)
The annotation PNGs are already the benchmark's encoding, so nothing is converted: the index
points at them in place and meta.json sets reduce_zero_label = true (mmseg: 0 -> 255, k -> k-1
at load time, for training and evaluation alike).
"""

from __future__ import annotations

from pathlib import Path

from ctxseg.data.prepare.common import DatasetInfo, Job, bitmap_palette, find_dir, need_root, paired, prepare_index

SPLITS = {"train": 20210, "val": 2000}
FOLDERS = {"train": "training", "val": "validation"}

CLASSES = [
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
]


def prepare(root, out, workers=2, seed=0, progress=None) -> dict:
    root = need_root(root, "ade20k")
    base = root if (root / "images").is_dir() else find_dir(root, "ADEChallengeData2016", what="ADEChallengeData2016")
    jobs, sources, warnings = [], [], []
    for split, folder in FOLDERS.items():
        img_dir = base / "images" / folder
        ann_dir = base / "annotations" / folder
        if not img_dir.is_dir() or not ann_dir.is_dir():
            warnings.append(f"split '{split}': {img_dir} or {ann_dir} is missing")
            continue
        images = {p.stem: p for p in img_dir.glob("*.jpg")}
        labels = {p.stem: p for p in ann_dir.glob("*.png")}
        for stem in paired(images, labels, split, warnings):
            jobs.append(Job(split, f"images/{folder}/{stem}.jpg", f"annotations/{folder}/{stem}.png"))
            sources += [str(images[stem]), str(labels[stem])]
    info = DatasetInfo(
        "ade20k",
        CLASSES,
        bitmap_palette(len(CLASSES) + 1)[1:],
        255,
        True,
        [],
        SPLITS,
        {"label_convention": "raw PNG: 0 = other (ignored via reduce_zero_label), 1..150 = classes"},
    )
    return prepare_index(info, jobs, Path(out), base, base, workers, progress, sources, warnings)
