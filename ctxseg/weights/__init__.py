"""Official weights by name: a registry of released models and initialisations, a verified
download cache, and a one-time conversion into ctxseg checkpoints (see docs/weights.md).

    from ctxseg import weights
    path = weights.get("ocrnet-hr18-cityscapes-80k")        # its released model, converted
    init = weights.get("ocrnet-hr18-cityscapes-80k", init=True)  # its backbone initialisation

Importing this package does not import torch; converting does.
"""

from __future__ import annotations

from pathlib import Path

from ctxseg.weights.registry import Entry, find, list_entries

__all__ = ["Entry", "add", "fetch", "find", "get", "list_entries"]


def get(name: str, *, init: bool = False, progress: bool = True) -> Path:
    """The converted ctxseg checkpoint of an entry, or of a recipe's released model (init=True: its
    initialisation): downloaded, verified and converted once; a second call reads only the cache.

    A released model gives a full ctxseg .safetensors checkpoint (ctxseg.engine.checkpoint.load_model);
    an init gives the backbone's tensors under ctxseg's backbone names (.safetensors)."""
    from ctxseg.weights import cache

    return cache.get(find(name, init=init), progress=progress)


def fetch(entry: Entry | str, *, progress: bool = True) -> Path:
    """The verified raw file of `entry` (an Entry or its name) in the cache; no request when cached."""
    from ctxseg.weights import cache

    return cache.fetch(entry if isinstance(entry, Entry) else find(entry), progress=progress)


def add(file: str | Path, name: str, *, init: bool = False) -> Path:
    """Import a file fetched elsewhere as the raw file of entry/recipe `name` (hash verified)."""
    from ctxseg.weights import cache

    return cache.add(find(name, init=init), Path(file))
