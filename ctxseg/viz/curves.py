"""Training curves from runs' log.jsonl: loss terms, learning rate, validation metrics.

One picture per quantity (every run that logged it overlaid, one colour per run) plus an
overview grid of all of them. Training records carry `loss`, `loss_*` terms and `lr`;
evaluation records carry `val/*` metrics (see ctxseg.engine.trainer).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ctxseg.errors import UserError
from ctxseg.viz.confusion import _plt, _save

# bookkeeping fields that are not curves worth plotting
SKIP = {"step", "time_per_iter", "eta_s", "elapsed_s", "epoch"}


def read_log(path: Path) -> list[dict]:
    """Records of a run folder's log.jsonl (or the file itself); a torn last line is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.jsonl"
    if not path.is_file():
        raise UserError(f"No training log at {path}")
    records = []
    lines = path.read_text().splitlines()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:  # a run still writing (or killed mid-line)
                continue
            raise UserError(f"{path}:{k + 1} is not valid JSON") from None
    return records


def series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values) for every numeric key; non-finite values are dropped."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        step = r.get("step")
        if step is None:
            continue
        for k, v in r.items():
            if k in SKIP or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            xs, ys = out.setdefault(k, ([], []))
            xs.append(int(step))
            ys.append(float(v))
    return out


def ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average (alpha = weight of the past; 0 = no smoothing)."""
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * acc + (1 - alpha) * v
        out.append(acc)
    return out


def _order(keys) -> list[str]:
    def rank(k: str):
        if k == "loss":
            return (0, k)
        if k.startswith("loss"):
            return (1, k)
        if k == "lr":
            return (2, k)
        if k.startswith("val/"):
            return (3, "" if k == "val/mIoU" else k)
        return (4, k)

    return sorted(keys, key=rank)


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)


def plot_curves(runs: dict[str, list[dict]], out_dir: Path, smooth: float = 0.0) -> list[tuple[Path, str]]:
    """Write one PNG per quantity and `curves.png` (all of them); returns [(path, caption)], overview first."""
    plt = _plt()
    data = {label: series(recs) for label, recs in runs.items()}
    keys = _order({k for s in data.values() for k in s})
    if not keys:
        raise UserError("The logs hold no numeric records to plot (has training logged a step yet?)")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def draw(ax, key):
        for i, (label, s) in enumerate(data.items()):
            if key not in s:
                continue
            xs, ys = s[key]
            c = colors[i % len(colors)]
            smoothed = smooth > 0 and key.startswith("loss") and len(ys) > 2
            ax.plot(
                xs,
                ema(ys, smooth) if smoothed else ys,
                color=c,
                label=label,
                marker="o" if len(xs) < 30 else None,
                ms=3,
            )
            if smoothed:
                ax.plot(xs, ys, color=c, alpha=0.25, lw=0.8)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        if len(data) > 1:
            ax.legend(fontsize=7)

    written = []
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        draw(ax, key)
    for ax in axes.ravel()[len(keys) :]:
        ax.axis("off")
    fig.suptitle(" vs ".join(runs), fontsize=11)
    fig.tight_layout()
    written.append((_save(fig, Path(out_dir) / "curves.png", plt), "all curves"))
    for key in keys:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        draw(ax, key)
        fig.tight_layout()
        written.append((_save(fig, Path(out_dir) / f"{_safe(key)}.png", plt), key))
    return written
