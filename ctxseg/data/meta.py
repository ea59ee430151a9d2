"""Class names, palette and flip pairs of a recipe's dataset, with or without the prepared index.

Predicting needs no prepared dataset, but the class names, the colours and LIP's left/right class
pairs (swapped when a flip is undone) are the dataset's: they come from the prepared index at
`data.root` when there is one (its meta.json), else from the dataset module that `ctxseg prepare`
would use (the same lists), else generated (numbered names, the default palette, no pairs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ctxseg.errors import UserError

if TYPE_CHECKING:
    from ctxseg.config import Recipe


@dataclass(frozen=True)
class DatasetMeta:
    """What inference output needs to know about the classes.

    Args:
        classes: class names, in class-id order.
        palette: one RGB colour per class.
        flip_pairs: (left, right) class pairs swapped when a horizontal flip is undone (LIP).
        source: where they came from: "index" (meta.json at data.root), "dataset" (the dataset
            module's lists) or "generated".
    """

    classes: list[str]
    palette: list[list[int]]
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    source: str = "generated"


def _synthetic():
    from ctxseg.data.prepare.synthetic import CLASSES, PALETTE

    return CLASSES, PALETTE, []


def _cityscapes():
    from ctxseg.data.prepare.cityscapes import class_info

    classes, palette = class_info()  # UserError without cityscapesscripts: generated instead
    return classes, palette, []


def _module(name: str, classes: str, palette: Callable, flip_pairs: str | None = None):
    def read():
        import importlib

        mod = importlib.import_module(f"ctxseg.data.prepare.{name}")
        names = list(getattr(mod, classes))
        return names, palette(mod, names), list(getattr(mod, flip_pairs)) if flip_pairs else []

    return read


def _bitmap(offset: int, extra: int = 0):
    def palette(mod, names):
        from ctxseg.data.prepare.common import bitmap_palette

        return bitmap_palette(len(names) + extra)[offset:]

    return palette


def _pascal_context(sixty: bool):
    def read():
        from ctxseg.data.prepare.common import bitmap_palette
        from ctxseg.data.prepare.pascal_context import CLASSES59

        if sixty:
            return ["background", *CLASSES59], bitmap_palette(60), []
        return list(CLASSES59), bitmap_palette(60)[1:], []

    return read


# dataset name (recipe data.dataset) -> () -> (classes, palette, flip_pairs), as its preparer writes them
KNOWN: dict[str, Callable] = {
    "synthetic": _synthetic,
    "cityscapes": _cityscapes,
    "ade20k": _module("ade20k", "CLASSES", _bitmap(1, 1)),
    "coco-stuff10k": _module("cocostuff", "CLASSES", _bitmap(1, 1)),
    "coco-stuff164k": _module("cocostuff", "CLASSES", _bitmap(1, 1)),
    "voc-aug": _module("voc", "CLASSES", _bitmap(0)),
    "pascal-context": _pascal_context(False),
    "pascal-context-60": _pascal_context(True),
    "lip": _module("lip", "CLASSES", _bitmap(0), "FLIP_PAIRS"),
    "camvid": _module("camvid", "CLASSES", lambda mod, names: mod.PALETTE),
}


def dataset_meta(recipe: Recipe) -> DatasetMeta:
    """Classes, palette and flip pairs for `recipe`'s outputs (see the module docstring). The recipe's
    own data.flip_pairs, when set, win over the dataset's (as in InferenceSettings.from_recipe)."""
    from ctxseg.data.index import PreparedIndex

    n = recipe.data.num_classes
    meta = None
    try:
        index = PreparedIndex.open(recipe.data.root)
        if len(index.classes) == n:
            meta = DatasetMeta(index.classes, index.palette, index.flip_pairs, "index")
    except (UserError, KeyError, TypeError, ValueError):  # no (readable) prepared dataset there
        pass
    if meta is None and recipe.data.dataset in KNOWN:
        try:
            classes, palette, pairs = KNOWN[recipe.data.dataset]()
        except (ImportError, UserError):
            classes = []
        if len(classes) == n and len(palette) == n:
            meta = DatasetMeta(list(classes), [list(c) for c in palette], [tuple(p) for p in pairs], "dataset")
    if meta is None:
        from ctxseg.viz.palette import default_palette

        meta = DatasetMeta([str(i) for i in range(n)], default_palette(n), [], "generated")
    return meta
