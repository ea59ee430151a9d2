"""`ctxseg eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import torch
import typer
from rich.progress import Progress

from ctxseg.cli.common import SetOption, metrics_table, out
from ctxseg.data.index import PreparedIndex
from ctxseg.engine.checkpoint import load_model
from ctxseg.engine.evaluate import evaluate
from ctxseg.engine.settings import InferenceSettings
from ctxseg.engine.runs import resolve_checkpoint
from ctxseg.io import write_json


def eval_cmd(
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="A .safetensors checkpoint (default: best of runs/latest)."),
    run: Optional[str] = typer.Option(None, "--run", help="Run folder whose best checkpoint to use."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Prepared index to evaluate on (default: the recipe's)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split (default: the recipe's val split)."),
    ms_flip: bool = typer.Option(False, "--ms-flip", help="Multi-scale (recipe eval.ms_scales) + horizontal flip."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Comma-separated scales, e.g. 0.75,1.0,1.25."),
    flip: Optional[bool] = typer.Option(None, "--flip/--no-flip", help="Horizontal-flip test-time augmentation."),
    mode: Optional[str] = typer.Option(None, "--mode", help="whole | slide (default: the recipe's)."),
    save_preds: bool = typer.Option(True, "--save-preds/--no-save-preds", help="Write prediction PNGs for `ctxseg viz`."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: <run>/eval)."),
    set: Optional[List[str]] = SetOption,
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N images."),
):
    """Evaluate a checkpoint: aAcc, mIoU, mAcc and per-class IoU/Acc (confusion matrix, mmseg rules).

    Examples:

      [cyan]ctxseg eval[/]                      best checkpoint of runs/latest

      [cyan]ctxseg eval --ms-flip[/]            multi-scale + flip

      [cyan]ctxseg eval -c model.safetensors --data-root data/cityscapes --mode slide[/]
    """
    ckpt_path = resolve_checkpoint(checkpoint, run)
    overrides = list(set or [])
    if data_root:
        overrides.append(f"data.root='{data_root}'")
    if mode:
        overrides.append(f"eval.mode='{mode}'")
    model, recipe, extra = load_model(ckpt_path, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    index = PreparedIndex.open(recipe.data.root)
    split = split or recipe.data.val_split
    settings = InferenceSettings.from_recipe(recipe, ms_flip, [float(s) for s in scales.split(",")] if scales else None, flip,
                                             flip_pairs=index.flip_pairs)
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    target = out_dir or run_dir / "eval"
    pred_dir = target / "predictions" if save_preds else None
    with Progress(transient=True) as bar:
        task = bar.add_task("eval", total=None)
        cm, per_image = evaluate(model, recipe, index, split, settings, device, pred_dir=pred_dir, limit=limit,
                                 progress=lambda d, t: bar.update(task, completed=d, total=t))
    summary = cm.summary(index.classes)
    result = {"aAcc": summary["aAcc"], "mIoU": summary["mIoU"], "mAcc": summary["mAcc"],
              "IoU": {k: v["IoU"] for k, v in summary["per_class"].items()},
              "Acc": {k: v["Acc"] for k, v in summary["per_class"].items()},
              "checkpoint": str(ckpt_path), "recipe": recipe.name, "data_root": str(recipe.data.root), "split": split,
              "inference": settings.to_dict(), "num_images": len(per_image), "per_image_mIoU": per_image,
              "confusion_matrix": cm.mat.tolist()}
    write_json(target / "metrics.json", result)
    if pred_dir is not None:
        samples = {s.name: {"image": str(s.image), "label": str(s.label) if s.label else None} for s in index.samples(split)}
        write_json(target / "predictions.json", {"data_root": str(recipe.data.root), "split": split, "predictions": str(pred_dir),
                                                 "samples": {n: samples[n] for n in per_image} if per_image else samples})
        from ctxseg.viz.sources import set_latest_predictions

        set_latest_predictions(target / "predictions.json")
    out.print(metrics_table(summary, f"{recipe.name} on {split} ({'ms+flip' if ms_flip else settings.mode})"))
    pub = recipe.published
    ref = pub.miou_ms if (ms_flip and pub.miou_ms is not None) else pub.miou
    line = f"mIoU [bold]{100 * summary['mIoU']:.2f}[/]"
    if ref is not None:
        line += f"   published {ref:.2f} ({pub.paper} {pub.table})".rstrip()
    out.print(line)
    out.print(f"metrics: {target / 'metrics.json'}" + (f"\npredictions: {pred_dir}" if pred_dir else ""))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
