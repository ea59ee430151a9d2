"""The one cache directory of ctxseg: weights, compiled code, the layout verdicts.

`$CTXSEG_HOME`, default `~/.cache/ctxseg`. A module of its own (no torch, no cv2) so that the CLI's
light commands can ask for it without importing the heavy stack.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CTXSEG_HOME"


def home() -> Path:
    """$CTXSEG_HOME (``~`` expanded), default ~/.cache/ctxseg; read on every call, so tests and
    processes may point it elsewhere at any time."""
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ctxseg"
