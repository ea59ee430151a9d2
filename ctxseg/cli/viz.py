"""`ctxseg viz ...`: pictures. Each subcommand prints where it wrote them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ctxseg.cli.common import out
from ctxseg.data.index import PreparedIndex
from ctxseg.errors import UserError
from ctxseg.io import read_image, read_label, write_png
from ctxseg.viz.overlay import overlay
from ctxseg.viz.sources import latest_predictions, read_manifest

viz_app = typer.Typer(help="Pictures of predictions, data and training.", no_args_is_help=True)


@viz_app.command("overlay")
def overlay_cmd(
    predictions: Optional[Path] = typer.Option(None, "--predictions", "-p", help="predictions.json or its folder (default: the newest, from eval or predict)."),
    gt: bool = typer.Option(False, "--gt", help="Overlay the ground truth instead of the prediction."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: <predictions>/../overlays)."),
    limit: int = typer.Option(24, "--limit", help="At most this many images."),
    alpha: float = typer.Option(0.5, "--alpha", help="Label opacity."),
):
    """Blend images with predicted (or ground-truth) labels in the dataset palette, with a legend.

    Example: [cyan]ctxseg viz overlay[/]   (the newest predictions of `ctxseg eval` / `ctxseg predict`)
    """
    manifest_path = predictions or latest_predictions()
    manifest = read_manifest(manifest_path)
    pred_root = Path(manifest["predictions"])
    try:
        index = PreparedIndex.open(manifest["data_root"])
        classes, palette, ignore = index.classes, index.palette, index.ignore_index
    except UserError:
        n = 256
        from ctxseg.viz.palette import default_palette

        classes, palette, ignore = [str(i) for i in range(n)], default_palette(n), 255
    target = out_dir or pred_root.parent / ("overlays_gt" if gt else "overlays")
    written = []
    for name, s in list(manifest["samples"].items())[:limit]:
        if gt:
            if not s.get("label"):
                raise UserError(f"--gt needs ground truth, but {name} has no label")
            label = read_label(s["label"]).astype(np.int64)
            if index.meta.get("reduce_zero_label"):
                from ctxseg.data.dataset import reduce_zero_label

                label = reduce_zero_label(label)
        else:
            label = read_label(s.get("prediction") or pred_root / f"{name}.png").astype(np.int64)
        pic = overlay(read_image(s["image"]), label, palette, classes, ignore, alpha)
        path = target / f"{name}.png"
        write_png(path, pic)
        written.append(path)
    from ctxseg.viz.html import write_index

    write_index(target, [(p, p.stem) for p in written], title="overlays")
    out.print(f"[green]wrote[/] {len(written)} overlays to {target} (open {target / 'index.html'})")


def register(app: typer.Typer) -> None:
    app.add_typer(viz_app, name="viz")
