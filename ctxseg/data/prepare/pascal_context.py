"""PASCAL-Context: 59 classes (background ignored) and the 60-class variant (background a class).

Three raw routes are accepted (under --root; VOCdevkit/VOC2010 may also be --root itself or VOC2010/):
  1. Stanford .mat (the PASCAL-Context site's trainval.tar.gz): one trainval/<image id>.mat per
     VOC 2010 train/val image, variable LabelMap with the 459-class ids of labels.txt; at
     trainval/ or VOCdevkit/VOC2010/trainval/.
  2. PASCAL in Detail JSON, mmsegmentation's route: VOCdevkit/VOC2010/trainval_merged.json (or
     at --root). It is read here directly (no Detail API needed): each image's segmentation
     annotations are COCO run-length encodings, painted in file order with their category id
     (what Detail.getMask does), then mapped like the .mat ids.
  3. Already converted (the output of mmseg's converter, sssegmentation's layout):
     VOCdevkit/VOC2010/SegmentationClassContext/<id>.png, values 0..59, used in place.
  with VOCdevkit/VOC2010/JPEGImages/*.jpg. The first route found in that order is used.
Splits: VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt (written by mmseg's
converter) if present; else, on the JSON route, the JSON's "phase" of each image (as mmseg's
converter does); else ImageSets/Main/{train,val}.txt (4998 / 5105 ids, the same images).

Conversion (mmseg's _class_to_index): the 59 benchmark classes are 59 of the 459 ids; sorted,
they become 1..59; every other id (and 0) becomes 0 = background (mmseg's converter would stop
with an assertion on such an id; trainval_merged.json holds none). Both variants share these
labels: pascal-context-60 uses them as is; pascal-context (59) sets reduce_zero_label = true
(background -> 255, k -> k-1), exactly as mmseg's PascalContextDataset59.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ctxseg.data.prepare.common import (
    DatasetInfo,
    Job,
    bitmap_palette,
    need_root,
    prepare_index,
    read_list,
    require_scipy,
)
from ctxseg.errors import UserError

# VOC 2010 train / val (ImageSets/Main), the split of the PASCAL-Context benchmark
SPLITS = {"train": 4998, "val": 5105}
# ids in the 459-class labels.txt of the 59 benchmark classes (ascending = alphabetical)
CONTEXT59_IDS = [
    2,
    9,
    18,
    19,
    22,
    23,
    25,
    31,
    33,
    34,
    44,
    45,
    46,
    59,
    65,
    68,
    72,
    80,
    85,
    98,
    104,
    105,
    113,
    115,
    144,
    158,
    159,
    162,
    187,
    189,
    207,
    220,
    232,
    258,
    259,
    260,
    284,
    295,
    296,
    308,
    324,
    326,
    347,
    349,
    354,
    355,
    360,
    366,
    368,
    397,
    415,
    416,
    420,
    424,
    427,
    440,
    445,
    454,
    458,
]
CLASSES59 = [
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
]


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


def rle_counts(counts) -> list[int]:
    """Run lengths of a COCO RLE: a list already, or COCO's compressed string (maskApi.c rleFrString:
    6-bit chunks offset by 48, 5 data bits + a continuation bit, runs after the second one stored
    as the difference to the run two back)."""
    if isinstance(counts, list):
        return [int(c) for c in counts]
    data = counts.encode() if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_rle(rle: dict) -> np.ndarray:
    """COCO RLE {"size": [h, w], "counts": ...} -> HxW bool mask (runs go down columns first)."""
    h, w = (int(v) for v in rle["size"])
    runs = np.asarray(rle_counts(rle["counts"]), np.int64)
    if runs.min(initial=0) < 0 or runs.sum() != h * w:
        raise ValueError(f"RLE runs cover {int(runs.sum())} pixels, the mask has {h * w}")
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(w, h).T


def convert_json(source: str, height: int, width: int, anns: tuple) -> np.ndarray:
    """One image's Detail annotations ((category id, RLE), in file order) -> 0..59 labels."""
    mask = np.zeros((height, width), np.int64)
    for cat, rle in anns:
        m = decode_rle(rle)
        if m.shape != mask.shape:
            raise UserError(f"{source}: an annotation mask is {m.shape[1]}x{m.shape[0]}, the image {width}x{height}")
        mask[m] = cat
    if mask.min() < 0 or mask.max() > 65535:
        raise UserError(f"{source}: category ids outside 0..65535")
    return context_lut()[mask]


def read_detail_json(path: Path) -> dict[str, dict]:
    """trainval_merged.json -> {image id: {"phase", "height", "width", "anns"}} (no Detail API)."""
    try:
        data = json.loads(path.read_text())
        images = {img["image_id"]: img for img in data["images"]}
        per_image: dict[str, dict] = {}
        for img in images.values():
            per_image[Path(img["file_name"]).stem] = {
                "phase": img.get("phase"),
                "height": int(img["height"]),
                "width": int(img["width"]),
                "anns": [],
            }
        names = {iid: Path(img["file_name"]).stem for iid, img in images.items()}
        seen: set = set()
        for ann in data["annos_segmentation"]:
            if ann.get("id") in seen:  # Detail indexes annotations by id: a repeated id is one annotation
                continue
            seen.add(ann.get("id"))
            if ann["image_id"] in names:  # an annotation of an image the file does not list: nothing to paint
                per_image[names[ann["image_id"]]]["anns"].append((int(ann["category_id"]), ann["segmentation"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a readable PASCAL in Detail annotation file ({type(e).__name__}: {e})") from None
    return per_image


def _voc_dir(root: Path) -> Path:
    for c in ("VOCdevkit/VOC2010", "VOC2010", "."):
        if (root / c / "JPEGImages").is_dir():
            return (root / c).resolve()
    raise UserError(f"VOC 2010 not found under {root}: expected VOCdevkit/VOC2010/JPEGImages/ (see docs/datasets.md)")


def find_route(root: Path, voc: Path, route: str | None = None) -> tuple[str, Path]:
    """(route, where) of the first annotation route found, in the order mat, json, png; or of the
    given route (a tree may hold several: then each can be prepared and compared)."""
    candidates = {
        "mat": [p for p in (root / "trainval", voc / "trainval", root / "pascal-context" / "trainval") if p.is_dir()],
        "json": [
            p
            for p in (
                voc / "trainval_merged.json",
                root / "trainval_merged.json",
                root / "VOCdevkit" / "trainval_merged.json",
            )
            if p.is_file()
        ],
        "png": [p for p in (voc / "SegmentationClassContext",) if p.is_dir()],
    }
    for name in [route] if route else ["mat", "json", "png"]:
        if candidates[name]:
            return name, candidates[name][0]
    raise UserError(
        f"PASCAL-Context annotations not found under {root}: expected trainval/*.mat (trainval.tar.gz), "
        f"VOCdevkit/VOC2010/trainval_merged.json, or VOCdevkit/VOC2010/SegmentationClassContext/ "
        f"(see docs/datasets.md)"
    )


def _prepare(root, out, workers, progress, name: str, sixty: bool, route: str | None = None) -> dict:
    root = need_root(root, name)
    voc = _voc_dir(root)
    route, where = find_route(root, voc, route)
    detail = read_detail_json(where) if route == "json" else {}
    sets = voc / "ImageSets" / "SegmentationContext"
    if (sets / "train.txt").is_file():
        lists = {split: read_list(sets / f"{split}.txt") for split in SPLITS}
        sources = [str(sets / f"{split}.txt") for split in SPLITS]
    elif route == "json":
        lists = {split: sorted(i for i, v in detail.items() if v["phase"] == split) for split in SPLITS}
        sources = []
    else:
        sets = voc / "ImageSets" / "Main"
        lists = {split: read_list(sets / f"{split}.txt") for split in SPLITS}
        sources = [str(sets / f"{split}.txt") for split in SPLITS]
    if route == "json":
        sources.append(str(where))
    jobs, missing = [], []
    img_rel = voc.relative_to(root).as_posix() if voc != root else ""
    img_prefix = f"{img_rel}/" if img_rel and img_rel != "." else ""
    for split in SPLITS:
        for image_id in lists[split]:
            img = voc / "JPEGImages" / f"{image_id}.jpg"
            image = f"{img_prefix}JPEGImages/{image_id}.jpg"
            if route == "mat":
                mat = where / f"{image_id}.mat"
                ok = mat.is_file()
                job = Job(split, image, f"{image_id}.png", str(mat), convert_mat)
            elif route == "json":
                entry = detail.get(image_id)
                ok = entry is not None
                if ok:
                    args = (entry["height"], entry["width"], tuple(entry["anns"]))
                    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()
                    job = Job(
                        split,
                        image,
                        f"{image_id}.png",
                        f"{where}#{image_id}",
                        convert_json,
                        args,
                        fingerprint=f"{where.name}#{image_id}\t{digest}",
                    )
            else:
                png = where / f"{image_id}.png"
                ok = png.is_file()
                job = Job(split, image, png.relative_to(root).as_posix())
            if not img.is_file() or not ok:
                missing.append(image_id)
                continue
            jobs.append(job)
            sources += [str(img)] + (
                [job.source] if route == "mat" else [str(where / f"{image_id}.png")] if route == "png" else []
            )
    warnings = (
        [
            f"{len(missing)} listed image(s) lack the image or its annotation and were left out, e.g. "
            f"{', '.join(missing[:5])}"
        ]
        if missing
        else []
    )
    classes = (["background"] + CLASSES59) if sixty else CLASSES59
    palette = bitmap_palette(60) if sixty else bitmap_palette(60)[1:]
    info = DatasetInfo(
        name,
        classes,
        palette,
        255,
        not sixty,
        [],
        SPLITS,
        {
            "label_convention": "PNG 0 = background, 1..59 = classes; "
            + (
                "background is class 0 (60 classes)"
                if sixty
                else "background ignored via reduce_zero_label (59 classes)"
            ),
            "annotation_route": {
                "mat": "trainval/*.mat (LabelMap)",
                "json": "trainval_merged.json (PASCAL in Detail)",
                "png": "SegmentationClassContext/*.png (converted, in place)",
            }[route],
        },
    )
    label_root = root if route == "png" else "labels"
    return prepare_index(info, jobs, Path(out), root, label_root, workers, progress, sources, warnings)


def prepare59(root, out, workers=2, seed=0, progress=None) -> dict:
    return _prepare(root, out, workers, progress, "pascal-context", sixty=False)


def prepare60(root, out, workers=2, seed=0, progress=None) -> dict:
    return _prepare(root, out, workers, progress, "pascal-context-60", sixty=True)
