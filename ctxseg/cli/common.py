"""Options and helpers shared by subcommands."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

out = Console()

SetOption = typer.Option(
    None, "--set", help="Override a recipe key, e.g. [cyan]--set train.optimizer.lr=0.02[/]. Repeatable."
)


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
