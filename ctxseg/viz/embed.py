"""`ctxseg viz embed`: 2-D projection of sampled pixel embeddings, coloured by ground-truth class.

The ContrastiveSeg paper's t-SNE figure: a cross-entropy model's features vs a contrast model's
embeddings, side by side. Per checkpoint:
- the embedding is the contrast plug-in's `embed` (its projection head, L2-normalised) when the
  model has one (`with_embed` makes the plug-in emit it in eval), else the decode head's `feats`,
  L2-normalised over channels so both panels live on the unit sphere;
- labels are downsampled to the embedding's grid with legacy nearest (as the contrast loss does);
- pixels are sampled balanced per class (at most `per_class` of each class present, across the
  images, one seeded draw), ignore pixels never;
- the points are projected to 2-D with t-SNE (scikit-learn), UMAP (umap-learn) or PCA (numpy).
Outputs: embed.png (one panel per checkpoint, a legend of class names), embed_points.json (the 2-D
points and their classes, for scripts and tests) and index.html.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctxseg.errors import UserError

METHODS = ("auto", "tsne", "umap", "pca")


@dataclass
class EmbedSample:
    """Sampled pixel embeddings of one checkpoint.

    Args:
        name: panel title.
        source: what was sampled: "contrast embed" or "decode-head feats".
        points: [N, D] float32 embeddings, unit-norm rows.
        labels: [N] int64 class ids of the sampled pixels.
    """

    name: str  # panel title
    source: str  # "contrast embed" | "decode-head feats"
    points: np.ndarray  # [N, D] float32, unit rows
    labels: np.ndarray  # [N] int64 class ids


# ------------------------------------------------------------------------------------------------
# embeddings


def embedding_map(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """[1, D, h, w] L2-normalised pixel embedding of a normalised image batch, and its source."""
    plugins = getattr(model, "plugins", None)
    # the first plug-in that can emit an `embed` output in eval (pixel contrast's projection)
    plugin = next((p for p in plugins.values() if hasattr(p, "with_embed")), None) if plugins is not None else None
    use_embed = plugin is not None and hasattr(plugin, "with_embed")
    if use_embed:
        plugin.with_embed = True
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        if use_embed:
            plugin.with_embed = False
    if use_embed and "embed" in out:
        return out["embed"].float(), "contrast embed"
    return F.normalize(out["feats"].float(), p=2, dim=1), "decode-head feats"


def sample_balanced(
    emb: list[np.ndarray], labels: list[np.ndarray], num_classes: int, ignore_index: int, per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """At most `per_class` random pixels of each class present, pooled over the images.

    emb: per image [D, h, w]; labels: per image [h, w] (already on the embedding grid)."""
    feats = np.concatenate([e.reshape(e.shape[0], -1).T for e in emb])  # [P, D]
    labs = np.concatenate([lab.reshape(-1) for lab in labels]).astype(np.int64)
    valid = (labs >= 0) & (labs < num_classes) & (labs != ignore_index)
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labs[valid]):
        idx = np.flatnonzero(labs == c)
        picks.append(rng.choice(idx, size=min(per_class, idx.size), replace=False) if idx.size > per_class else idx)
    if not picks:
        raise UserError("No labelled pixels in the chosen images (all ignore?): nothing to plot")
    sel = np.concatenate(picks)
    return feats[sel].astype(np.float32), labs[sel]


def collect(
    checkpoint: Path,
    data_root: Path | None,
    split: str | None,
    num_images: int,
    per_class: int,
    max_side: int,
    seed: int,
):
    """Run a checkpoint over the first `num_images` images of its recipe's val split and sample."""
    from ctxseg.data.index import PreparedIndex
    from ctxseg.data.openseg_pipeline import normalize_input
    from ctxseg.engine.checkpoint import load_model
    from ctxseg.io import read_image
    from ctxseg.losses.contrast import downsample_labels
    from ctxseg.viz.sources import DatasetInfo

    model, recipe, _ = load_model(checkpoint)
    root = data_root or Path(recipe.data.root)
    index = PreparedIndex.open(root)
    split = split or recipe.data.val_split
    samples = [s for s in index.samples(split) if s.label is not None][:num_images]
    if not samples:
        raise UserError(f"Split '{split}' of {root} has no labelled images")
    info = DatasetInfo(root, recipe.data.num_classes)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    embs, labs, source = [], [], ""
    for s in samples:
        img = read_image(s.image)
        gt = info.ground_truth(s.label)
        scale = min(1.0, max_side / max(img.shape[:2]))  # big images: downscale (a picture, not an eval)
        x = torch.from_numpy(normalize_input(img, recipe.data)).unsqueeze(0).to(device)
        y = torch.from_numpy(gt)[None]
        if scale < 1.0:
            size = (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        emb, source = embedding_map(model, x)
        embs.append(emb[0].cpu().numpy())
        labs.append(downsample_labels(y, tuple(emb.shape[-2:]))[0].numpy())
    points, labels = sample_balanced(embs, labs, recipe.data.num_classes, info.ignore, per_class, seed)
    return EmbedSample(recipe.name or checkpoint.stem, source, points, labels), info


# ------------------------------------------------------------------------------------------------
# projection


def resolve_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, got '{method}'")
    has_sklearn = importlib.util.find_spec("sklearn") is not None
    if method == "auto":
        return "tsne" if has_sklearn else "pca"
    if method == "tsne" and not has_sklearn:
        raise UserError("--method tsne needs scikit-learn: pip install 'ctxseg[viz]' (or use --method pca)")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise UserError("--method umap needs umap-learn: pip install umap-learn (or use --method pca / tsne)")
    return method


def project_2d(x: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2]."""
    x = x.astype(np.float64)
    if len(x) < 3:
        raise UserError(f"Only {len(x)} sampled pixels: too few to project")
    if method == "pca":
        xc = x - x.mean(0, keepdims=True)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        xy = xc @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
        return xy
    if method == "tsne":
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        # OpenMP spin-waiting makes t-SNE 10x slower on a busy machine with all threads: use half the cores
        with threadpool_limits(limits=max(1, min(4, (os.cpu_count() or 2) // 2))):
            return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed).fit_transform(x)
    raise UserError(f"Unknown projection method '{method}'")


# ------------------------------------------------------------------------------------------------
# picture


def plot_embeddings(
    panels: list[tuple[EmbedSample, np.ndarray]], classes: list[str], palette, method: str, dest: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    def colour(c: int):
        return tuple(v / 255 for v in palette[c]) if c < len(palette) else (0.5, 0.5, 0.5)

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2, 6), squeeze=False)
    present = sorted({int(c) for s, _ in panels for c in np.unique(s.labels)})
    for ax, (s, xy) in zip(axes[0], panels):
        ax.scatter(xy[:, 0], xy[:, 1], c=[colour(int(c)) for c in s.labels], s=6, alpha=0.8, linewidths=0)
        ax.set_title(f"{s.name}\n{s.source}, {len(s.labels)} pixels", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    name = lambda c: classes[c] if c < len(classes) else str(c)  # noqa: E731
    handles = [Line2D([], [], marker="o", linestyle="", markersize=6, color=colour(c), label=name(c)) for c in present]
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, ncol=max(1, len(present) // 30 + 1))
    fig.suptitle(f"pixel embeddings, {method.upper()}, coloured by ground truth")
    fig.tight_layout(rect=(0, 0, 1 - 0.12 * (len(present) // 30 + 1), 0.95))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=100)
    plt.close(fig)
    return dest
