"""`ctxseg convert FORMAT ...`: foreign checkpoints -> ctxseg checkpoints, and exports.

The Typer commands live here; ctxseg.convert holds the mechanism (convert/base.py) and one key
table per format, which import nothing from the CLI, the engine or the models.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ctxseg.cli.common import weights_option, weights_recipe_option
from ctxseg.errors import UserError

convert_app = typer.Typer(
    help="Convert official checkpoints (mmseg, ssseg, openseg, cac) and export (onnx).", no_args_is_help=True
)

_SOURCE_HELP = {
    "mmseg": "mmsegmentation checkpoint (.pth, 0.x or 1.x).",
    "ssseg": 'sssegmentation checkpoint (.pth; its ["model"] state dict).',
    "openseg": "openseg.pytorch / ContrastiveSeg checkpoint (.pth).",
    "cac": "CAC checkpoint (.pth, mmseg 0.x container from tianzhuotao/CAC).",
}
_RECIPE_HELP = {
    "ssseg": "Recipe that describes the same model (an mcibi-* recipe).",
    "cac": "A CAC recipe describing the same model.",
}


def _foreign_command(fmt: str, summary: str, example: str):
    def command(
        source: Path = typer.Argument(..., help=_SOURCE_HELP[fmt]),
        recipe: str = typer.Option(
            ..., "--recipe", "-r", help=_RECIPE_HELP.get(fmt, "Recipe that describes the same model.")
        ),
        output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors checkpoint."),
        set: list[str] | None = typer.Option(None, "--set", help="Override a recipe key. Repeatable."),
    ):
        from rich.console import Console

        from ctxseg.engine.conversion import keymap_for_format, run_conversion

        console = Console()
        run_conversion(fmt, source, recipe, output, keymap_for_format(fmt, console), set, console=console)

    command.__doc__ = f"{summary}\n\nExample: [cyan]{example}[/]"
    command.__name__ = f"convert_{fmt}"
    return command


convert_app.command("mmseg")(
    _foreign_command(
        "mmseg",
        "Convert an mmsegmentation model-zoo checkpoint (opened with weights_only=True).",
        "ctxseg convert mmseg ocrnet_hr48_512x1024_80k_cityscapes.pth"
        " --recipe ocrnet-hr48-cityscapes-80k -o hr48.safetensors",
    )
)
convert_app.command("ssseg")(
    _foreign_command(
        "ssseg",
        "Convert an sssegmentation MCIBI checkpoint (opened with weights_only=True), memory bank included.",
        "ctxseg convert ssseg mcibi_deeplabv3_r50_ade20k.pth --recipe mcibi-deeplabv3-r50-ade20k -o mcibi.safetensors",
    )
)
convert_app.command("openseg")(
    _foreign_command(
        "openseg",
        "Convert a ContrastiveSeg / openseg.pytorch checkpoint (opened with weights_only=True).",
        "ctxseg convert openseg hrnet_w48_contrast_max_performance.pth"
        " --recipe contrast-hrnet48 -o contrast-hr48.safetensors",
    )
)
convert_app.command("cac")(
    _foreign_command(
        "cac",
        "Convert a released CAC model (opened with weights_only=True; strict key table).",
        "ctxseg convert cac deeplabv3plus_r50_cac.pth"
        " --recipe deeplabv3plus-cac-r50-ade20k-160k -o dlv3p_cac.safetensors",
    )
)


@convert_app.command("onnx")
def onnx_cmd(
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", "-c", help="A .safetensors checkpoint (default: best of runs/latest)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the .onnx file."),
    height: int | None = typer.Option(None, "--height", help="Input height (default: the recipe's crop height)."),
    width: int | None = typer.Option(None, "--width", help="Input width (default: the recipe's crop width)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch, height and width axes."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),  # ctxseg.convert.onnx.OPSET
    check: bool = typer.Option(
        True, "--check/--no-check", help="Run the export in onnxruntime and compare with PyTorch."
    ),
    set: list[str] | None = typer.Option(None, "--set", help="Override a recipe key of the checkpoint. Repeatable."),
    weights: str | None = weights_option(),
    recipe_name: str | None = weights_recipe_option(),
):
    """Export the whole-image inference graph (normalised RGB in, logits at input size out) to ONNX.

    The recipe's mean/std and the RGB channel order are recorded in the ONNX metadata_props.

    Examples:

      [cyan]ctxseg convert onnx -c runs/latest/best.safetensors -o model.onnx --height 512 --width 512[/]

      [cyan]ctxseg convert onnx --weights official --recipe ocrnet-hr48-cityscapes-80k -o ocr.onnx[/]
    """
    from ctxseg.cli.common import official_checkpoint, out
    from ctxseg.convert.onnx import check_with_onnxruntime, export_onnx
    from ctxseg.engine.checkpoint import load_model
    from ctxseg.engine.runs import resolve_checkpoint

    ckpt = resolve_checkpoint(official_checkpoint(weights, recipe_name, checkpoint) or checkpoint)
    model, recipe, _ = load_model(ckpt, list(set or []))
    h = height or recipe.data.crop_size[0]
    w = width or recipe.data.crop_size[1]
    if h < 8 or w < 8:
        raise UserError(f"--height/--width must be at least 8, got {h}x{w}")
    classes = palette = None
    try:
        from ctxseg.data.index import PreparedIndex

        index = PreparedIndex.open(recipe.data.root)
        classes, palette = index.classes, index.palette
    except UserError:  # exporting without the prepared dataset: no class names in the metadata
        pass
    export_onnx(model, recipe, output, h, w, dynamic, opset, classes, palette)
    out.print(f"[green]wrote[/] {output} ({h}x{w}{', dynamic axes' if dynamic else ''}, opset {opset})")
    if check:
        try:
            diff, scale = check_with_onnxruntime(model, recipe, output, h, w)
        except ImportError:
            out.print("[yellow]onnxruntime not installed: skipped the check (pip install 'ctxseg[onnx]')[/]")
            return
        rel = diff / max(scale, 1e-12)
        style = "green" if rel <= 1e-4 else "red"
        out.print(f"onnxruntime check: max |diff| {diff:.2e} (logit scale {scale:.3g}, relative [{style}]{rel:.2e}[/])")


def register(app: typer.Typer) -> None:
    app.add_typer(convert_app, name="convert")
