"""ctxseg: context-aware semantic segmentation (OCRNet, MCIBI, ContrastiveSeg, CAC)."""

# the one source of the version: pyproject.toml reads it from here ([tool.setuptools.dynamic])
__version__ = "0.3.0"
