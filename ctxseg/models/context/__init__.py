"""Context plug-ins: MCIBI memory, pixel contrast, CAC context-aware classifier (see ctxseg.models.segmentor)."""
