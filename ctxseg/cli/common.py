"""Options and helpers shared by subcommands."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from ctxseg.errors import UserError

out = Console()

SetOption = typer.Option(
    None, "--set", help="Override a recipe key, e.g. [cyan]--set train.optimizer.lr=0.02[/]. Repeatable."
)


def weights_option():
    return typer.Option(
        None,
        "--weights",
        help="[cyan]official[/]: the released model of [cyan]--recipe[/] from the weights registry "
        "(downloaded, verified and converted once, then cached), instead of --checkpoint.",
    )


def weights_recipe_option():
    return typer.Option(
        None, "--recipe", "-r", help="With [cyan]--weights official[/]: the recipe whose released model to use."
    )


def official_checkpoint(weights: str | None, recipe: str | None, *given: str | None) -> str | None:
    """The checkpoint `--weights official --recipe R` names (its path in the cache, fetched and converted
    by `ctxseg.weights.get(R)` when needed), or None without --weights. `given`: the values of the
    options it replaces (-c, --run): giving one of them as well is an error, as is a missing recipe."""
    if weights is None:
        if recipe is not None:
            raise UserError(
                f"--recipe {recipe} is only used with --weights official (a checkpoint carries its own recipe)"
            )
        return None
    if weights != "official":
        raise UserError(
            f"--weights takes 'official' (the recipe's released model), got '{weights}'; "
            "a checkpoint file goes in --checkpoint / -c"
        )
    if any(g for g in given):
        raise UserError("--weights official replaces --checkpoint / --run: give one or the other, not both")
    if not recipe:
        raise UserError(
            "--weights official needs --recipe NAME: the recipe whose released model to use, "
            "e.g. --weights official --recipe ocrnet-hr48-cityscapes-80k (`ctxseg weights list` shows them)"
        )
    import importlib

    weights_mod = importlib.import_module("ctxseg.weights")  # the registry and downloader load only when asked for
    return str(weights_mod.get(_registry_name(recipe)))


def official_published(weights: str | None, recipe: str | None) -> list[str]:
    """With `--weights official --recipe R`: overrides carrying the published numbers of R's registry
    row into the checkpoint's recipe (printed beside the measured ones); [] otherwise."""
    if weights != "official" or not recipe:
        return []
    import importlib

    return importlib.import_module("ctxseg.weights").published_overrides(_registry_name(recipe))


def _registry_name(recipe: str) -> str:
    """A recipe file's name (what the registry's rows refer to); a bundled recipe's name as given."""
    from pathlib import Path

    if Path(recipe).suffix == ".toml":
        from ctxseg.config import load_recipe

        return load_recipe(recipe).name
    return recipe


def runs_dir_option():
    from ctxseg.engine.runs import RUNS_DIR

    return typer.Option(RUNS_DIR, "--runs-dir", help="Folder that holds run folders and the [cyan]latest[/] pointer.")


def metrics_table(summary: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Acc", justify="right")
    for name, v in summary["per_class"].items():
        fmt = lambda x: "—" if x is None else f"{100 * x:.2f}"  # noqa: E731
        table.add_row(name, fmt(v["IoU"]), fmt(v["Acc"]))
    table.add_section()
    table.add_row("[bold]mean", f"[bold]{100 * summary['mIoU']:.2f}", f"[bold]{100 * summary['mAcc']:.2f}")
    table.add_row("aAcc", f"{100 * summary['aAcc']:.2f}", "")
    return table
