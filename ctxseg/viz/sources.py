"""Where pictures come from: the newest prediction manifest (written by eval and predict)."""

from __future__ import annotations

import json
from pathlib import Path

from ctxseg.engine.runs import RUNS_DIR
from ctxseg.errors import UserError
from ctxseg.io import write_text

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
