"""Score a folder of prediction PNGs against a prepared split, without a model (`ctxseg eval --predictions`).

Matching a sample to its prediction file (first rule that finds one):
  1. <DIR>/<sample name>.png, the sample name being the image path relative to image_root without
     its suffix (what `ctxseg eval --save-preds` writes);
  2. a file anywhere under DIR whose name (without .png) is the image's file stem;
  3. Cityscapes names: a file whose name starts with <city>_<seq>_<frame> (the official evaluation's
     pattern `<city>_<seq>_<frame>*.png`, which is what `ctxseg predict --format cityscapes` and the
     benchmark server use: <city>_<seq>_<frame>_leftImg8bit.png, flat).
Several files for one sample, or a sample without any, is a user error naming them.

Formats: "trainid" (default): values are the index's class ids (0..C-1; anything else, e.g. 255,
counts as a miss of the true class). "cityscapes": Cityscapes labelIds as submitted to the server;
they are mapped to trainIds with cityscapesscripts' labels.py (void ids -> 255, a miss), which gives
exactly the official evalPixelLevelSemanticLabeling IoUs (a void prediction on a valid pixel is a
false negative there too; ground-truth void pixels are ignored).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ctxseg.data.index import PreparedIndex, Sample
from ctxseg.errors import UserError
from ctxseg.io import read_label
from ctxseg.metrics import ConfusionMatrix

FORMATS = ("trainid", "cityscapes")


def _cityscapes_key(stem: str) -> str | None:
    parts = stem.split("_")
    if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
        return "_".join(parts[:3])
    return None


class PredictionFinder:
    """Indexes every *.png under a folder once, then finds the file for a sample (see the module docstring).

    Args:
        root: the folder of prediction PNGs (searched recursively).
    """

    def __init__(self, root: Path):
        self.root = root
        self.by_rel: dict[str, Path] = {}
        self.by_stem: dict[str, list[Path]] = defaultdict(list)
        self.by_city_key: dict[str, list[Path]] = defaultdict(list)
        for p in sorted(root.rglob("*.png")):
            rel = p.relative_to(root).with_suffix("").as_posix()
            self.by_rel[rel] = p
            self.by_stem[p.stem].append(p)
            key = _cityscapes_key(p.stem)
            if key:
                self.by_city_key[key].append(p)

    def find(self, sample: Sample) -> tuple[Path | None, list[Path]]:
        """(the file, or None; and the candidates when several match)."""
        if sample.name in self.by_rel:
            return self.by_rel[sample.name], []
        stem = Path(sample.name).name
        found = self.by_stem.get(stem, [])
        if not found:
            key = _cityscapes_key(stem)
            found = self.by_city_key.get(key, []) if key else []
        if len(found) == 1:
            return found[0], []
        return None, list(found)


def read_prediction(path: Path) -> np.ndarray:
    """A prediction PNG as its stored values (palette PNGs give their indices)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16", "I;16B"):
                raise UserError(
                    f"{path}: a prediction must be a single-channel (or palette) PNG of class ids, got mode {im.mode}"
                )
            return np.array(im)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated / corrupt: name the file
        raise UserError(f"{path}: cannot read the prediction ({type(e).__name__}: {e})") from None


def _format_lut(fmt: str, index: PreparedIndex) -> np.ndarray | None:
    if fmt == "trainid":
        return None
    if fmt == "cityscapes":
        if index.meta.get("num_classes") != 19:
            raise UserError(
                f"--format cityscapes needs a 19-class Cityscapes index; {index.root} has "
                f"{index.meta.get('num_classes')} classes"
            )
        from ctxseg.data.prepare.cityscapes import id_to_trainid_lut

        lut = np.full(65536, 255, np.uint8)
        lut[:256] = id_to_trainid_lut()
        return lut
    raise UserError(f"Unknown --format '{fmt}'; choose from {', '.join(FORMATS)}")


def score_predictions(
    index: PreparedIndex,
    split: str,
    pred_dir: Path,
    fmt: str = "trainid",
    workers: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ConfusionMatrix, dict, dict]:
    """Returns (confusion matrix, per-image mIoU {sample name: value or None}, {sample name: prediction file})."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise UserError(f"--predictions {pred_dir} is not a folder")
    lut = _format_lut(fmt, index)
    samples = [s for s in index.samples(split) if s.label is not None]
    if not samples:
        raise UserError(f"Split '{split}' of {index.root} has no ground-truth labels to score against")
    finder = PredictionFinder(pred_dir)
    matched: dict[str, Path] = {}
    missing, ambiguous = [], []
    for s in samples:
        path, several = finder.find(s)
        if path is not None:
            matched[s.name] = path
        elif several:
            ambiguous.append(f"{s.name}: {', '.join(str(p.relative_to(pred_dir)) for p in several[:4])}")
        else:
            missing.append(s.name)
    if ambiguous:
        raise UserError(
            f"{len(ambiguous)} sample(s) match several prediction files in {pred_dir}: " + "; ".join(ambiguous[:5])
        )
    if missing:
        raise UserError(
            f"{len(missing)} of {len(samples)} sample(s) of split '{split}' have no prediction in {pred_dir}, "
            f"e.g. {', '.join(missing[:5])} (expected <name>.png, <image stem>.png or, for Cityscapes, "
            f"<city>_<seq>_<frame>*.png)"
        )
    meta = index.meta
    c, ignore, reduce_zero = int(meta["num_classes"]), index.ignore_index, bool(meta.get("reduce_zero_label", False))
    cm = ConfusionMatrix(c, ignore)

    def load(s: Sample):
        pred = read_prediction(matched[s.name])
        try:
            gt = read_label(s.label)
        except UserError:
            raise
        if pred.shape != gt.shape:
            raise UserError(
                f"{matched[s.name]}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                f"its ground truth {s.label} is {gt.shape[1]}x{gt.shape[0]}"
            )
        if lut is not None:
            pred = lut[pred.astype(np.int64).clip(0, len(lut) - 1)]
        gt = gt.astype(np.int64)
        if reduce_zero:
            from ctxseg.data.dataset import reduce_zero_label

            gt = reduce_zero_label(gt)
        return s, torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(gt.astype(np.int64))

    per_image: dict[str, float | None] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k, (s, pred, gt) in enumerate(pool.map(load, samples)):
            m = cm.update_full(pred, gt).double()
            tp = torch.diag(m)[:c]
            union = m[:c].sum(1) + m[:, :c].sum(0) - tp
            present = union > 0
            per_image[s.name] = float((tp[present] / union[present]).mean()) if present.any() else None
            if progress:
                progress(k + 1, len(samples))
    return cm, per_image, {k: str(v) for k, v in matched.items()}
