"""Dataset preparers: name -> function(root, out, workers, seed, progress) -> meta dict."""

from __future__ import annotations

from pathlib import Path

from ctxseg.data.check import check_labels  # noqa: F401 - re-exported
from ctxseg.data.index import PreparedIndex


def _synthetic(root, out, workers, seed, progress):
    from ctxseg.data.prepare.synthetic import prepare_synthetic

    return prepare_synthetic(Path(out), seed=seed, workers=workers, progress=progress)


def _lazy(module: str, fn: str):
    """A preparer imported on first use (keeps `ctxseg --help` fast)."""

    def run(root, out, workers, seed, progress, **options):
        import importlib

        fn_ = getattr(importlib.import_module(f"ctxseg.data.prepare.{module}"), fn)
        return fn_(root, out, workers, seed, progress, **options)

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
    "folder": _lazy("folder", "prepare"),  # your own images and masks (options: see ctxseg.cli.prepare)
}


def check_prepared(root: Path, workers: int = 4) -> list[tuple[str, str]]:
    """Every label file of every split, each once (trainval repeats train and val): (path, problem)
    for files that cannot be read or hold values outside [0, num_classes) and the ignore index.
    An unreadable file is listed and the scan goes on."""
    from concurrent.futures import ThreadPoolExecutor

    from ctxseg.data.check import _scan

    index = PreparedIndex.open(root)
    m = index.meta
    labels: dict[str, object] = {}
    for split in m.get("splits", {}):
        if not (Path(root) / "splits" / f"{split}.txt").is_file():
            continue
        for s in index.samples(split):
            if s.label is not None:
                labels.setdefault(str(s.label), s)

    def scan(sample):
        try:
            path, bad = _scan(sample, m["num_classes"], m.get("ignore_index", 255), m.get("reduce_zero_label", False))
        except Exception as e:  # noqa: BLE001 - missing, truncated, corrupt: named, and the scan continues
            reason = str(e).replace(str(sample.label), "this file").strip() or type(e).__name__
            return str(sample.label), f"unreadable ({reason})"
        return str(path), (
            f"values {bad} outside 0..{m['num_classes'] - 1} and ignore {m.get('ignore_index', 255)}" if bad else None
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [(p, problem) for p, problem in pool.map(scan, labels.values()) if problem]


SUBMISSION_FORMATS: dict = {}  # name -> fn(stem, trainid_pred) -> (file name, array); filled by dataset modules


def _cityscapes_submission(stem, pred):
    from ctxseg.data.prepare.cityscapes import submission

    return submission(stem, pred)


SUBMISSION_FORMATS["cityscapes"] = _cityscapes_submission
