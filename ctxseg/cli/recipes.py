"""`ctxseg recipes list|show`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from ctxseg.cli.common import SetOption, out

recipes_app = typer.Typer(help="List and show the bundled recipes.", no_args_is_help=True)


@recipes_app.command("list")
def list_cmd(filter: str | None = typer.Argument(None, help="Only names containing this text.")):
    """List recipes with the published mIoU they reproduce.

    Example: [cyan]ctxseg recipes list ocrnet[/]
    """
    from ctxseg.config import list_recipes, load_recipe

    table = Table(title="ctxseg recipes")
    for col in ("name", "dataset", "iters", "published mIoU (ss / flip / ms+flip)", "description"):
        table.add_column(col)
    for name, path in list_recipes().items():
        if filter and filter not in name:
            continue
        r = load_recipe(path, components=False)  # bundled: validated in full by the test suite
        pub = r.published
        numbers = (pub.miou, pub.miou_flip, pub.miou_ms)
        score = (
            " / ".join("—" if v is None else f"{v:.2f}" for v in numbers) if any(v is not None for v in numbers) else ""
        )
        iters = str(r.train.iters) if r.train.epochs is None else f"{r.train.epochs:g} ep"
        table.add_row(name, r.data.dataset, iters, score, r.description)
    out.print(table)


@recipes_app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Recipe name or path to a .toml file."),
    set: list[str] | None = SetOption,
    provenance: bool = typer.Option(
        False, "--provenance", help="Each paper setting beside its official value and source."
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Adapt the recipe to this prepared dataset (classes, ignore index, crop), as `ctxseg train --data`.",
    ),
    schedule: bool = typer.Option(
        False, "--schedule", help="The lr curve (terminal plot) and the optimizer's parameter groups."
    ),
    num_train: int | None = typer.Option(
        None, "--num-train", help="Train images, for epoch-based recipes (default: the dataset's official split)."
    ),
):
    """Print the fully resolved recipe (extends merged, overrides applied, defaults filled).

    Examples:

      [cyan]ctxseg recipes show demo --set train.optimizer.lr=0.02[/]

      [cyan]ctxseg recipes show ocrnet-hr48-cityscapes-40k --provenance[/]

      [cyan]ctxseg recipes show ocrnet-hr18-cityscapes-80k --data data/mydata > my.toml[/]   adapted, to edit

      [cyan]ctxseg recipes show upernet-swin-t-ade20k-160k --schedule[/]
    """
    from rich.syntax import Syntax

    from ctxseg.config import find_recipe, list_recipes, load_recipe, to_toml

    # a bundled recipe as shipped is validated in full by the test suite: show it without importing
    # the model zoo; overrides or a recipe file of one's own get the full component check
    bundled = not set and find_recipe(name) == list_recipes().get(name)
    r = load_recipe(name, set, components=not bundled)
    if schedule:
        _print_schedule(name, set, num_train)
        return
    if provenance:  # the paper's settings: compared before any adaptation to other data
        _print_provenance(r)
        return
    notes: list[str] = []
    if data is not None:
        from ctxseg.data.adapt import adapt_to_data, override_keys

        adapted = adapt_to_data(r, data, override_keys(set), components=not bundled)
        r, notes = adapted.recipe, adapted.notes
    header = "".join(f"# {line}\n" for line in [f"{r.name} adapted to {data}:", *notes]) if data else ""
    text = header + to_toml(r.to_dict())
    if out.is_terminal:  # colours for a reader; soft_wrap: a long line is never split into two
        out.print(Syntax(text, "toml", theme="ansi_dark", background_color="default"), soft_wrap=True)
    else:  # piped or redirected (`> my.toml`): the exact TOML text, nothing wrapped or styled
        sys.stdout.write(text + "\n")


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


def _print_provenance(r) -> None:
    from ctxseg.provenance import compare, load_table, own_reason, resolve_row

    table = load_table()
    reason = own_reason(r.name, table)
    if reason is not None:
        out.print(f"[bold]{r.name}[/] is the project's own setting: {reason}")
        return
    _, _, row = resolve_row(r.name, table)
    lines = compare(r, table)
    t = Table(title=f"{r.name}: settings and their official source", title_justify="left")
    for col in ("setting", "recipe key", "recipe", "official", "status", "source / reason"):
        t.add_column(col, overflow="fold")
    style = {"ok": "green", "deviation": "yellow", "MISMATCH": "bold red"}
    for line in lines:
        source = "config (below)" if line.source == row.get("config") else line.source
        where = source + (f" — {line.note}" if line.note else "")
        t.add_row(
            line.key,
            line.path,
            _fmt(line.recipe),
            _fmt(line.official),
            f"[{style[line.status]}]{line.status}[/]",
            where,
        )
    out.print(t)
    out.print(f"config: {row.get('config', '')}")
    _print_weights(r.name)
    bad = sum(line.status == "MISMATCH" for line in lines)
    if bad:
        out.print(f"[bold red]{bad} setting(s) differ from the official value without a stated reason[/]")


def _print_weights(name: str) -> None:
    """The recipe's rows of the weights registry: its released model and its initialisation."""
    from pathlib import PurePosixPath
    from urllib.parse import urlparse

    from ctxseg.provenance import weights_rows

    rows = weights_rows(name)
    if not rows:
        out.print("weights: the registry has no released model and no initialisation for this recipe")
        return
    t = Table(title=f"{name}: official weights (recipes/provenance/weights.toml)", title_justify="left")
    for col in ("kind", "entry", "official name", "file", "sha256", "published", "source"):
        t.add_column(col, overflow="fold")
    for entry, e in rows:
        url = e.get("url") or ""
        file = PurePosixPath(urlparse(url).path).name if url else "—"
        if e.get("fetchable", True) is False:  # a cloud-drive page: `ctxseg weights add` imports a copy
            file = f"not fetchable by a program; page: {e.get('page') or 'no link published'}"
        pub = ", ".join(f"{k} {v}" for k, v in (e.get("published") or {}).items()) or "—"
        t.add_row(
            e.get("kind", ""),
            entry,
            e.get("official_name", "—"),
            file,
            e.get("sha256") or "—",
            pub,
            e.get("source", ""),
        )
    out.print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")


def _train_size(r, num_train: int | None) -> int:
    if num_train is not None:
        return num_train
    import importlib

    from ctxseg.errors import UserError

    try:
        module = importlib.import_module(f"ctxseg.data.prepare.{r.data.dataset.replace('-', '_')}")
        return int(module.SPLITS[r.data.train_split])
    except (ImportError, AttributeError, KeyError):
        raise UserError(
            f"{r.name} counts its budget in epochs; give --num-train (images in '{r.data.train_split}')"
        ) from None


def lr_plot(values: list[float], iters: int, width: int = 64, height: int = 12) -> list[str]:
    """A plain-text plot of a curve (one column per width-th of the iterations, max of the column)."""
    n = len(values)
    cols = [max(values[i * n // width : max(i * n // width + 1, (i + 1) * n // width)]) for i in range(width)]
    top = max(cols) or 1.0
    rows = []
    for level in range(height, 0, -1):
        line = "".join("█" if c / top * height >= level - 0.5 else " " for c in cols)
        label = f"{top * level / height:9.2e} |" if level in (height, 1) or level == height // 2 else "          |"
        rows.append(label + line)
    rows.append("          +" + "-" * width)
    rows.append(f"           0{'iteration':^{width - 12}}{iters:>10}")
    return rows


def _print_schedule(name: str, overrides, num_train: int | None) -> None:
    import torch

    from ctxseg.config import load_recipe
    from ctxseg.engine.schedule import build_optimizer, build_scheduler, total_iters
    from ctxseg.models.segmentor import build_segmentor

    r = load_recipe(name, list(overrides or []) + ['model.backbone.pretrained=""'])
    world = r.train.processes or 1
    total = total_iters(r, _train_size(r, num_train) if r.train.epochs is not None else 0, world)
    with torch.device("meta"):
        model = build_segmentor(r)
    optimizer = build_optimizer(model, r)
    sched = build_scheduler(optimizer, r, total)
    s, o = r.train.schedule, r.train.optimizer
    warm = f", linear warm-up {s.warmup_iters} it from x{s.warmup_ratio:g}" if s.warmup_iters else ""
    out.print(
        f"[bold]{r.name}[/]: {o.type} lr {o.lr:g}, {s.policy} power {s.power:g} min_lr {s.min_lr:g}{warm}; "
        f"{total} iterations ({s.form} form)" + (f", {world} processes" if r.train.epochs is not None else "")
    )
    step = max(1, total // 2000)
    curve = [sched.lr(i) for i in range(0, total, step)]
    for line in lr_plot(curve, total):
        out.print(line, highlight=False)
    names = {id(p): n for n, p in model.named_parameters()}
    table = Table(title="parameter groups")
    for col in ("group", "lr mult", "decay mult", "lr at 0 / end", "weight decay", "tensors", "parameters", "e.g."):
        table.add_column(col)
    for i, g in enumerate(optimizer.param_groups):
        lm, dm = g.get("lr_mult", 1.0), g.get("decay_mult", 1.0)
        lr0 = o.lr * lm
        example = names[id(g["params"][0])] if g["params"] else ""
        table.add_row(
            str(i),
            f"{lm:g}",
            f"{dm:g}",
            f"{sched.lr(0, lr0):.3g} / {sched.lr(total - 1, lr0):.3g}",
            f"{g['weight_decay']:g}",
            str(len(g["params"])),
            f"{sum(p.numel() for p in g['params']):,}",
            example,
        )
    out.print(table)
