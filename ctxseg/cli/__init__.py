"""The `ctxseg` command. Each subcommand lives in its own module and registers itself here."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from ctxseg.errors import UserError

console = Console(stderr=True)

app = typer.Typer(
    name="ctxseg",
    help="Context-aware semantic segmentation: prepare data, train, evaluate, predict, visualise, convert.\n\n"
    "Each step defaults to the previous step's output (runs/latest):\n\n"
    "  ctxseg prepare synthetic\n\n  ctxseg train --recipe demo\n\n  ctxseg eval --ms-flip\n\n  ctxseg viz overlay",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from ctxseg.cli import convert, predict, prepare, recipes, train, viz, weights  # noqa: F401
    from ctxseg.cli import eval as eval_cmd

    for mod in (prepare, train, eval_cmd, predict, viz, convert, recipes, weights):
        mod.register(app)
    try:
        from ctxseg.cli import bench

        bench.register(app)
    except ImportError as e:
        # keep `ctxseg bench` listed: invoking it explains what failed to import instead of
        # the command silently disappearing ("No such command")
        _register_unavailable("bench", e)


def _register_unavailable(name: str, err: ImportError) -> None:
    reason = f"{type(err).__name__}: {err}"

    @app.command(
        name,
        help=f"(unavailable: {reason})",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    )
    def _unavailable() -> None:
        raise UserError(
            f"`ctxseg {name}` is unavailable: importing it failed ({reason}). "
            "Reinstall ctxseg with its dependencies (pip install -e .)."
        )


def _expand_bare_resume(argv: list[str]) -> list[str]:
    """`--resume` with no value means the newest checkpoint of runs/latest."""
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        if a == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("latest")
    return out


def main() -> None:
    _register()
    argv = _expand_bare_resume(sys.argv[1:])
    try:
        app(args=argv, prog_name="ctxseg", standalone_mode=False)
    except UserError as e:
        console.print(f"[bold red]error:[/] {_escape(str(e))}", soft_wrap=True)  # paths stay whole
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as e:  # usage errors (unknown option, bad value) arrive here in non-standalone mode
        usage, abort = _click_exception_types()
        if isinstance(e, usage):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, abort):
            sys.exit(1)
        raise


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's ClickException / Abort classes: recent typer releases raise those of their vendored
    copy (typer._click), older ones those of click itself; accept both."""
    usage: list[type] = []
    abort: list[type] = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.ClickException)
        if hasattr(mod, "Abort"):  # typer's vendored copy has none (it raises KeyboardInterrupt)
            abort.append(mod.Abort)
    return tuple(usage), tuple(abort)


def _escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)
