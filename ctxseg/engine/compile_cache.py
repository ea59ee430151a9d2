"""A persistent torch.compile cache under ctxseg's cache directory (issue 23 §4).

Compiling a segmentation model with inductor takes minutes on a CPU. Inductor can keep what it
compiled on disk (the FX graph cache: generated C++/Triton code and the compiled modules, keyed by
graph, inputs, torch version and settings; the AOTAutograd cache for training graphs; the autotune
results), so a second run in another process, with the same model and shapes, loads them instead of
compiling again. `configure()` points that cache at `$CTXSEG_HOME/compile/` (default
~/.cache/ctxseg/compile, next to the weights) and turns the caches on; every ctxseg `--compile`
path calls it before torch.compile. A TORCHINDUCTOR_CACHE_DIR (or TRITON_CACHE_DIR) the user set
wins; CTXSEG_COMPILE_CACHE=0 leaves inductor's defaults alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctxseg.paths import home


def cache_dir() -> Path:
    """Where inductor's caches go: $TORCHINDUCTOR_CACHE_DIR if set, else $CTXSEG_HOME/compile/inductor."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(env) if env else home() / "compile" / "inductor"


def configure() -> Path | None:
    """Turn on inductor's persistent caches under cache_dir() (before torch.compile); returns the
    directory, or None when CTXSEG_COMPILE_CACHE=0."""
    if os.environ.get("CTXSEG_COMPILE_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root))  # read by inductor when it first needs it
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))  # GPU kernels
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True  # compiled graphs, across processes
    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = True  # autotuning results
    try:
        import torch._functorch.config as functorch_config

        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = True  # training (forward + backward) graphs
    except ImportError:  # pragma: no cover - older torch
        pass
    return root
