"""`ctxseg eval`."""

from __future__ import annotations

from pathlib import Path

import typer

from ctxseg.cli.common import (
    SetOption,
    metrics_table,
    official_checkpoint,
    official_published,
    out,
    weights_option,
    weights_recipe_option,
)
from ctxseg.errors import UserError


def parse_scales(text: str) -> list[float]:
    """`--scales 0.75,1.0,1.25` -> [0.75, 1.0, 1.25]; anything else is one clear error."""
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        scales = []
    if not scales or not all(0 < s <= 16 for s in scales):  # (NaN fails every comparison)
        raise UserError(f"--scales expects comma-separated numbers in (0, 16], e.g. 0.75,1.0,1.25; got '{text}'")
    return scales


def eval_cmd(
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", "-c", help="A .safetensors checkpoint (default: best of runs/latest)."
    ),
    run: str | None = typer.Option(None, "--run", help="Run folder whose best checkpoint to use."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Prepared index to evaluate on (default: the recipe's)."
    ),
    split: str | None = typer.Option(None, "--split", help="Split (default: the recipe's val split)."),
    ms_flip: bool = typer.Option(False, "--ms-flip", help="Multi-scale (recipe eval.ms_scales) + horizontal flip."),
    scales: str | None = typer.Option(None, "--scales", help="Comma-separated scales, e.g. 0.75,1.0,1.25."),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Horizontal-flip test-time augmentation."),
    mode: str | None = typer.Option(None, "--mode", help="whole | slide (default: the recipe's)."),
    save_preds: bool = typer.Option(
        True, "--save-preds/--no-save-preds", help="Write prediction PNGs for `ctxseg viz`."
    ),
    out_dir: Path | None = typer.Option(None, "--out", help="Output folder (default: <run>/eval)."),
    set: list[str] | None = SetOption,
    limit: int | None = typer.Option(None, "--limit", help="Evaluate only the first N images."),
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="Score this folder of prediction PNGs against --data-root's split instead of running a model.",
    ),
    fmt: str = typer.Option(
        "trainid",
        "--format",
        help=(
            "With --predictions: trainid (the index's class ids) | cityscapes (labelIds, as submitted to the "
            "benchmark server)."
        ),
    ),
    weights: str | None = weights_option(),
    recipe_name: str | None = weights_recipe_option(),
):
    """Evaluate a checkpoint: aAcc, mIoU, mAcc and per-class IoU/Acc (confusion matrix, mmseg rules).

    Examples:

      [cyan]ctxseg eval[/]                      best checkpoint of runs/latest

      [cyan]ctxseg eval --ms-flip[/]            multi-scale + flip

      [cyan]ctxseg eval -c model.safetensors --data-root data/cityscapes --mode slide[/]

      [cyan]ctxseg eval --weights official --recipe ocrnet-hr48-cityscapes-80k --data-root data/cityscapes[/]

      [cyan]ctxseg eval --predictions submit/ --format cityscapes --data-root data/cityscapes[/]   score PNGs, no model
    """
    import torch
    from rich.progress import Progress

    from ctxseg.data.index import PreparedIndex
    from ctxseg.engine.checkpoint import load_model
    from ctxseg.engine.evaluate import PROTOCOL_FIELDS, PROTOCOL_NAMES, evaluate, published_for
    from ctxseg.engine.runs import resolve_checkpoint
    from ctxseg.engine.settings import InferenceSettings
    from ctxseg.io import write_json

    scale_list = parse_scales(scales) if scales else None  # before any slow step
    if predictions is not None:
        if checkpoint or run or weights:
            raise UserError("--predictions scores existing PNGs: leave out --checkpoint / --run / --weights")
        return _score_predictions_cmd(predictions, fmt, data_root, split, out_dir)
    if fmt != "trainid":
        raise UserError("--format is only used with --predictions")
    official = official_checkpoint(weights, recipe_name, checkpoint, run)
    ckpt_path = resolve_checkpoint(official or checkpoint, run)
    overrides = [*official_published(weights, recipe_name), *(set or [])]  # the user's --set last: it wins
    if data_root:
        overrides.append(f"data.root='{data_root}'")
    if mode:
        overrides.append(f"eval.mode='{mode}'")
    model, recipe, extra = load_model(ckpt_path, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        from ctxseg.engine.allocator import keep_freed_memory

        keep_freed_memory()  # every image's activations would be faulted in anew otherwise
    model.to(device)
    index = PreparedIndex.open(recipe.data.root)
    split = split or recipe.data.val_split
    settings = InferenceSettings.from_recipe(recipe, ms_flip, scale_list, flip, flip_pairs=index.flip_pairs)
    if official:  # not beside the checkpoint: that is the shared weights cache
        from ctxseg.engine.runs import RUNS_DIR, safe_run_name

        run_dir = RUNS_DIR / f"official-{safe_run_name(recipe.name)}"
    else:
        run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    target = out_dir or run_dir / "eval"
    pred_dir = target / "predictions" if save_preds else None
    with Progress(transient=True) as bar:
        task = bar.add_task("eval", total=None)
        cm, per_image = evaluate(
            model,
            recipe,
            index,
            split,
            settings,
            device,
            pred_dir=pred_dir,
            limit=limit,
            progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    summary = cm.summary(index.classes)
    protocol, ref = published_for(recipe, settings)
    result = {
        "aAcc": summary["aAcc"],
        "mIoU": summary["mIoU"],
        "mAcc": summary["mAcc"],
        "IoU": {k: v["IoU"] for k, v in summary["per_class"].items()},
        "Acc": {k: v["Acc"] for k, v in summary["per_class"].items()},
        "checkpoint": str(ckpt_path),
        "recipe": recipe.name,
        "data_root": str(recipe.data.root),
        "split": split,
        "inference": settings.to_dict(),
        "protocol": protocol,
        "published_mIoU": ref,
        "num_images": len(per_image),
        "per_image_mIoU": per_image,
        "confusion_matrix": cm.mat.tolist(),
    }
    write_json(target / "metrics.json", result)
    if pred_dir is not None:
        samples = {
            s.name: {"image": str(s.image), "label": str(s.label) if s.label else None} for s in index.samples(split)
        }
        write_json(
            target / "predictions.json",
            {
                "data_root": str(recipe.data.root),
                "split": split,
                "predictions": str(pred_dir),
                "samples": {n: samples[n] for n in per_image} if per_image else samples,
            },
        )
        from ctxseg.viz.sources import set_latest_predictions

        set_latest_predictions(target / "predictions.json")
    out.print(metrics_table(summary, f"{recipe.name} on {split} ({PROTOCOL_NAMES[protocol]}, {settings.mode})"))
    pub = recipe.published
    line = f"mIoU [bold]{100 * summary['mIoU']:.2f}[/] ({PROTOCOL_NAMES[protocol]})"
    if ref is not None:
        where = " ".join(x for x in (pub.paper, pub.table) if x)  # a registry row may name no paper
        line += f"   published {ref:.2f} ({PROTOCOL_NAMES[protocol]}{f'; {where}' if where else ''})"
    elif any(v is not None for v in (pub.miou, pub.miou_flip, pub.miou_ms)):
        known = ", ".join(
            f"{PROTOCOL_NAMES[p]} {getattr(pub, f):.2f}"
            for p, f in PROTOCOL_FIELDS.items()
            if getattr(pub, f) is not None
        )
        line += f"   no published number for this protocol (published: {known})"
    out.print(line)
    out.print(f"metrics: {target / 'metrics.json'}" + (f"\npredictions: {pred_dir}" if pred_dir else ""))


def _score_predictions_cmd(
    predictions: Path, fmt: str, data_root: Path | None, split: str | None, out_dir: Path | None
) -> None:
    """`ctxseg eval --predictions DIR`: the same metrics.json and table, from PNGs instead of a model."""
    from rich.progress import Progress

    from ctxseg.data.index import PreparedIndex
    from ctxseg.engine.score_predictions import score_predictions
    from ctxseg.io import write_json

    if data_root is None:
        raise UserError(
            "--predictions needs --data-root: the prepared index whose labels are the ground truth "
            "(e.g. --data-root data/cityscapes)"
        )
    index = PreparedIndex.open(data_root)
    if split is None:
        have = index.meta.get("splits", {})
        split = "val" if "val" in have else None
        if split is None:
            raise UserError(f"{data_root} has no 'val' split: pass --split (available: {', '.join(have) or 'none'})")
    predictions = Path(predictions)
    target = out_dir or predictions.parent / f"{predictions.resolve().name}_eval"
    with Progress(transient=True) as bar:
        task = bar.add_task("score", total=None)
        cm, per_image, matched = score_predictions(
            index, split, predictions, fmt, progress=lambda d, t: bar.update(task, completed=d, total=t)
        )
    summary = cm.summary(index.classes)
    c = cm.num_classes
    result = {
        "aAcc": summary["aAcc"],
        "mIoU": summary["mIoU"],
        "mAcc": summary["mAcc"],
        "IoU": {k: v["IoU"] for k, v in summary["per_class"].items()},
        "Acc": {k: v["Acc"] for k, v in summary["per_class"].items()},
        "checkpoint": None,
        "recipe": None,
        "data_root": str(data_root),
        "split": split,
        "inference": None,
        "predictions": str(predictions),
        "format": fmt,
        "num_images": len(per_image),
        "per_image_mIoU": per_image,
        "confusion_matrix": cm.mat.tolist(),
        # pixels of each class predicted outside [0, C) (misses) and valid-looking ground truth outside [0, C)
        "predicted_outside_classes": cm.full[:c, c].tolist(),
        "ground_truth_outside_classes": int(cm.full[c, :].sum()),
        "prediction_files": matched,
    }
    write_json(target / "metrics.json", result)
    out.print(metrics_table(summary, f"predictions {predictions} on {split} ({fmt})"))
    out.print(f"mIoU [bold]{100 * summary['mIoU']:.2f}[/]")
    outside = int(cm.full[:c, c].sum())
    if outside:
        out.print(
            f"[yellow]note[/]: {outside} valid pixel(s) predicted outside 0..{c - 1} count as misses"
            + (
                " (--format cityscapes maps labelIds to trainIds; void ids are misses)"
                if fmt == "cityscapes"
                else " (labelIds? try --format cityscapes)"
                if c == 19
                else ""
            )
        )
    out.print(f"metrics: {target / 'metrics.json'}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
