"""Where pictures come from: the newest prediction manifest (written by eval and predict), and the
class names / palette / label conventions of a prepared index (DatasetInfo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctxseg.data.index import PreparedIndex
from ctxseg.engine.runs import RUNS_DIR
from ctxseg.errors import UserError
from ctxseg.io import read_label, write_text

POINTER = "latest-predictions"


def set_latest_predictions(manifest: Path, runs_dir: Path | None = None) -> None:
    write_text((runs_dir or RUNS_DIR) / POINTER, str(Path(manifest).resolve()) + "\n")


def latest_predictions(runs_dir: Path | None = None) -> Path:
    pointer = (runs_dir or RUNS_DIR) / POINTER
    if not pointer.is_file():
        raise UserError("No predictions yet: run `ctxseg eval` or `ctxseg predict` first, or pass --predictions")
    return Path(pointer.read_text().strip())


def read_manifest(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "predictions.json"
    if not path.is_file():
        raise UserError(f"Prediction manifest not found: {path}")
    return json.loads(path.read_text())


class DatasetInfo:
    """Class names, palette and label conventions of a prepared index (generated when it is missing).

    Args:
        data_root: the prepared index folder; None, or a folder without a readable meta.json, gives
            numbered class names, the default palette, ignore index 255 and no reduce_zero_label.
        num_classes: number of generated class names without an index (default 256).
    """

    def __init__(self, data_root: str | Path | None, num_classes: int | None = None):
        try:
            index = PreparedIndex.open(data_root) if data_root else None
        except UserError:
            index = None
        self.named = index is not None or num_classes is not None  # classes known (else 256 generated)
        if index is not None:
            self.classes, self.palette, self.ignore = index.classes, index.palette, index.ignore_index
            self.reduce_zero_label = bool(index.meta.get("reduce_zero_label"))
        else:
            from ctxseg.viz.palette import default_palette

            n = num_classes or 256
            self.classes, self.palette, self.ignore, self.reduce_zero_label = (
                [str(i) for i in range(n)],
                default_palette(n),
                255,
                False,
            )

    def legend(self) -> list[tuple[str, list[int]]]:
        """[(class name, RGB)] of every class, for the HTML galleries; empty when the classes are unknown."""
        if not self.named:
            return []
        return [(name, list(self.palette[i])) for i, name in enumerate(self.classes) if i < len(self.palette)]

    def ground_truth(self, path: str | Path) -> np.ndarray:
        label = read_label(path).astype(np.int64)
        if self.reduce_zero_label:
            from ctxseg.data.dataset import reduce_zero_label

            label = reduce_zero_label(label).astype(np.int64)
        return label
