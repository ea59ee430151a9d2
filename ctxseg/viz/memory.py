"""`ctxseg viz memory`: pictures of an MCIBI memory bank from a checkpoint.

- memory_similarity.png: class-to-class cosine similarity of the memory vectors (K*S x K*S)
- memory_pca.png: 2-D PCA projection of the memory vectors, coloured by class (slots share a colour)
Classes whose memory is still all zeros (never seen in training) are left out and listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ctxseg.errors import UserError


def memory_from_checkpoint(path: Path) -> tuple[torch.Tensor, list[str]]:
    from ctxseg.engine.checkpoint import read_checkpoint

    state, recipe, _ = read_checkpoint(path)
    keys = [k for k in state if k.endswith("memory.memory") or k == "memory"]
    if not keys:
        raise UserError(f'{path} holds no MCIBI memory (recipe without [[model.plugins]] type = "mcibi")')
    memory = state[keys[0]].float()
    names = [str(i) for i in range(memory.shape[0])]
    try:
        from ctxseg.data.index import PreparedIndex

        classes = PreparedIndex.open(recipe.data.root).classes
        if len(classes) == memory.shape[0]:
            names = list(classes)
    except Exception:  # noqa: BLE001 - class names are a nicety; the dataset may not be prepared here
        pass
    return memory, names


def plot_memory(memory: torch.Tensor, names: list[str], out_dir: Path) -> tuple[list[Path], list[str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k, s, c = memory.shape
    used = [i for i in range(k) if bool(memory[i].abs().sum() > 0)]
    if not used:
        raise UserError("The memory is all zeros (an untrained model): nothing to draw")
    vecs = memory[used].reshape(-1, c)
    cls = np.repeat(np.array(used), s)
    unit = torch.nn.functional.normalize(vecs, dim=1)
    sim = (unit @ unit.t()).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [names[i] + (f"/{j}" if s > 1 else "") for i in used for j in range(s)]

    size = min(24, 4 + 0.12 * len(labels))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(sim, cmap="viridis", vmin=-1 if sim.min() < 0 else 0, vmax=1)
    if len(labels) <= 60:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(f"MCIBI memory: cosine similarity ({len(used)} of {k} classes, {s} slot(s) each)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    heat = out_dir / "memory_similarity.png"
    fig.savefig(heat, dpi=120)
    plt.close(fig)

    centered = vecs - vecs.mean(0, keepdim=True)
    if centered.shape[0] >= 2:
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        xy = (
            (centered @ v[:2].t()).numpy()
            if v.shape[0] >= 2
            else np.c_[(centered @ v[:1].t()).numpy(), np.zeros(len(cls))]
        )
    else:
        xy = np.zeros((1, 2))
    fig, ax = plt.subplots(figsize=(8, 8))
    cmap = plt.get_cmap("hsv", max(k, 2))
    ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(i) for i in cls], s=30, edgecolors="k", linewidths=0.3)
    if len(used) <= 60:
        for (x, y), i in zip(xy, cls):
            ax.annotate(names[i], (x, y), fontsize=6, alpha=0.8)
    ax.set_title("MCIBI memory: PCA of the class vectors")
    fig.tight_layout()
    pca = out_dir / "memory_pca.png"
    fig.savefig(pca, dpi=120)
    plt.close(fig)
    unused = [names[i] for i in range(k) if i not in used]
    return [heat, pca], unused
