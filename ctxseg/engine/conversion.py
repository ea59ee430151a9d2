"""Converting a foreign checkpoint into a ctxseg checkpoint: the driver shared by `ctxseg convert
FORMAT` and `ctxseg weights get` (ctxseg.weights), so both write the same tensors.

The mechanism and the key tables live in ctxseg.convert (which builds no model); this module
builds the recipe's model, applies the table strictly and writes the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ctxseg.errors import UserError


def run_conversion(
    fmt: str,
    source: Path,
    recipe_name: str,
    output: Path,
    keymap_for: Callable,
    overrides: list[str] | None = None,
    console=None,
):
    """Build the recipe's model, convert `source` into it strictly, and write a ctxseg checkpoint."""
    from rich.console import Console
    from rich.table import Table

    from ctxseg.config import load_recipe
    from ctxseg.convert.base import convert_state_dict, load_foreign
    from ctxseg.engine.checkpoint import save_weights
    from ctxseg.models.segmentor import build_segmentor

    console = console or Console()
    recipe = load_recipe(recipe_name, overrides)
    # model construction must not download anything: drop pretrained for the target skeleton
    backbone = dict(recipe.model.backbone)
    backbone.pop("pretrained", None)
    recipe.model.backbone = backbone
    model = build_segmentor(recipe)
    src = load_foreign(source)
    state, report = convert_state_dict(src, model, keymap_for(recipe, src))
    table = Table(title=f"convert {fmt}: {source.name} -> {output.name}")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("source tensors", str(report.source_keys))
    table.add_row("mapped", str(report.mapped))
    table.add_row("ignored (listed)", str(len(report.ignored)))
    table.add_row("target tensors", str(len(model.state_dict())))
    table.add_row("kept at ctxseg init", str(len(report.defaulted)))
    console.print(table)
    if report.ignored:
        console.print("ignored: " + ", ".join(report.ignored[:20]) + (" ..." if len(report.ignored) > 20 else ""))
    if not report.ok:
        raise UserError(
            f"Conversion is not exact ({len(report.unused)} unused, {len(report.missing)} missing, "
            f"{len(report.shape_mismatches)} shape mismatches); nothing written:\n{report.problems()}"
        )
    model.load_state_dict(state, strict=True)
    save_weights(output, model, recipe, {"converted_from": f"{fmt}:{source.name}"})
    console.print(f"[green]wrote[/] {output}")
    return report


def keymap_for_format(fmt: str, console) -> Callable:
    """The format's key-map builder (ssseg's prints which class rows it drops)."""
    import importlib

    module = importlib.import_module(f"ctxseg.convert.{fmt}")
    if fmt != "ssseg":
        return module.keymap_for

    def keymap_reporting(recipe, src: dict):
        selection = module.class_rows(recipe, src)
        if selection is not None:  # part of the report: which class rows are dropped
            console.print(
                f"182 -> 171 classes (ssseg COCO-Stuff ids -> ctxseg's cocostuff classes): "
                f"ignored class rows: {', '.join(selection[1])}"
            )
        return module.keymap_for(recipe, src)

    return keymap_reporting
