"""`ctxseg convert FORMAT ...`: foreign checkpoints -> ctxseg checkpoints, and exports."""

from __future__ import annotations

import typer

convert_app = typer.Typer(help="Convert official checkpoints (mmseg, ssseg, openseg, cac) and export (onnx).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    from ctxseg.convert import register_commands

    register_commands(convert_app)
    app.add_typer(convert_app, name="convert")
