"""A recipe adapted to another prepared dataset (`ctxseg train --data DIR`, `ctxseg recipes show --data DIR`).

Everything that depends on the data comes from DIR/meta.json: data.num_classes and data.ignore_index
(which the builder injects into every decode / auxiliary classifier, the MCIBI memory, the contrast
queues and CAC), reduce_zero_label, the class names and palette (read from the index by eval,
predict and viz), the splits. Settings tied to the recipe's own dataset are dropped with a note:
explicit flip pairs, a per-class weight list of another length, the published result. The training
crop is clipped to the size the images have at the recipe's resize (ratio 1), read from the headers
of a few training images; images the random rescale makes smaller are padded to the crop with the
ignore index, as the recipe's pipeline does. Keys the user set with `--set` are never changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ctxseg.config import Recipe, validate_recipe
from ctxseg.data.index import PreparedIndex
from ctxseg.errors import UserError

SIZE_SAMPLES = 16  # training images whose headers are read to size the crop


@dataclass
class Adaptation:
    """What `adapt_to_data` returns.

    Args:
        recipe: the adapted, validated recipe.
        notes: one line per adapted setting (printed by the CLI).
        data_dir: the prepared dataset adapted to.
    """

    recipe: Recipe
    notes: list[str] = field(default_factory=list)
    data_dir: Path = Path(".")


def image_size(path: Path) -> tuple[int, int] | None:
    """(h, w) of an image as ctxseg reads it (EXIF orientation applied), from its header when Pillow can
    read it; None when the file cannot be read."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - a broken EXIF block: the pixels are still as stored
                orientation = 1
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)
    except Exception:  # noqa: BLE001 - not a format Pillow knows, or no Pillow: decode it
        from ctxseg.io import read_image

        try:
            return tuple(read_image(path).shape[:2])
        except Exception:  # noqa: BLE001 - unreadable: the data check before training names it
            return None


def sample_sizes(index: PreparedIndex, split: str, n: int = SIZE_SAMPLES) -> list[tuple[int, int]]:
    """(h, w) of up to n images spread evenly over a split."""
    try:
        samples = index.samples(split)
    except UserError:
        return []
    if not samples:
        return []
    step = max(1, len(samples) // n)
    sizes = [image_size(s.image) for s in samples[::step][:n]]
    return [s for s in sizes if s is not None]


def nominal_size(h: int, w: int, recipe: Recipe) -> tuple[int, int]:
    """(h, w) of an image after the recipe's RandomResize at ratio 1.0 (before the crop)."""
    from ctxseg.data import transforms as T

    d = recipe.data
    if d.pipeline == "openseg":  # its fixed `resize` (if in the sequence), the random resize at scale 1
        if "resize" not in d.openseg.trans_seq:
            return h, w
        from ctxseg.data.openseg_pipeline import fixed_size

        rw, rh = fixed_size(h, w, d.openseg.resize)
        return rh, rw
    if d.scale is None:
        return h, w
    return T.rescale_size(h, w, d.scale) if d.keep_ratio else T.stretch_size(h, w, d.scale)


def _fit(v: int) -> int:
    """A crop edge no longer than v: a multiple of 32 (the largest output stride) when v allows, else of 8."""
    if v >= 64:
        return v // 32 * 32
    return max(8, v // 8 * 8)


def _median(values: list[int]) -> int:
    s = sorted(values)
    return s[len(s) // 2]


def _splits(index: PreparedIndex) -> list[str]:
    have = index.meta.get("splits")
    if isinstance(have, dict) and have:
        return list(have)
    return sorted(p.stem for p in (index.root / "splits").glob("*.txt"))


def override_keys(overrides: list[str] | None) -> set[str]:
    """The dotted keys of `--set KEY=VALUE` expressions (left alone by the adaptation)."""
    from ctxseg.config import parse_override

    return {".".join(parse_override(expr)[0]) for expr in overrides or []}


def adapt_to_data(
    recipe: Recipe, data_dir: str | Path, keep: Iterable[str] = (), *, components: bool = True
) -> Adaptation:
    """The recipe sized for the prepared dataset at `data_dir` (module docstring).

    Args:
        recipe: the resolved recipe (overrides applied).
        data_dir: a prepared index folder (meta.json, splits/).
        keep: dotted keys the user set explicitly (`--set data.crop_size=...`): left as they are.
        components: check the component tables against their constructors (config.validate_recipe); the
            adaptation changes data settings only, so a recipe already checked may skip it.

    Returns:
        The adapted recipe and one note per change.
    """
    data_dir = Path(data_dir)
    index = PreparedIndex.open(data_dir)
    meta = index.meta
    if "classes" not in meta:
        raise UserError(f"{data_dir / 'meta.json'} lists no classes: is it a prepared dataset (`ctxseg prepare`)?")
    keep = set(keep)
    raw = recipe.to_dict()
    data, notes = raw["data"], []
    classes = list(meta["classes"])
    num_classes = int(meta.get("num_classes", len(classes)))
    if num_classes != len(classes):
        raise UserError(f"{data_dir / 'meta.json'}: num_classes = {num_classes} but {len(classes)} class names")

    def set_key(section: dict, dotted: str, value, why: str = "") -> None:
        key = dotted.rsplit(".", 1)[-1]
        if dotted in keep or section.get(key) == value:
            return
        old = section.get(key)
        section[key] = value
        shown = "unset" if value is None else _show(value)
        notes.append(f"{dotted}: {_show(old)} -> {shown}" + (f" ({why})" if why else ""))

    shown_classes = ", ".join(classes[:8]) + (f", ... ({len(classes)} in all)" if len(classes) > 8 else "")
    keep.discard("data.root")  # --data names the dataset, whatever --set data.root said
    set_key(data, "data.root", str(data_dir))
    set_key(data, "data.dataset", str(meta.get("name") or data_dir.name))
    set_key(data, "data.num_classes", num_classes, f"classes: {shown_classes}; sizes every classifier and plug-in")
    set_key(data, "data.ignore_index", int(meta.get("ignore_index", 255)))
    set_key(data, "data.reduce_zero_label", bool(meta.get("reduce_zero_label", False)))
    if data.get("flip_pairs") is not None:
        set_key(data, "data.flip_pairs", None, "the recipe's pairs name its own classes; meta.json's are used")

    splits = _splits(index)
    for key, default in (("train_split", "train"), ("val_split", "val")):
        if data[key] not in splits and default in splits:
            set_key(data, f"data.{key}", default, f"'{data[key]}' is not a split of {data_dir}")

    loss = raw["train"]["loss"]
    if isinstance(loss.get("class_weight"), list) and len(loss["class_weight"]) != num_classes:
        set_key(loss, "train.loss.class_weight", None, f"{len(loss['class_weight'])} weights for another dataset")

    pub = raw.get("published") or {}
    if "published" not in keep and any(pub.get(k) not in (None, "") for k in ("miou", "miou_flip", "miou_ms")):
        raw["published"] = {}
        notes.append(f"published: dropped (the {recipe.data.dataset} results of {pub.get('paper') or 'the paper'})")

    adapted = validate_recipe(raw, components=components)
    notes += _adapt_crop(adapted, raw, index, keep)
    return Adaptation(validate_recipe(raw, components=components), notes, data_dir)


def _adapt_crop(recipe: Recipe, raw: dict, index: PreparedIndex, keep: set[str]) -> list[str]:
    """Clip data.crop_size to the typical image size at the recipe's resize; notes for what was done."""
    d = recipe.data
    sizes = sample_sizes(index, d.train_split)
    if not sizes:
        return [f"data.crop_size: kept {_show(list(d.crop_size))} (no readable training image to size it by)"]
    own = (_median([h for h, _ in sizes]), _median([w for _, w in sizes]))
    nominal = [nominal_size(h, w, recipe) for h, w in sizes]
    nh, nw = _median([h for h, _ in nominal]), _median([w for _, w in nominal])
    notes = []
    if d.scale is not None and d.pipeline == "mmseg":
        factor = nh / own[0]
        if factor > 1.5 or factor < 0.5:
            notes.append(
                f"note: data.scale {_show(list(d.scale))} resizes these images (typically {own[0]}x{own[1]}) "
                f"x{factor:.2f} before cropping; set data.scale to train nearer their own size"
            )
    ch, cw = d.crop_size
    new = (ch if ch <= nh else _fit(nh), cw if cw <= nw else _fit(nw))  # only an edge the images cannot fill
    if new != (ch, cw) and "data.crop_size" not in keep:
        raw["data"]["crop_size"] = list(new)
        if d.pipeline == "openseg":  # its crop and the collate's input size follow, (w, h)
            raw["data"]["openseg"]["random_crop"]["crop_size"] = [new[1], new[0]]
            raw["data"]["openseg"]["data_transformer"]["input_size"] = [new[1], new[0]]
        at = "" if d.scale is None or d.pipeline != "mmseg" else f" at the recipe's resize to {_show(list(d.scale))}"
        notes.append(
            f"data.crop_size: {_show([ch, cw])} -> {_show(list(new))} (the training images are typically "
            f"{nh}x{nw}{at}, median of {len(sizes)} read; images the random rescale makes smaller are padded "
            f"to the crop with the ignore index, as the recipe's pipeline does)"
        )
    return notes


def _show(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return f"'{v}'"
    return "unset" if v is None else str(v)
