"""A static index.html per picture folder: images with captions, browsable without a server.

Paths are relative to the folder, so the folder can be copied or zipped as a whole. A few lines
of inline JavaScript count the pictures that loaded and flag missing ones (red caption), which
is also what the headless-browser test reads back (`data-loaded` / `data-total` on <body>).
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from ctxseg.io import write_text

_STYLE = """body{font-family:sans-serif;margin:1em;background:#fafafa}
h1{font-size:1.3em}p.note{color:#555;max-width:60em}
figure{display:inline-block;margin:.5em;vertical-align:top;background:#fff;padding:.3em;border:1px solid #ddd}
img{max-width:%dpx;display:block}figcaption{font-size:12px;max-width:%dpx;word-wrap:break-word}
figure.missing figcaption{color:#c00}figure.missing figcaption::after{content:" (missing)"}
ul.legend{list-style:none;padding:0;margin:.5em 0;columns:14em}ul.legend li{font-size:13px;margin:2px 0}
ul.legend span{display:inline-block;width:1.6em;height:.9em;border:1px solid #333;margin-right:.4em;
vertical-align:middle}"""

_SCRIPT = """window.addEventListener('load',function(){
var imgs=document.querySelectorAll('figure img'),ok=0;
imgs.forEach(function(i){if(i.complete&&i.naturalWidth>0){ok++}else{i.parentNode.parentNode.classList.add('missing')}});
document.body.dataset.loaded=ok;document.body.dataset.total=imgs.length;
document.getElementById('status').textContent=ok+' of '+imgs.length+' pictures loaded';});"""


def write_index(
    folder: Path,
    pictures: list[tuple[Path, str]],
    title: str,
    note: str | None = None,
    max_width: int = 480,
    legend: list[tuple[str, list[int]]] | None = None,
) -> Path:
    """Write <folder>/index.html showing `pictures` [(path, caption)] in order; returns its path.

    `max_width` caps the displayed width (wide pictures such as compare panels want more); `legend`,
    [(class name, RGB)], lists the dataset's classes with their colours above the pictures."""
    folder = Path(folder)
    cards = []
    for p, caption in pictures:
        rel = html.escape(Path(os.path.relpath(Path(p).resolve(), folder.resolve())).as_posix())
        cap = html.escape(caption)
        # no lazy loading: the load-count script (and a printout) should see every picture
        cards.append(
            f'<figure><a href="{rel}"><img src="{rel}" alt="{cap}"></a><figcaption>{cap}</figcaption></figure>'
        )
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    if legend:
        items = "".join(
            f'<li><span style="background:rgb({",".join(str(int(v)) for v in rgb)})"></span>{html.escape(name)}</li>'
            for name, rgb in legend
        )
        note_html += f'<ul class="legend">{items}</ul>'

    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE % (max_width, max_width)}</style></head>
<body data-loaded="0" data-total="{len(cards)}"><h1>{html.escape(title)}</h1>
{note_html}<p id="status">{len(cards)} pictures</p>
{chr(10).join(cards)}
<script>{_SCRIPT}</script>
</body></html>
"""
    path = folder / "index.html"
    write_text(path, page)
    return path
