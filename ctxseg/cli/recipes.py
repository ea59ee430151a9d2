"""`ctxseg recipes list|show`."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer
from rich.syntax import Syntax
from rich.table import Table

from ctxseg.cli.common import SetOption, out
from ctxseg.config import list_recipes, load_recipe, to_toml

recipes_app = typer.Typer(help="List and show the bundled recipes.", no_args_is_help=True)


@recipes_app.command("list")
def list_cmd(filter: Optional[str] = typer.Argument(None, help="Only names containing this text.")):
    """List recipes with the published mIoU they reproduce.

    Example: [cyan]ctxseg recipes list ocrnet[/]
    """
    table = Table(title="ctxseg recipes")
    for col in ("name", "dataset", "iters", "published mIoU (ss / ms)", "description"):
        table.add_column(col)
    for name, path in list_recipes().items():
        if filter and filter not in name:
            continue
        r = load_recipe(path)
        pub = r.published
        score = " / ".join("—" if v is None else f"{v:.2f}" for v in (pub.miou, pub.miou_ms)) if (pub.miou or pub.miou_ms) else ""
        iters = str(r.train.iters) if r.train.epochs is None else f"{r.train.epochs:g} ep"
        table.add_row(name, r.data.dataset, iters, score, r.description)
    out.print(table)


@recipes_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="Recipe name or path to a .toml file."), set: Optional[List[str]] = SetOption):
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled).

    Example: [cyan]ctxseg recipes show demo --set train.optimizer.lr=0.02[/]
    """
    r = load_recipe(name, set)
    text = to_toml(r.to_dict())
    if out.is_terminal:  # colours for a reader; soft_wrap: a long line is never split into two
        out.print(Syntax(text, "toml", theme="ansi_dark", background_color="default"), soft_wrap=True)
    else:  # piped or redirected (`> my.toml`): the exact TOML text, nothing wrapped or styled
        sys.stdout.write(text + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")
