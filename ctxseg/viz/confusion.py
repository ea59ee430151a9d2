"""Confusion-matrix pictures (matplotlib, Agg backend) from an eval run's metrics.json.

Rows are ground truth, columns predictions, each row divided by its pixel count (so a row reads
"where do pixels of this class go"). With many classes (ADE20K 150, COCO-Stuff 171) a full
matrix is unreadable, so by default the heatmap shows only the `top` classes involved in the
largest confusions, and a second picture lists the largest confusions as bars.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxseg.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    return plt


def row_normalize(mat: np.ndarray) -> np.ndarray:
    mat = np.asarray(mat, np.float64)
    rows = mat.sum(1, keepdims=True)
    return np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)


def top_confusions(mat: np.ndarray, classes: list[str], k: int = 20) -> list[dict]:
    """The k largest off-diagonal entries of the row-normalised matrix: ground truth -> prediction."""
    norm = row_normalize(mat)
    off = norm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(off, axis=None)[::-1][:k]
    out = []
    for flat in order:
        g, p = divmod(int(flat), off.shape[1])
        if off[g, p] <= 0:
            break
        out.append(
            {"gt": classes[g], "pred": classes[p], "fraction": float(off[g, p]), "pixels": int(np.asarray(mat)[g, p])}
        )
    return out


def select_classes(mat: np.ndarray, top: int) -> list[int]:
    """Up to `top` class indices: those in the largest confusions first, then the lowest recalls;
    returned in class-index order so the picture reads like the dataset's class list."""
    n = len(mat)
    if top <= 0 or n <= top:
        return list(range(n))
    norm = row_normalize(mat)
    off = norm.copy()
    np.fill_diagonal(off, 0)
    chosen: list[int] = []
    for flat in np.argsort(off, axis=None)[::-1]:
        g, p = divmod(int(flat), n)
        if off[g, p] <= 0:
            break
        for c in (g, p):
            if c not in chosen and len(chosen) < top:
                chosen.append(c)
        if len(chosen) >= top:
            break
    recall = np.diag(norm)
    for c in np.argsort(recall):  # fill up with the worst-recalled classes
        if len(chosen) >= top:
            break
        if int(c) not in chosen:
            chosen.append(int(c))
    return sorted(chosen)


def plot_confusion(mat: np.ndarray, classes: list[str], path: Path, top: int = 30, title: str = "") -> Path:
    """Heatmap of the row-normalised matrix (restricted to `top` classes when there are more)."""
    plt = _plt()
    mat = np.asarray(mat)
    idx = select_classes(mat, top)
    norm = row_normalize(mat)[np.ix_(idx, idx)]
    names = [classes[i] for i in idx]
    n = len(idx)
    side = min(max(5.0, (0.32 if n <= 60 else 0.2) * n + 2.5), 40.0)  # inches; 150 classes -> ~3200 px
    font = 9 if n <= 30 else max(4, int(9 - n / 30))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if n <= 20:  # values in the cells while they fit
        for i in range(n):
            for j in range(n):
                if norm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * norm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="black" if norm[i, j] > 0.6 else "white",
                    )
    subset = f" — the {n} classes with the largest confusions, of {len(mat)}" if n < len(mat) else ""
    ax.set_title((title + "\n" if title else "") + f"row-normalised confusion matrix{subset}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth class's pixels")
    fig.tight_layout()
    return _save(fig, path, plt)


def plot_top_confusions(mat: np.ndarray, classes: list[str], path: Path, k: int = 20, title: str = "") -> Path:
    """Horizontal bars: the k largest 'ground truth -> prediction' fractions."""
    plt = _plt()
    pairs = top_confusions(mat, classes, k)
    fig, ax = plt.subplots(figsize=(8, max(2.0, 0.3 * len(pairs) + 1.2)))
    labels = [f"{p['gt']} → {p['pred']}" for p in pairs][::-1]
    values = [100 * p["fraction"] for p in pairs][::-1]
    ax.barh(range(len(pairs)), values, color="#c0392b")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.1f}%", va="center", fontsize=7)
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.set_xlabel("% of the ground-truth class's pixels")
    ax.set_title(
        (title + "\n" if title else "") + f"top {len(pairs)} confusions (ground truth → prediction)", fontsize=10
    )
    if not pairs:
        ax.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path, plt)


def _save(fig, path: Path, plt, dpi: int = 100) -> Path:
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return path
