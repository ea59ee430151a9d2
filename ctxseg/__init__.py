"""ctxseg: context-aware semantic segmentation (OCRNet, MCIBI, ContrastiveSeg, CAC)."""

__version__ = "0.1.0"
