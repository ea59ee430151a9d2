"""LIP (Look Into Person, single-person parsing): 20 classes, train 30462 / val 10000.

Raw input under --root, any of the official layouts:
  nested (TrainVal_images.zip and TrainVal_parsing_annotations.zip extracted as downloaded):
    TrainVal_images/{train,val}_images/*.jpg
    TrainVal_images/{train,val}_id.txt                          (ids without suffix; optional)
    TrainVal_parsing_annotations/{train,val}_segmentations/*.png
    (the annotation folder may be nested once more: TrainVal_parsing_annotations/TrainVal_parsing_annotations/)
  flat (mmsegmentation's and sssegmentation's LIP/ folder):
    {train,val}_images/*.jpg, {train,val}_segmentations/*.png, {train,val}_id.txt (optional)
  Either may sit in a LIP/ folder under --root. Without an id list, the split is every
  annotation PNG of <split>_segmentations/ (sorted).
The annotation PNGs are grayscale class ids 0..19 (0 = background, a class), used in place.

Left/right classes trade places under a horizontal flip: 14 Left-arm <-> 15 Right-arm,
16 Left-leg <-> 17 Right-leg, 18 Left-shoe <-> 19 Right-shoe. They go into meta.json
"flip_pairs", which training flips (ctxseg.data.transforms.random_flip) and flip TTA
(ctxseg.engine.inference.flip_scores) apply.
"""

from __future__ import annotations

from pathlib import Path

from ctxseg.data.prepare.common import DatasetInfo, Job, bitmap_palette, need_root, prepare_index, read_list
from ctxseg.errors import UserError

SPLITS = {"train": 30462, "val": 10000}
CLASSES = [
    "background",
    "hat",
    "hair",
    "glove",
    "sunglasses",
    "upper-clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "jumpsuits",
    "scarf",
    "skirt",
    "face",
    "left-arm",
    "right-arm",
    "left-leg",
    "right-leg",
    "left-shoe",
    "right-shoe",
]
FLIP_PAIRS = [(14, 15), (16, 17), (18, 19)]
# where <split>_images/ and <split>_segmentations/ may live, relative to --root (first match wins)
IMAGE_DIRS = ("TrainVal_images", "TrainVal_images/TrainVal_images", "LIP/TrainVal_images", ".", "LIP")
ANN_DIRS = (
    "TrainVal_parsing_annotations/TrainVal_parsing_annotations",
    "TrainVal_parsing_annotations",
    "LIP/TrainVal_parsing_annotations/TrainVal_parsing_annotations",
    "LIP/TrainVal_parsing_annotations",
    ".",
    "LIP",
)


def _find(root: Path, sub: str, candidates: tuple[str, ...], what: str) -> Path:
    """The first candidate folder (relative to root) that holds `sub` (e.g. train_images)."""
    for c in candidates:
        if (root / c / sub).is_dir():
            return root / c
    raise UserError(
        f"LIP {what} not found under {root}: looked for "
        + ", ".join(f"{(Path(c) / sub).as_posix()}/" for c in candidates)
        + " (see docs/datasets.md for the accepted layouts)"
    )


def prepare(root, out, workers=2, seed=0, progress=None) -> dict:
    root = need_root(root, "lip")
    images = _find(root, "train_images", IMAGE_DIRS, "images")
    anns = _find(root, "train_segmentations", ANN_DIRS, "annotations")
    jobs, sources, missing = [], [], []
    for split in SPLITS:
        img_dir, ann_dir = images / f"{split}_images", anns / f"{split}_segmentations"
        id_file = next((d / f"{split}_id.txt" for d in (images, anns, root) if (d / f"{split}_id.txt").is_file()), None)
        if id_file is not None:
            ids = [i[:-4] if i.lower().endswith((".jpg", ".png")) else i for i in read_list(id_file)]
            sources.append(str(id_file))
        else:
            ids = sorted(p.stem for p in ann_dir.glob("*.png"))
        for image_id in ids:
            img, lab = img_dir / f"{image_id}.jpg", ann_dir / f"{image_id}.png"
            if not img.is_file() or not lab.is_file():
                missing.append(image_id)
                continue
            jobs.append(Job(split, img.relative_to(root).as_posix(), lab.relative_to(root).as_posix()))
            sources += [str(img), str(lab)]
    warnings = (
        [f"{len(missing)} listed id(s) lack the image or annotation and were left out, e.g. {', '.join(missing[:5])}"]
        if missing
        else []
    )
    info = DatasetInfo(
        "lip",
        CLASSES,
        bitmap_palette(20),
        255,
        False,
        FLIP_PAIRS,
        SPLITS,
        {
            "label_convention": "grayscale PNG 0..19, 0 = background (a class)",
            "layout": "flat" if images == anns else "nested",
        },
    )
    return prepare_index(info, jobs, Path(out), root, root, workers, progress, sources, warnings)
