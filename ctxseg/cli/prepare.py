"""`ctxseg prepare NAME`: raw dataset -> prepared index."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import Progress

from ctxseg.cli.common import out
from ctxseg.errors import UserError


# dataset name -> (module, function); real datasets register in ctxseg.data.prepare.registry
def _preparers() -> dict:
    from ctxseg.data.prepare import PREPARERS

    return PREPARERS


def prepare(
    name: str = typer.Argument(
        ...,
        help=(
            "Dataset: synthetic, cityscapes, ade20k, coco-stuff10k, coco-stuff164k, voc-aug, pascal-context, "
            "pascal-context-60, lip, camvid."
        ),
    ),
    root: Path | None = typer.Option(
        None, "--root", help="Folder with the official raw download (not needed for synthetic)."
    ),
    out_dir: Path | None = typer.Option(None, "--out", help="Where the prepared index goes (default: data/<name>)."),
    workers: int = typer.Option(2, "--workers", help="Parallel worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic dataset."),
    check: bool = typer.Option(
        False,
        "--check",
        help=(
            "Only scan an existing prepared index's labels (each file once) for unreadable files and out-of-range "
            "values."
        ),
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Fail (exit 2) when split sizes differ from the official counts."
    ),
):
    """Turn a dataset into a prepared index (splits/*.txt, meta.json, converted labels).

    Examples:

      [cyan]ctxseg prepare synthetic[/]

      [cyan]ctxseg prepare cityscapes --root ~/data/cityscapes-raw[/]
    """
    preparers = _preparers()
    if name not in preparers:
        import difflib

        close = difflib.get_close_matches(name, list(preparers), n=1)
        raise UserError(
            f"Unknown dataset '{name}'"
            + (f"; did you mean '{close[0]}'?" if close else f"; choose from {', '.join(preparers)}")
        )
    target = out_dir or Path("data") / name
    if check:
        from ctxseg.data.prepare import check_prepared

        bad = check_prepared(target)
        if bad:
            from rich.markup import escape

            for path, problem in bad:  # every file, once
                out.print(f"[red]{escape(path)}[/]: {escape(problem)}", soft_wrap=True)
            raise UserError(
                f"{len(bad)} label file(s) in {target} are unreadable or hold out-of-range values (listed above)"
            )
        out.print(f"[green]labels OK[/] in {target}")
        return
    from ctxseg.data.prepare.common import BadFilesError

    try:
        with Progress(transient=True) as bar:
            task = bar.add_task(f"prepare {name}", total=None)
            meta = preparers[name](
                root=root,
                out=target,
                workers=workers,
                seed=seed,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except BadFilesError as e:
        from rich.markup import escape

        for msg in e.messages:  # one line per bad file, never wrapped inside a path
            out.print(f"[red]bad file[/]: {escape(msg)}", soft_wrap=True)
        raise UserError(e.summary) from None
    sizes = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    out.print(f"[green]prepared[/] {name} -> {target}  ({meta['num_classes']} classes; {sizes})")
    run = meta.get("run")
    if run:
        out.print(f"labels: {run['converted']} converted, {run['skipped']} already done (skipped)")
    for w in meta.get("warnings", []):
        out.print(f"[yellow]warning[/]: {w}")
    if strict and meta.get("warnings"):
        raise UserError(
            f"{len(meta['warnings'])} problem(s) with {name} (see the warnings above); --strict makes them fatal"
        )


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
