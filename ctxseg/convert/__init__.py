"""Converters: the mechanism (base.py: strict key maps and reports) and one key table per foreign
format (mmseg, mmseg_swin, ssseg, openseg, cac), plus the ONNX export. The `ctxseg convert`
commands are in ctxseg.cli.convert."""

FORMATS: list[str] = ["mmseg", "onnx", "cac", "openseg", "ssseg"]
