"""Small analysis tools (run with `python -m ctxseg.tools.<name>`)."""
