"""Converters: one module per foreign format; each adds its `ctxseg convert <format>` command."""

from __future__ import annotations

import typer

# module names under ctxseg.convert that define `register(app)`; filled as formats land
FORMATS: list[str] = ["mmseg", "onnx", "cac", "openseg", "ssseg"]


def register_commands(app: typer.Typer) -> None:
    import importlib

    for name in FORMATS:
        importlib.import_module(f"ctxseg.convert.{name}").register(app)
