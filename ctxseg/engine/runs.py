"""Run folders and the `runs/latest` pointer that lets each step default to the previous one.

runs/<recipe>-<timestamp>/
  recipe.toml          the resolved recipe
  log.jsonl            one JSON object per logged step / evaluation
  checkpoints/iter_<n>.safetensors (+ .state.pt)   periodic weights + resume state
  best.safetensors     best val mIoU so far
  final.safetensors    weights at the end of training
  eval/                metrics.json, predictions/ (label PNGs), predictions.json
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from ctxseg.errors import UserError

RUNS_DIR = Path(os.environ.get("CTXSEG_RUNS", "runs"))


def safe_run_name(name: str) -> str:
    """A recipe name as a single folder name: no path separators, no `..`, no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "run"
    return cleaned[:100]


def new_run_dir(name: str, runs_dir: Path | None = None) -> Path:
    """Create `<runs>/<name>-<timestamp>[-k]/checkpoints` atomically under a name no one else holds.

    `mkdir` either creates the folder or fails because it exists, so two runs started in the
    same second (or on two machines sharing the folder) each get their own folder."""
    runs_dir = Path(runs_dir or RUNS_DIR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{safe_run_name(name)}-{stamp}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for k in range(1, 10_000):
            path = runs_dir / (base if k == 1 else f"{base}-{k}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            (path / "checkpoints").mkdir()
            return path
    except OSError as e:
        raise UserError(
            f"Cannot create a run folder in {runs_dir}: {e.strerror or e}. Choose a writable folder with --runs-dir."
        ) from None
    raise UserError(f"Cannot create a run folder in {runs_dir}: every name {base}-k is taken")


def set_latest(run_dir: Path) -> None:
    """Atomically point runs/latest at run_dir (a relative symlink)."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}.{threading.get_ident()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, latest)
    except OSError as e:
        raise UserError(f"Cannot update {latest}: {e.strerror or e}") from None


def latest_run(runs_dir: Path | None = None) -> Path:
    runs_dir = runs_dir or RUNS_DIR
    latest = runs_dir / "latest"
    if not latest.exists():
        raise UserError(f"No run found ({latest} does not exist). Train first: `ctxseg train --recipe demo`")
    return latest.resolve()


def iteration_checkpoints(run_dir: Path) -> list[Path]:
    def it(p: Path) -> int:
        m = re.search(r"iter_(\d+)", p.name)
        return int(m.group(1)) if m else -1

    return sorted((run_dir / "checkpoints").glob("iter_*.safetensors"), key=it)


def best_checkpoint(run_dir: Path) -> Path:
    for name in ("best.safetensors", "final.safetensors"):
        if (run_dir / name).is_file():
            return run_dir / name
    ckpts = iteration_checkpoints(run_dir)
    if ckpts:
        return ckpts[-1]
    raise UserError(f"No checkpoint in {run_dir}")


def resolve_checkpoint(checkpoint: str | None, run: str | None = None) -> Path:
    """--checkpoint wins; else the best checkpoint of --run (default runs/latest)."""
    if checkpoint:
        p = Path(checkpoint)
        if p.is_dir():
            return best_checkpoint(p)
        if not p.is_file():
            raise UserError(f"Checkpoint not found: {p}")
        return p
    return best_checkpoint(Path(run).resolve() if run else latest_run())
