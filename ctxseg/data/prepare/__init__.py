"""Dataset preparers: name -> function(root, out, workers, seed, progress) -> meta dict."""

from __future__ import annotations

from pathlib import Path

from ctxseg.data.check import check_labels
from ctxseg.data.index import PreparedIndex


def _synthetic(root, out, workers, seed, progress):
    from ctxseg.data.prepare.synthetic import prepare_synthetic

    return prepare_synthetic(Path(out), seed=seed, workers=workers, progress=progress)


PREPARERS = {
    "synthetic": _synthetic,
}


def check_prepared(root: Path) -> list[tuple[str, list[int]]]:
    index = PreparedIndex.open(root)
    m = index.meta
    bad = []
    for split in m.get("splits", {}):
        bad += check_labels(index, split, m["num_classes"], m.get("ignore_index", 255), m.get("reduce_zero_label", False))
    return bad
SUBMISSION_FORMATS: dict = {}  # name -> fn(stem, trainid_pred) -> (file name, array); filled by dataset modules
