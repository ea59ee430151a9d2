"""ctxseg: context-aware semantic segmentation (OCRNet, MCIBI, ContrastiveSeg, CAC).

The Python API (ctxseg.api) loads on first use, so `import ctxseg` stays cheap (no torch):

    import ctxseg
    model = ctxseg.load("ocrnet-hr48-cityscapes-80k", weights="official")
    labels = model.predict("street.png")
"""

# the one source of the version: pyproject.toml reads it from here ([tool.setuptools.dynamic])
__version__ = "0.3.0"

_API = ("load", "SegModel", "list_recipes", "list_weights")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from ctxseg import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'ctxseg' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
