"""`ctxseg predict`."""

from __future__ import annotations

from pathlib import Path

import typer

from ctxseg.cli.common import SetOption, official_checkpoint, out, weights_option, weights_recipe_option
from ctxseg.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def collect_images(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(image, relative output stem) for files and folders (recursively)."""
    found = []
    for p in inputs:
        if p.is_dir():
            found += [
                (f, f.relative_to(p).with_suffix(""))
                for f in sorted(p.rglob("*"))
                if f.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif p.is_file():
            found.append((p, Path(p.stem)))
        else:
            raise UserError(f"Input not found: {p}")
    if not found:
        raise UserError(f"No images found in {', '.join(map(str, inputs))}")
    return found


def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders."),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", "-c", help="Checkpoint (default: best of runs/latest)."
    ),
    out_dir: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output folder."),
    color: bool = typer.Option(False, "--color", help="Also write palette-coloured PNGs (<name>_color.png)."),
    ms_flip: bool = typer.Option(False, "--ms-flip", help="Multi-scale + flip test-time augmentation."),
    fmt: str = typer.Option(
        "trainid", "--format", help="trainid (class indices) or a dataset's submission format, e.g. cityscapes."
    ),
    set: list[str] | None = SetOption,
    weights: str | None = weights_option(),
    recipe_name: str | None = weights_recipe_option(),
):
    """Write label PNGs (class index per pixel) for images or folders.

    Examples:

      [cyan]ctxseg predict data/synthetic/images/val --out preds --color[/]

      [cyan]ctxseg predict -c model.safetensors street.jpg --format cityscapes --out submit/[/]

      [cyan]ctxseg predict --weights official --recipe ocrnet-hr48-cityscapes-80k street.jpg --color[/]
    """
    import torch
    from rich.progress import Progress

    from ctxseg.data.meta import dataset_meta
    from ctxseg.engine.checkpoint import load_model
    from ctxseg.engine.evaluate import predict_scores
    from ctxseg.engine.runs import resolve_checkpoint
    from ctxseg.engine.settings import InferenceSettings
    from ctxseg.io import read_image, write_json, write_png
    from ctxseg.viz.palette import colorize

    encode = _encoder(fmt)
    images = collect_images(inputs)  # before any download or model build: a typo fails at once
    checkpoint = official_checkpoint(weights, recipe_name, checkpoint) or checkpoint
    ckpt_path = resolve_checkpoint(checkpoint)
    model, recipe, _ = load_model(ckpt_path, set)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        from ctxseg.engine.allocator import keep_freed_memory

        keep_freed_memory()  # every image's activations would be faulted in anew otherwise
    model.to(device)
    # the prepared index's palette and flip pairs, else the dataset's own (LIP's pairs), else generated
    meta = dataset_meta(recipe)
    palette, flip_pairs, classes = meta.palette, meta.flip_pairs, meta.classes
    settings = InferenceSettings.from_recipe(recipe, ms_flip, flip_pairs=flip_pairs)
    manifest = {}
    with Progress(transient=True) as bar:
        task = bar.add_task("predict", total=len(images))
        for path, stem in images:
            img = read_image(path)
            scores = predict_scores(model, recipe, img, settings, device)
            pred = scores.argmax(1)[0].cpu().numpy()
            name, label = encode(stem, pred)
            write_png(out_dir / name, label)
            if color:
                write_png(out_dir / f"{stem}_color.png", colorize(pred, palette, recipe.data.num_classes)[..., ::-1])
            manifest[str(stem)] = {
                "image": str(path.resolve()),
                "label": None,
                "prediction": str((out_dir / name).resolve()),
            }
            bar.advance(task)
    write_json(
        out_dir / "predictions.json",
        {
            "checkpoint": str(ckpt_path),
            "format": fmt,
            "samples": manifest,
            "predictions": str(out_dir.resolve()),
            "data_root": str(recipe.data.root),
        },
    )
    if color:
        _write_legend(out_dir, classes, palette, recipe)
    from ctxseg.viz.sources import set_latest_predictions

    set_latest_predictions(out_dir / "predictions.json")
    out.print(f"[green]wrote[/] {len(images)} predictions to {out_dir}")


def _write_legend(out_dir: Path, classes: list[str] | None, palette, recipe) -> None:
    """legend.png (and legend.json) beside the colour PNGs: the dataset's class names and colours."""
    from ctxseg.io import write_json, write_png
    from ctxseg.viz.palette import default_palette
    from ctxseg.viz.palette_img import palette_image

    n = recipe.data.num_classes
    classes = classes or [str(i) for i in range(n)]
    palette = [list(c) for c in (palette or default_palette(n))]
    ignore = recipe.data.ignore_index
    write_png(out_dir / "legend.png", palette_image(classes, palette, ignore, title=f"{recipe.data.dataset} classes"))
    write_json(out_dir / "legend.json", {"classes": classes, "palette": palette, "ignore_index": ignore})


def _encoder(fmt: str):
    import numpy as np

    if fmt == "trainid":
        return lambda stem, pred: (f"{stem}.png", pred.astype(np.uint8 if pred.max() < 256 else np.uint16))
    from ctxseg.data.prepare import SUBMISSION_FORMATS

    if fmt not in SUBMISSION_FORMATS:
        raise UserError(f"Unknown --format '{fmt}'; choose trainid or one of {', '.join(SUBMISSION_FORMATS)}")
    return SUBMISSION_FORMATS[fmt]


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
