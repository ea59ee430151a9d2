"""Cityscapes (fine annotations): labelIds -> 19 trainIds, 255 ignore.

Raw input (either form, under --root):
  extracted:  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
              gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png (or _polygons.json)
  zips:       leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip (as downloaded)
Label definitions come from cityscapesscripts (helpers.labels); where only the polygon json
exists, the label image is rasterised with cityscapesscripts' json2labelImg. Labels of a zip are
read from inside the archive; images of a zip are unpacked once into <out>/raw (the loader needs
files). The test split is listed without labels (its public labels are empty).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxseg.data.prepare.common import DatasetInfo, Job, extract_zip, need_root, prepare_index, read_source_png
from ctxseg.errors import UserError

SPLITS = {"train": 2975, "val": 500, "test": 1525}
IMG_SUFFIX = "_leftImg8bit.png"


def _labels():
    try:
        from cityscapesscripts.helpers import labels
    except ImportError:
        raise UserError(
            "Cityscapes needs cityscapesscripts: pip install cityscapesscripts (or pip install 'ctxseg[datasets]')"
        ) from None
    return labels


def id_to_trainid_lut() -> np.ndarray:
    """labelId -> trainId lookup; ids with trainId 255 or -1 (and unknown values) -> 255."""
    lut = np.full(256, 255, np.uint8)
    for lab in _labels().labels:
        if 0 <= lab.id < 256 and 0 <= lab.trainId < 255:
            lut[lab.id] = lab.trainId
    return lut


def trainid_to_id_lut() -> np.ndarray:
    lut = np.zeros(256, np.uint8)  # unknown trainIds -> 0 ('unlabeled'), ignored by the evaluation
    for lab in _labels().labels:
        if 0 <= lab.trainId < 255 and lab.id >= 0:
            lut[lab.trainId] = lab.id
    return lut


def class_info() -> tuple[list[str], list[list[int]]]:
    train = sorted((l for l in _labels().labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
    return [l.name for l in train], [list(l.color) for l in train]


def convert_labelids(source: str) -> np.ndarray:
    """A *_gtFine_labelIds.png (path or zip member) -> trainIds."""
    return id_to_trainid_lut()[read_source_png(source)]


def convert_polygons(source: str) -> np.ndarray:
    """A *_gtFine_polygons.json -> label ids with cityscapesscripts' json2labelImg -> trainIds."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    ann = Annotation()
    ann.fromJsonFile(source)
    ids = np.array(createLabelImage(ann, "ids"), np.uint8)
    return id_to_trainid_lut()[ids]


def _stem(image_name: str) -> str:
    if not image_name.endswith(IMG_SUFFIX):
        raise UserError(f"Not a Cityscapes image name: {image_name} (expected <city>_<seq>_<frame>{IMG_SUFFIX})")
    return image_name[: -len(IMG_SUFFIX)]


def submission(stem, pred: np.ndarray) -> tuple[str, np.ndarray]:
    """Test-server export: trainId prediction -> labelIds PNG named <city>_<seq>_<frame>_leftImg8bit.png.

    The official evaluation finds a prediction by the pattern <city>_<seq>_<frame>*.png, so the
    input image's file name is kept (flat: the server wants all files in one folder/zip)."""
    name = Path(str(stem)).name
    parts = name.split("_")
    if len(parts) < 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise UserError(
            f"--format cityscapes needs Cityscapes file names (<city>_<seq>_<frame>_leftImg8bit.png), got '{name}'"
        )
    out = "_".join(parts[:3]) + IMG_SUFFIX
    if pred.size and int(pred.max()) > 18:
        raise UserError(f"--format cityscapes expects 19-class trainId predictions, got value {int(pred.max())}")
    return out, trainid_to_id_lut()[pred.astype(np.uint8)]


def _gt_sources(root: Path) -> dict[str, str]:
    """(split/city/stem) -> label source, from an extracted gtFine/ or gtFine_trainvaltest.zip."""
    found: dict[str, str] = {}
    gt = root / "gtFine"
    if gt.is_dir():
        for p in gt.glob("*/*/*_gtFine_polygons.json"):
            found[f"{p.parent.parent.name}/{p.parent.name}/{p.name[: -len('_gtFine_polygons.json')]}"] = "json:" + str(
                p
            )
        for p in gt.glob("*/*/*_gtFine_labelIds.png"):
            found[f"{p.parent.parent.name}/{p.parent.name}/{p.name[: -len('_gtFine_labelIds.png')]}"] = str(p)
        return found
    archive = root / "gtFine_trainvaltest.zip"
    if archive.is_file():
        from ctxseg.data.prepare.common import open_zip

        with open_zip(archive) as z:
            for m in z.namelist():
                if m.startswith("gtFine/") and m.endswith("_gtFine_labelIds.png"):
                    split, city, name = m.split("/")[1:4]
                    found[f"{split}/{city}/{name[: -len('_gtFine_labelIds.png')]}"] = f"{archive}::{m}"
        return found
    raise UserError(f"Cityscapes labels not found under {root}: expected gtFine/ or gtFine_trainvaltest.zip")


def prepare(root, out, workers=2, seed=0, progress=None) -> dict:
    root = need_root(root, "cityscapes")
    out = Path(out)
    image_root = root
    sources: list[str] = []
    if not (root / "leftImg8bit").is_dir():
        archive = root / "leftImg8bit_trainvaltest.zip"
        if not archive.is_file():
            raise UserError(
                f"Cityscapes images not found under {root}: expected leftImg8bit/ or leftImg8bit_trainvaltest.zip"
            )
        image_root = out / "raw"
        extract_zip(archive, image_root, "leftImg8bit/", progress)
        sources.append(str(archive))
    gt = _gt_sources(root)
    jobs: list[Job] = []
    warnings: list[str] = []
    no_label: list[str] = []
    for split in SPLITS:
        for img in sorted((image_root / "leftImg8bit" / split).glob(f"*/*{IMG_SUFFIX}")):
            rel = img.relative_to(image_root).as_posix()
            sources.append(str(img))
            if split == "test":
                jobs.append(Job(split, rel))
                continue
            key = f"{split}/{img.parent.name}/{_stem(img.name)}"
            src = gt.get(key)
            if src is None:
                no_label.append(rel)
                continue
            label = f"gtFine/{key}_gtFine_labelTrainIds.png"
            sources.append(src[5:] if src.startswith("json:") else src)
            if src.startswith("json:"):
                jobs.append(Job(split, rel, label, src[5:], convert_polygons))
            else:
                jobs.append(Job(split, rel, label, src, convert_labelids))
    if no_label:
        warnings.append(
            f"{len(no_label)} train/val image(s) have no gtFine label and were left out, e.g. {', '.join(no_label[:5])}"
        )
    classes, palette = class_info()
    info = DatasetInfo(
        "cityscapes",
        classes,
        palette,
        255,
        False,
        [],
        SPLITS,
        {"label_convention": "19 trainIds (cityscapesscripts labels.py), 255 = ignore"},
    )
    return prepare_index(info, jobs, out, image_root, "labels", workers, progress, sources, warnings)
