"""`ctxseg weights list|get|add`: official weights by name (registry, verified cache, one-time conversion).

Top-level imports stay free of torch: the package ctxseg.weights imports it only to convert.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ctxseg.errors import UserError

weights_app = typer.Typer(
    help="Official weights by name: list the registry, download + verify + convert, import a file.",
    no_args_is_help=True,
)


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _miou(published: dict) -> str:
    for key in ("miou", "mIoU", "miou_ss"):
        if key in published:
            return f"{published[key]}"
    return "—"


@weights_app.command("list")
def list_cmd(
    recipe: str | None = typer.Argument(None, help="Only the entries of this recipe (released and init)."),
    as_json: bool = typer.Option(False, "--json", help="Print every entry as a JSON list of objects."),
):
    """List the weights registry (built-in + CTXSEG_WEIGHTS_REGISTRY files) and what is cached.

    Example: [cyan]ctxseg weights list ocrnet-hr18-cityscapes-80k[/]
    """
    from ctxseg.weights import list_entries
    from ctxseg.weights.registry import _recipe_key, _recipe_keys

    entries = list_entries()
    if recipe is not None:
        keys = _recipe_keys(recipe)
        entries = [e for e in entries if any(keys & _recipe_keys(r) for r in e.all_recipes()) or e.name == recipe]
        if not entries:
            raise UserError(f"No weights entry for recipe '{recipe}' (see `ctxseg weights list`)")
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"weights registry ({len(entries)} entries)")
    for col, kw in (
        ("name", {"overflow": "fold"}),  # names are typed back: folded, never cut to "…"
        ("recipe", {"overflow": "fold"}),
        ("kind", {}),
        ("file", {"overflow": "fold"}),
        ("size", {"justify": "right"}),
        ("published mIoU", {"justify": "right"}),
        ("cached", {}),
    ):
        table.add_column(col, **kw)
    for e in entries:
        recipes = e.all_recipes()
        shown = ", ".join(_recipe_key(r) for r in recipes[:2]) + (f" (+{len(recipes) - 2})" if len(recipes) > 2 else "")
        cached = "[green]yes[/]" if e.cached else ("no (add)" if not e.fetchable else "no")
        table.add_row(e.name, shown or "—", e.kind, e.file, _size(e.size), _miou(e.published), cached)
    Console().print(table)


@weights_app.command("get")
def get_cmd(
    name: str = typer.Argument(..., help="An entry's name, or a recipe's name (its released model)."),
    init: bool = typer.Option(False, "--init", help="With a recipe's name: its initialisation, not its model."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
):
    """Download (once), verify and convert (once); the last line printed is the converted checkpoint's path.

    Example: [cyan]ctxseg weights get ocrnet-hr18-cityscapes-80k[/]
    """
    from ctxseg.weights import cache, find

    entry = find(name, init=init)
    path = cache.get(entry, progress=not no_progress)
    typer.echo(str(path))


@weights_app.command("add")
def add_cmd(
    file: Path = typer.Argument(..., help="The file you downloaded yourself."),
    recipe: str | None = typer.Option(None, "--recipe", "-r", help="The recipe whose released model it is."),
    name: str | None = typer.Option(None, "--name", help="The registry entry it is the file of."),
    init: bool = typer.Option(False, "--init", help="With --recipe: the recipe's initialisation."),
):
    """Import a file fetched elsewhere into the cache, verified against the registry's sha256.

    Example: [cyan]ctxseg weights add ~/Downloads/ocrnet_hr18.pth --recipe ocrnet-hr18-cityscapes-80k[/]
    """
    from ctxseg.weights import cache, find

    if recipe is not None and name is not None:
        raise UserError("Give one of --recipe R or --name NAME, not both")
    if name or recipe:
        entry, digest = find(name or recipe, init=init), None
    else:
        entry, digest = _entry_of_file(file)
    dest = cache.add(entry, file, digest)
    how = "sha256 verified" if entry.sha256 else "no hash published; its sha256 is recorded"
    typer.echo(f"imported {file} as '{entry.name}' ({how})", err=True)
    typer.echo(str(dest))


def _entry_of_file(file: Path):
    """(The registry entry a file belongs to, told by its published hash, else by its file name;
    the file's sha256)."""
    from ctxseg.weights import list_entries
    from ctxseg.weights.download import hash_matches, sha256_of

    if not Path(file).is_file():
        raise UserError(f"No such file: {file}")
    entries = list_entries()
    digest = sha256_of(Path(file))
    found = [e for e in entries if e.sha256 and hash_matches(digest, e.sha256)]
    if not found:
        found = [e for e in entries if not e.sha256 and e.file == Path(file).name]
    if len(found) == 1:
        return found[0], digest
    if found:
        names = ", ".join(e.name for e in found)
        raise UserError(f"{file} could be the file of several entries ({names}); say which with --name NAME")
    raise UserError(
        f"{file} (sha256 {digest}) matches no registry entry by hash or file name; "
        "say which it is with --recipe R or --name NAME (`ctxseg weights list` shows them)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(weights_app, name="weights")
