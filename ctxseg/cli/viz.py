"""`ctxseg viz ...`: pictures. Each subcommand prints where it wrote them, with an index.html."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ctxseg.cli.common import SetOption, official_checkpoint, out, weights_option, weights_recipe_option
from ctxseg.errors import UserError

if TYPE_CHECKING:  # numpy is imported where a command runs: `--help` stays fast
    import numpy as np

viz_app = typer.Typer(help="Pictures of predictions, data and training.", no_args_is_help=True)


# --------------------------------------------------------------------------------------------
# shared helpers


def _prediction(sample: dict, pred_root: Path, name: str) -> np.ndarray:
    import numpy as np

    from ctxseg.io import read_label

    return read_label(sample.get("prediction") or pred_root / f"{name}.png").astype(np.int64)


def _done(target: Path, count: int, what: str) -> None:
    out.print(f"[green]wrote[/] {count} {what} to {target} (open {target / 'index.html'})")


def _eval_metrics(metrics: Path | None) -> tuple[Path, dict]:
    """An eval's metrics.json: the given file/folder, else beside the newest predictions, else runs/latest/eval."""
    from ctxseg.viz.sources import latest_predictions

    candidates = []
    if metrics is not None:
        candidates = [metrics / "metrics.json", metrics / "eval" / "metrics.json"] if metrics.is_dir() else [metrics]
    else:
        try:
            candidates.append(latest_predictions().parent / "metrics.json")
        except UserError:
            pass
        try:
            from ctxseg.engine.runs import latest_run

            candidates.append(latest_run() / "eval" / "metrics.json")
        except UserError:
            pass
    for c in candidates:
        if c.is_file():
            return c, json.loads(c.read_text())
    where = ", ".join(map(str, candidates)) or "runs/latest/eval"
    raise UserError(f"No eval metrics.json found ({where}): run `ctxseg eval` first, or pass --metrics")


# --------------------------------------------------------------------------------------------
# overlay


@viz_app.command("overlay")
def overlay_cmd(
    predictions: Path | None = typer.Option(
        None, "--predictions", "-p", help="predictions.json or its folder (default: the newest, from eval or predict)."
    ),
    gt: bool = typer.Option(False, "--gt", help="Overlay the ground truth instead of the prediction."),
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="Run --images through this checkpoint (default with --images: best of runs/latest).",
    ),
    images: Path | None = typer.Option(None, "--images", help="An image file or folder to run through --checkpoint."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: <predictions>/../overlays, or <run>/viz/overlays)."
    ),
    limit: int = typer.Option(24, "--limit", help="At most this many images."),
    alpha: float = typer.Option(0.5, "--alpha", help="Label opacity."),
    set: list[str] | None = SetOption,
    weights: str | None = weights_option(),
    recipe_name: str | None = weights_recipe_option(),
):
    """Blend images with predicted (or ground-truth) labels in the dataset palette, with a legend of the
    classes present; ignore pixels are hatched.

    Examples:

      [cyan]ctxseg viz overlay[/]                         the newest predictions of `ctxseg eval` / `ctxseg predict`

      [cyan]ctxseg viz overlay --gt[/]                    their ground truth

      [cyan]ctxseg viz overlay -c best.safetensors --images photos/[/]   a folder run through a checkpoint

      [cyan]ctxseg viz overlay --weights official --recipe ocrnet-hr48-cityscapes-80k --images photos/[/]
    """
    from ctxseg.io import read_image, write_png
    from ctxseg.viz.html import write_index
    from ctxseg.viz.overlay import overlay
    from ctxseg.viz.sources import DatasetInfo, latest_predictions, read_manifest

    if not 0 <= alpha <= 1:
        raise UserError(f"--alpha must be in [0, 1], got {alpha}")
    if weights is not None or recipe_name is not None:
        if images is None:
            raise UserError("--weights official needs --images (a file or folder to run through the model)")
        if gt:
            raise UserError("--gt needs an eval's predictions (images run through a checkpoint have no ground truth)")
        official = official_checkpoint(weights, recipe_name, checkpoint)
        _overlay_checkpoint(official, images, out_dir, limit, alpha, list(set or []), official=True)
        return
    if checkpoint or images:
        if gt:
            raise UserError("--gt needs an eval's predictions (images run through a checkpoint have no ground truth)")
        if images is None:
            raise UserError("--checkpoint needs --images (a file or folder)")
        _overlay_checkpoint(checkpoint, images, out_dir, limit, alpha, list(set or []))
        return
    manifest_path = predictions or latest_predictions()
    manifest = read_manifest(manifest_path)
    pred_root = Path(manifest["predictions"])
    info = DatasetInfo(manifest.get("data_root"))
    target = out_dir or pred_root.parent / ("overlays_gt" if gt else "overlays")
    written = []
    for name, s in list(manifest["samples"].items())[:limit]:
        if gt:
            if not s.get("label"):
                raise UserError(f"--gt needs ground truth, but {name} has no label")
            label = info.ground_truth(s["label"])
        else:
            label = _prediction(s, pred_root, name)
        pic = overlay(read_image(s["image"]), label, info.palette, info.classes, info.ignore, alpha)
        path = target / f"{name}.png"
        write_png(path, pic)
        written.append(path)
    write_index(
        target,
        [(p, p.relative_to(target).with_suffix("").as_posix()) for p in written],
        title="ground truth" if gt else "predictions",
        note=f"from {manifest_path}",
        legend=info.legend(),
    )
    _done(target, len(written), "overlays")


def _overlay_checkpoint(
    checkpoint: str | None,
    images: Path,
    out_dir: Path | None,
    limit: int,
    alpha: float,
    overrides: list[str],
    official: bool = False,
) -> None:
    import torch

    from ctxseg.cli.predict import collect_images
    from ctxseg.data.index import PreparedIndex
    from ctxseg.engine.checkpoint import load_model
    from ctxseg.engine.evaluate import predict_scores
    from ctxseg.engine.runs import resolve_checkpoint
    from ctxseg.engine.settings import InferenceSettings
    from ctxseg.io import read_image, write_png
    from ctxseg.viz.html import write_index
    from ctxseg.viz.overlay import overlay
    from ctxseg.viz.sources import DatasetInfo

    ckpt = resolve_checkpoint(checkpoint)
    model, recipe, _ = load_model(ckpt, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    info = DatasetInfo(recipe.data.root, recipe.data.num_classes)
    try:  # LIP's left/right class pairs for the flip, from the prepared dataset when there is one
        flip_pairs = PreparedIndex.open(recipe.data.root).flip_pairs
    except UserError:
        flip_pairs = []
    # the recipe's full eval settings (scales, flip, flip pairs), the same as `ctxseg eval` and predict
    settings = InferenceSettings.from_recipe(recipe, flip_pairs=flip_pairs)
    if official:  # not beside the checkpoint: that is the shared weights cache
        from ctxseg.engine.runs import RUNS_DIR, safe_run_name

        run_dir = RUNS_DIR / f"official-{safe_run_name(recipe.name)}"
    else:
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    target = out_dir or run_dir / "viz" / "overlays"
    written = []
    for path, stem in collect_images([images])[:limit]:
        img = read_image(path)
        scores = predict_scores(model, recipe, img, settings, device)
        pred = scores.argmax(1)[0].cpu().numpy()
        dest = target / f"{stem}.png"
        write_png(dest, overlay(img, pred, info.palette, info.classes, info.ignore, alpha))
        written.append((dest, str(stem)))
    write_index(
        target, written, title=f"{recipe.name}: predictions", note=f"{images} through {ckpt}", legend=info.legend()
    )
    _done(target, len(written), "overlays")


# --------------------------------------------------------------------------------------------
# compare


@viz_app.command("compare")
def compare_cmd(
    predictions: Path | None = typer.Option(
        None, "--predictions", "-p", help="An eval's predictions.json or its folder (default: the newest)."
    ),
    metrics: Path | None = typer.Option(
        None, "--metrics", "-m", help="The eval's metrics.json for --worst (default: beside the predictions)."
    ),
    worst: int | None = typer.Option(None, "--worst", help="Only the N images with the lowest per-image mIoU."),
    names: str | None = typer.Option(None, "--names", help="Comma-separated sample names to show."),
    limit: int = typer.Option(24, "--limit", help="At most this many images (without --worst)."),
    tile_width: int = typer.Option(480, "--tile-width", help="Width of each of the four tiles, in pixels."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: <eval>/compare or compare_worst)."
    ),
):
    """One picture per image: image | ground truth | prediction | error map, with the image's mIoU.

    Examples:

      [cyan]ctxseg viz compare[/]               the newest eval's predictions

      [cyan]ctxseg viz compare --worst 10[/]    its 10 images with the lowest mIoU
    """
    import numpy as np

    from ctxseg.io import read_image, write_png
    from ctxseg.viz.compare import compare_panel, per_image_miou
    from ctxseg.viz.html import write_index
    from ctxseg.viz.sources import DatasetInfo, latest_predictions, read_manifest

    manifest_path = predictions or latest_predictions()
    manifest = read_manifest(manifest_path)
    pred_root = Path(manifest["predictions"])
    samples = manifest["samples"]
    if not any(s.get("label") for s in samples.values()):
        raise UserError(
            f"{manifest_path} has no ground truth (from `ctxseg predict`?): compare needs an eval's predictions"
        )
    per_image: dict[str, float] = {}
    if worst is not None or metrics is not None:
        _, m = _eval_metrics(
            metrics or Path(manifest_path if Path(manifest_path).is_dir() else Path(manifest_path).parent)
        )
        per_image = {k: v for k, v in m.get("per_image_mIoU", {}).items() if v is not None}
    if worst is not None:
        if worst < 1:
            raise UserError("--worst must be at least 1")
        ranked = sorted((v, k) for k, v in per_image.items() if k in samples and not math.isnan(v))
        if not ranked:
            raise UserError("The metrics.json has no per-image mIoU for these predictions (re-run `ctxseg eval`)")
        chosen = [k for _, k in ranked[:worst]]
    elif names:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in samples]
        if unknown:
            raise UserError(f"Unknown sample names: {', '.join(unknown[:5])}")
    else:
        chosen = list(samples)[:limit]
    info = DatasetInfo(manifest.get("data_root"))
    target = out_dir or pred_root.parent / ("compare_worst" if worst else "compare")
    written = []
    for rank, name in enumerate(chosen):
        s = samples[name]
        if not s.get("label"):
            raise UserError(f"{name} has no ground truth")
        gt = info.ground_truth(s["label"])
        pred = _prediction(s, pred_root, name)
        miou = per_image.get(name)
        if miou is None:
            miou = per_image_miou(np.where(pred < len(info.classes), pred, 0), gt, len(info.classes), info.ignore)
        pic = compare_panel(
            read_image(s["image"]), gt, pred, info.palette, info.classes, info.ignore, name, miou, tile_width
        )
        stem = f"{rank + 1:03d}_{name.replace('/', '_')}" if worst else name  # worst: flat, in rank order
        dest = target / f"{stem}.png"
        write_png(dest, pic)
        miou_text = "n/a" if math.isnan(miou) else f"{100 * miou:.1f}"
        written.append((dest, f"{name} — mIoU {miou_text}"))
    title = f"the {len(written)} worst images by mIoU" if worst else "image | ground truth | prediction | errors"
    write_index(
        target,
        written,
        title=title,
        note=f"from {manifest_path}; red = wrong, hatched = ignore",
        max_width=1400,
        legend=info.legend(),
    )
    _done(target, len(written), "comparisons")


# --------------------------------------------------------------------------------------------
# confusion


@viz_app.command("confusion")
def confusion_cmd(
    metrics: Path | None = typer.Option(
        None, "--metrics", "-m", help="An eval's metrics.json, eval folder or run folder (default: the newest eval)."
    ),
    top: int = typer.Option(
        30, "--top", help="Show at most this many classes (those in the largest confusions); 0 = all."
    ),
    pairs: int = typer.Option(20, "--pairs", help="How many of the largest confusions to list."),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <eval>/confusion)."),
):
    """The row-normalised confusion matrix of an eval as a heatmap with class names, and its top confusions.

    Examples:

      [cyan]ctxseg viz confusion[/]                         the newest eval

      [cyan]ctxseg viz confusion -m runs/x/eval --top 0[/]  every class (large figure)
    """
    import numpy as np

    from ctxseg.io import write_json
    from ctxseg.viz.confusion import plot_confusion, plot_top_confusions, top_confusions
    from ctxseg.viz.html import write_index

    path, m = _eval_metrics(metrics)
    if "confusion_matrix" not in m:
        raise UserError(f"{path} has no confusion_matrix (written by `ctxseg eval`)")
    mat = np.asarray(m["confusion_matrix"], np.int64)
    classes = list(m.get("IoU", {}))
    if len(classes) != len(mat):
        classes = [str(i) for i in range(len(mat))]
    target = out_dir or path.parent / "confusion"
    title = f"{m.get('recipe', '')} on {m.get('split', '')}, mIoU {100 * m.get('mIoU', float('nan')):.2f}"
    pics = [
        (plot_confusion(mat, classes, target / "confusion.png", top, title), "row-normalised confusion matrix"),
        (plot_top_confusions(mat, classes, target / "top_confusions.png", pairs, title), "largest confusions"),
    ]
    write_json(target / "top_confusions.json", top_confusions(mat, classes, pairs))
    write_index(
        target, pics, title="confusion", note=f"from {path}; rows: ground truth, columns: prediction", max_width=1200
    )
    _done(target, len(pics), "pictures")


# --------------------------------------------------------------------------------------------
# curves


@viz_app.command("curves")
def curves_cmd(
    runs: list[Path] | None = typer.Argument(None, help="Run folders or log.jsonl files (default: runs/latest)."),
    smooth: float = typer.Option(0.0, "--smooth", help="EMA smoothing of loss curves, 0 (off) to <1."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: <run>/curves; runs/curves for several runs)."
    ),
):
    """Loss terms, learning rate and validation mIoU over iterations; several runs overlaid.

    Examples:

      [cyan]ctxseg viz curves[/]                             runs/latest

      [cyan]ctxseg viz curves runs/a runs/b --smooth 0.6[/]  two runs compared
    """
    from ctxseg.engine.runs import RUNS_DIR, latest_run
    from ctxseg.viz.curves import plot_curves, read_log
    from ctxseg.viz.html import write_index

    if not 0 <= smooth < 1:
        raise UserError(f"--smooth must be in [0, 1), got {smooth}")
    paths = list(runs or [latest_run()])
    logs: dict[str, list[dict]] = {}
    for p in paths:
        p = p.resolve()
        label = (p.parent if p.is_file() else p).name
        while label in logs:
            label += "'"
        logs[label] = read_log(p)
    first = paths[0].resolve()
    target = out_dir or (
        (first.parent if first.is_file() else first) / "curves" if len(paths) == 1 else RUNS_DIR / "curves"
    )
    pics = plot_curves(logs, target, smooth)
    write_index(target, pics, title="training curves", note=", ".join(logs), max_width=900)
    _done(target, len(pics), "curves")


# --------------------------------------------------------------------------------------------
# palette


@viz_app.command("palette")
def palette_cmd(
    recipe: str | None = typer.Option(
        None, "--recipe", "-r", help="A recipe: its prepared index, else its dataset's class table."
    ),
    data_root: Path | None = typer.Option(None, "--data-root", help="A prepared index folder (meta.json)."),
    rows: int = typer.Option(40, "--rows", help="Classes per column."),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: runs/viz/palette-<dataset>)."
    ),
    set: list[str] | None = SetOption,
):
    """The dataset's classes and colours as a legend picture.

    Examples:

      [cyan]ctxseg viz palette --recipe demo[/]

      [cyan]ctxseg viz palette --data-root data/ade20k[/]
    """
    from ctxseg.data.index import PreparedIndex
    from ctxseg.engine.runs import RUNS_DIR
    from ctxseg.io import write_png
    from ctxseg.viz.html import write_index
    from ctxseg.viz.palette_img import classes_from_recipe, palette_image

    if (recipe is None) == (data_root is None):
        raise UserError("Pass exactly one of --recipe or --data-root")
    if rows < 1:
        raise UserError("--rows must be at least 1")
    if data_root is not None:
        index = PreparedIndex.open(data_root)
        classes, palette, ignore, source = (
            index.classes,
            index.palette,
            index.ignore_index,
            str(data_root / "meta.json"),
        )
        name = index.meta.get("name") or data_root.name
    else:
        from ctxseg.config import load_recipe

        rec = load_recipe(recipe, list(set or []))
        classes, palette, ignore, source = classes_from_recipe(rec)
        name = rec.data.dataset
    target = out_dir or RUNS_DIR / "viz" / f"palette-{name}"
    dest = target / "palette.png"
    write_png(dest, palette_image(classes, palette, ignore, rows, title=f"{name}: {len(classes)} classes"))
    write_index(target, [(dest, f"{name}: {len(classes)} classes ({source})")], title=f"{name} palette", max_width=1400)
    _done(target, 1, "palette picture")


# --------------------------------------------------------------------------------------------
# memory (MCIBI) and embed (pixel embeddings)


@viz_app.command("memory")
def memory_cmd(
    checkpoint: Path | None = typer.Argument(
        None, help="ctxseg checkpoint of an MCIBI model (.safetensors); or --weights official --recipe R."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: <checkpoint folder>/memory)."
    ),
    weights: str | None = weights_option(),
    recipe_name: str | None = weights_recipe_option(),
):
    """Pictures of the MCIBI memory bank: class-to-class cosine similarity and a PCA projection.

    Examples:

      [cyan]ctxseg viz memory runs/latest/best.safetensors[/]

      [cyan]ctxseg viz memory --weights official --recipe mcibi-deeplabv3-r50-ade20k[/]
    """
    from ctxseg.viz.memory import memory_from_checkpoint, plot_memory

    official = official_checkpoint(weights, recipe_name, str(checkpoint) if checkpoint else None)
    if official:
        from ctxseg.engine.runs import RUNS_DIR, safe_run_name

        checkpoint, default_out = Path(official), RUNS_DIR / f"official-{safe_run_name(recipe_name)}" / "memory"
    elif checkpoint is None:
        raise UserError("Pass a checkpoint (ctxseg viz memory CHECKPOINT) or --weights official --recipe NAME")
    else:
        default_out = checkpoint.parent / "memory"
    memory, names = memory_from_checkpoint(checkpoint)
    paths, unused = plot_memory(memory, names, out_dir or default_out)
    if unused:
        out.print(f"{len(unused)} class(es) never updated (all-zero memory, left out): {', '.join(unused[:20])}")
    for p in paths:
        out.print(f"[green]wrote[/] {p}")


@viz_app.command("embed")
def embed_cmd(
    checkpoint: list[str] | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="A checkpoint (.safetensors or run folder); twice for two panels side by side (e.g. CE vs contrast).",
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="A prepared index folder (default: the checkpoint recipe's data.root)."
    ),
    split: str | None = typer.Option(
        None, "--split", help="Split to take images from (default: the recipe's val split)."
    ),
    images: int = typer.Option(4, "--images", "-n", help="How many images of the split."),
    per_class: int = typer.Option(200, "--per-class", help="At most this many pixels per class."),
    method: str = typer.Option(
        "auto", "--method", "-m", help="tsne, umap, pca, or auto (t-SNE when scikit-learn is installed, else PCA)."
    ),
    max_side: int = typer.Option(1024, "--max-side", help="Downscale images whose longer side exceeds this."),
    seed: int = typer.Option(0, "--seed", help="Seed of the pixel sampling and the projection."),
    out_dir: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: runs/viz/embed-<recipe>)."),
    weights: str | None = weights_option(),
    recipe_name: str | None = weights_recipe_option(),
):
    """t-SNE / UMAP / PCA of pixel embeddings sampled per ground-truth class, like the ContrastiveSeg
    paper's figure. A contrast model shows its projection-head embedding; others their decode-head
    features (L2-normalised).

    Examples:

      [cyan]ctxseg viz embed -c ce.safetensors -c contrast.safetensors[/]   side by side

      [cyan]ctxseg viz embed -c runs/x --method pca --images 8[/]

      [cyan]ctxseg viz embed --weights official --recipe contrast-hrnet48 --data-root data/cityscapes[/]
    """
    import re

    import numpy as np

    from ctxseg.engine.runs import RUNS_DIR, resolve_checkpoint
    from ctxseg.io import write_json
    from ctxseg.viz.embed import collect, plot_embeddings, project_2d, resolve_method
    from ctxseg.viz.html import write_index

    official = official_checkpoint(weights, recipe_name, *(checkpoint or []))
    checkpoint = [official] if official else list(checkpoint or [])
    if not 1 <= len(checkpoint) <= 2:
        raise UserError(f"Pass one or two --checkpoint (or --weights official --recipe NAME), got {len(checkpoint)}")
    if images < 1 or per_class < 1 or max_side < 16:
        raise UserError("--images and --per-class must be at least 1, --max-side at least 16")
    chosen = resolve_method(method)
    paths = [resolve_checkpoint(c) for c in checkpoint]
    panels, info = [], None
    for p in paths:
        sample, sample_info = collect(p, data_root, split, images, per_class, max_side, seed)
        info = info or sample_info
        panels.append((sample, project_2d(sample.points, chosen, seed)))
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-vs-".join(Path(s.name).stem for s, _ in panels))
    target = out_dir or RUNS_DIR / "viz" / f"embed-{stem}"
    dest = plot_embeddings(panels, info.classes, info.palette, chosen, target / "embed.png")
    write_json(
        target / "embed_points.json",
        {
            "method": chosen,
            "classes": info.classes,
            "panels": [
                {
                    "checkpoint": str(p),
                    "name": s.name,
                    "source": s.source,
                    "labels": s.labels.tolist(),
                    "xy": np.round(xy, 5).tolist(),
                }
                for p, (s, xy) in zip(paths, panels)
            ],
        },
    )
    caption = " | ".join(f"{s.name} ({s.source})" for s, _ in panels)
    write_index(
        target,
        [(dest, caption)],
        title="pixel embeddings",
        note=f"{chosen.upper()} of pixels sampled per ground-truth class ({per_class} at most) from {images} images",
        max_width=1400,
    )
    _done(target, 1, "embedding plot")
    print(f"embedding plot: {dest}")


def register(app: typer.Typer) -> None:
    app.add_typer(viz_app, name="viz")
