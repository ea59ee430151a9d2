"""A static index.html per picture folder: images with captions, browsable without a server."""

from __future__ import annotations

import html
import os
from pathlib import Path

from ctxseg.io import write_text


def write_index(folder: Path, pictures: list[tuple[Path, str]], title: str) -> Path:
    cards = "\n".join(
        f'<figure><a href="{html.escape(os.path.relpath(p, folder))}"><img src="{html.escape(os.path.relpath(p, folder))}" '
        f'loading="lazy" alt="{html.escape(c)}"></a><figcaption>{html.escape(c)}</figcaption></figure>'
        for p, c in pictures
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}}figure{{display:inline-block;margin:.5em;vertical-align:top}}
img{{max-width:480px;border:1px solid #ccc}}figcaption{{font-size:12px;max-width:480px}}</style></head>
<body><h1>{html.escape(title)}</h1>
{cards}
</body></html>
"""
    path = folder / "index.html"
    write_text(path, page)
    return path
