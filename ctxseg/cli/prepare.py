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
            "pascal-context-60, lip, camvid, or folder (your own images and masks, see docs/datasets.md)."
        ),
    ),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="Folder with the official raw download (not needed for synthetic); folder: your images and masks.",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Where the prepared index goes (default: data/<name>; folder: data/<root folder name>)."
    ),
    workers: int = typer.Option(2, "--workers", help="Parallel worker processes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic dataset; folder: of the --val-fraction split."),
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
    layout: str | None = typer.Option(
        None, "--layout", help="folder: plain, cvat, voc or roboflow (default: detected).", rich_help_panel="folder"
    ),
    mask_suffix: str | None = typer.Option(
        None, "--mask-suffix", help="folder: mask stem = image stem + this (e.g. _mask).", rich_help_panel="folder"
    ),
    splits: Path | None = typer.Option(
        None, "--splits", help="folder: a folder of train.txt / val.txt / test.txt stems.", rich_help_panel="folder"
    ),
    palette: Path | None = typer.Option(
        None,
        "--palette",
        help="folder: colour of each class (labelmap `name:r,g,b::` lines, `r,g,b name` lines or JSON).",
        rich_help_panel="folder",
    ),
    classes: Path | None = typer.Option(
        None, "--classes", help="folder: class names, one a line or a JSON list.", rich_help_panel="folder"
    ),
    ignore_index: int = typer.Option(
        255, "--ignore-index", help="folder: mask value that is not a class (stored as 255).", rich_help_panel="folder"
    ),
    reduce_zero_label: bool = typer.Option(
        False,
        "--reduce-zero-label",
        help="folder: value 0 is 'other' (ignored), class k is value k+1 (mmseg semantics).",
        rich_help_panel="folder",
    ),
    val_fraction: float = typer.Option(
        0.1,
        "--val-fraction",
        help="folder: share of labelled images put in val when the export has no splits (with --seed).",
        rich_help_panel="folder",
    ),
):
    """Turn a dataset into a prepared index (splits/*.txt, meta.json, converted labels).

    Examples:

      [cyan]ctxseg prepare synthetic[/]

      [cyan]ctxseg prepare cityscapes --root ~/data/cityscapes-raw[/]

      [cyan]ctxseg prepare folder --root ~/exports/my-cvat-export --out data/mydata[/]
    """
    preparers = _preparers()
    if name not in preparers:
        import difflib

        close = difflib.get_close_matches(name, list(preparers), n=1)
        raise UserError(
            f"Unknown dataset '{name}'"
            + (f"; did you mean '{close[0]}'?" if close else f"; choose from {', '.join(preparers)}")
        )
    folder_options = {
        "layout": layout,
        "mask_suffix": mask_suffix,
        "splits": splits,
        "palette": palette,
        "classes": classes,
        "ignore_index": ignore_index,
        "reduce_zero_label": reduce_zero_label,
        "val_fraction": val_fraction,
    }
    defaults = {"ignore_index": 255, "reduce_zero_label": False, "val_fraction": 0.1}
    given = [k for k, v in folder_options.items() if v != defaults.get(k)]
    if name != "folder" and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags}: only for `ctxseg prepare folder` (your own images and masks)")
    if out_dir is None and name == "folder" and root is not None:
        target = Path("data") / Path(root).expanduser().resolve().name
    else:
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
            kwargs = folder_options if name == "folder" else {}
            meta = preparers[name](
                root=root,
                out=target,
                workers=workers,
                seed=seed,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                **kwargs,
            )
    except BadFilesError as e:
        from rich.markup import escape

        for msg in e.messages:  # one line per bad file, never wrapped inside a path
            out.print(f"[red]{getattr(e, 'label', 'bad file')}[/]: {escape(msg)}", soft_wrap=True)
        raise UserError(e.summary) from None
    sizes = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    out.print(f"[green]prepared[/] {name} -> {target}  ({meta['num_classes']} classes; {sizes})")
    run = meta.get("run")
    if run:
        out.print(f"labels: {run['converted']} converted, {run['skipped']} already done (skipped)")
    if name == "folder":
        from rich.markup import escape

        for note in meta.get("notes", []):
            out.print(f"[cyan]note[/]: {escape(note)}", soft_wrap=True)
    for w in meta.get("warnings", []):
        out.print(f"[yellow]warning[/]: {w}")
    if strict and meta.get("warnings"):
        raise UserError(
            f"{len(meta['warnings'])} problem(s) with {name} (see the warnings above); --strict makes them fatal"
        )


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare)
