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

__all__ = ["Entry", "add", "fetch", "find", "get", "list_entries", "published_overrides"]


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


# the [published] keys of a recipe a registry row's `published` table may set
PUBLISHED_KEYS = ("paper", "table", "miou", "miou_flip", "miou_ms", "checkpoint", "notes")


def published_overrides(name: str) -> list[str]:
    """Recipe overrides (`--set` spelling) that put the published numbers of the released entry
    `name` (an entry or a recipe name) into the recipe of its checkpoint: the registry row describes
    the released file, so its numbers replace the embedded recipe's (a converted or user checkpoint
    often carries none). Keys other than PUBLISHED_KEYS are not recipe fields and are left out."""
    import json

    entry = find(name)
    return [f"published.{k}={json.dumps(v)}" for k, v in entry.published.items() if k in PUBLISHED_KEYS]
