"""Dataset preparers: name -> function(root, out, workers, seed, progress) -> meta dict."""

from __future__ import annotations

from pathlib import Path

from ctxseg.data.check import check_labels
from ctxseg.data.index import PreparedIndex


def _synthetic(root, out, workers, seed, progress):
    from ctxseg.data.prepare.synthetic import prepare_synthetic

    return prepare_synthetic(Path(out), seed=seed, workers=workers, progress=progress)


def _lazy(module: str, fn: str):
    """A preparer imported on first use (keeps `ctxseg --help` fast)."""

    def run(root, out, workers, seed, progress):
        import importlib

        return getattr(importlib.import_module(f"ctxseg.data.prepare.{module}"), fn)(root, out, workers, seed, progress)

    return run


PREPARERS = {
    "synthetic": _synthetic,
    "cityscapes": _lazy("cityscapes", "prepare"),
    "ade20k": _lazy("ade20k", "prepare"),
    "coco-stuff10k": _lazy("cocostuff", "prepare_10k"),
    "coco-stuff164k": _lazy("cocostuff", "prepare_164k"),
    "voc-aug": _lazy("voc", "prepare"),
    "pascal-context": _lazy("pascal_context", "prepare59"),
    "pascal-context-60": _lazy("pascal_context", "prepare60"),
    "lip": _lazy("lip", "prepare"),
    "camvid": _lazy("camvid", "prepare"),
}


def check_prepared(root: Path) -> list[tuple[str, list[int]]]:
    index = PreparedIndex.open(root)
    m = index.meta
    bad = []
    for split in m.get("splits", {}):
        bad += check_labels(index, split, m["num_classes"], m.get("ignore_index", 255), m.get("reduce_zero_label", False))
    return bad
SUBMISSION_FORMATS: dict = {}  # name -> fn(stem, trainid_pred) -> (file name, array); filled by dataset modules


def _cityscapes_submission(stem, pred):
    from ctxseg.data.prepare.cityscapes import submission

    return submission(stem, pred)


SUBMISSION_FORMATS["cityscapes"] = _cityscapes_submission
