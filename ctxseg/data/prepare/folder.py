"""Your own data: a folder of images and masks (the exports of annotation tools) -> prepared index.

`ctxseg prepare folder --root DIR [--out data/NAME]` detects the layout (or takes `--layout`):

  plain     images/ + masks/ (or labels/, annotations/), matched by file stem (optional mask suffix,
            --mask-suffix _mask, found by itself when every mask carries one); optional train/ val/ test/
            subfolders on both sides, or --splits DIR of train.txt / val.txt / test.txt stems
  cvat, voc CVAT "Segmentation mask 1.1" / PASCAL-VOC: labelmap.txt (`name:r,g,b::` lines), JPEGImages/,
            SegmentationClass/ (colour or palette PNGs), ImageSets/Segmentation/{train,val,test,default}.txt
  roboflow  Roboflow "Semantic Segmentation Masks": train/ valid/ test/ holding X.jpg + X_mask.png and
            _classes.csv (pixel value, class name); `valid` becomes `val`

Masks are class-index images (8- or 16-bit PNG, TIFF, palette PNGs read as their indices) or RGB colour
masks mapped through a palette (labelmap.txt, --palette FILE, or the distinct colours found, numbered
in RGB order and listed so the user can name them). Every file is checked BEFORE anything is written
(unreadable image or mask, size mismatch, mask without image, unknown colour, label value >= the
class count, duplicate stem, empty split): all problems are reported at once, one line per file
(exit 2), and nothing is written.

Output, as every other preparer (prepare/common.py does the conversion, the fingerprint state and
the resume): <out>/labels/<split>/<stem>.png single-channel uint8 class indices, the input ignore
value (--ignore-index, default 255) stored as 255; with --reduce-zero-label the labels keep value 0
and meta.json says reduce_zero_label (mmseg semantics, applied when loading, as ADE20K).
<out>/images/<split>/<stem>.<ext> are links to the raw images (never copied), except images the
dataset reader would read differently from the annotation tool: EXIF-rotated photos (tools show them
rotated; the reader, OpenCV's IMREAD_UNCHANGED, ignores EXIF) and images it cannot read as 8-bit RGB
(16-bit, CMYK, 1-bit): those become converted PNG copies. Greyscale and RGBA images are read as RGB by
the dataset reader (a note says so). Without split information the labelled images are split by
--val-fraction (default 0.1) with --seed (default 0), deterministically; images without a mask go to
test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctxseg.data.prepare.common import (
    BadFilesError,
    DatasetInfo,
    Job,
    _State,
    bitmap_palette,
    describe_error,
    file_fingerprint,
    prepare_index,
    validate_file,
)
from ctxseg.errors import UserError
from ctxseg.io import atomic_path, write_json

LAYOUTS = ("plain", "cvat", "voc", "roboflow")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")
MASK_DIRS = ("masks", "labels", "annotations")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SUFFIX_GUESSES = ("_mask", "_masks", "-mask", "_label", "_labels", "_gt", "_seg", "_segmentation", "_annotation")
IGNORE_NAMES = ("ignore", "ignored", "__ignore__")
VOC_BORDER = (224, 224, 192)  # PASCAL VOC's boundary colour (index 255 of its palette)
SCAN_FILE = ".prepare_folder_scan.json"
SCAN_VERSION = 1
MAX_VALUES = 1024  # distinct values / colours kept per mask (more: not a class mask)
# images the dataset reader (ctxseg.io.read_image: cv2 IMREAD_UNCHANGED) reads as the tool shows them
READER_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF")
READER_MODES = ("L", "LA", "RGB", "RGBA", "P")


class FolderProblems(BadFilesError):
    """Problems found in a folder export before anything was written: one line per file.

    Args:
        messages: one "<path>: <problem>" line per problem.
        root: the export folder.
    """

    label = "problem"

    def __init__(self, messages: list[str], root: Path):
        super().__init__(str(root), messages)
        self.summary = (
            f"{len(messages)} problem(s) in {root} (listed above); nothing was written. Fix them and run "
            "the same command again."
        )
        self.args = (self.summary + "\n" + "\n".join(f"  {m}" for m in messages),)


@dataclass
class Item:
    """One sample found in an export.

    Args:
        key: the stem that pairs image and mask (path below the split folder, without suffix).
        split: train / val / test, or None when the export says nothing.
        image: the image file (None: a mask without image).
        mask: the mask file (None: an unlabelled image).
    """

    key: str
    split: str | None = None
    image: Path | None = None
    mask: Path | None = None


@dataclass
class Export:
    """What a layout reader found.

    Args:
        layout: plain, cvat, voc or roboflow.
        items: the samples.
        names: class names by raw mask value (labelmap, _classes.csv); None: unnamed.
        colours: colour of each raw value (labelmap); None: no palette in the export.
        ignore_colours: colours that mean "ignore".
        split_source: where the splits come from: folders, lists or none.
        split_dirs: the split folders of the export ({split: folder}; an empty one is a problem).
        scanned: folders holding the raw files (--out may not be inside one).
        problems: one line per problem found while listing.
        notes: things the user should know.
    """

    layout: str
    items: list[Item]
    names: list[str | None] | None = None
    colours: list[tuple[int, int, int]] | None = None
    ignore_colours: list[tuple[int, int, int]] = field(default_factory=list)
    split_source: str = "none"
    split_dirs: dict[str, Path] = field(default_factory=dict)
    scanned: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# small readers


def _files(folder: Path, exts: tuple[str, ...], recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith((".", "_classes"))
    )


def _key(path: Path, base: Path, suffix: str = "") -> str:
    rel = path.relative_to(base).with_suffix("").as_posix()
    return rel[: -len(suffix)] if suffix and rel.endswith(suffix) else rel


def _rgb(text: str, where: str) -> tuple[int, int, int]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        rgb = tuple(int(p) for p in parts)
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise UserError(f"{where}: '{text}' is not an r,g,b colour (three numbers 0..255)")
    return rgb  # type: ignore[return-value]


def read_palette(path: Path) -> list[tuple[str | None, tuple[int, int, int]]]:
    """(name or None, rgb) per class, in class order, from a labelmap.txt (`name:r,g,b::` lines), a JSON
    file ({name: [r,g,b]}, [[r,g,b], ...], [[name, [r,g,b]], ...] or [{"name", "color"}, ...]) or lines of
    `r,g,b [name]` / `name r g b`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Palette file {path} not found")
    text = path.read_text(encoding="utf-8-sig")
    out: list[tuple[str | None, tuple[int, int, int]]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        if isinstance(data, dict):
            return [(str(k), _rgb(",".join(map(str, v)), str(path))) for k, v in data.items()]
        for e in data if isinstance(data, list) else []:
            if isinstance(e, dict):
                colour = e.get("color", e.get("colour", e.get("rgb")))
                out.append((e.get("name"), _rgb(",".join(map(str, colour or [])), str(path))))
            elif isinstance(e, list) and len(e) == 2 and isinstance(e[1], list):
                out.append((str(e[0]), _rgb(",".join(map(str, e[1])), str(path))))
            elif isinstance(e, list):
                out.append((None, _rgb(",".join(map(str, e)), str(path))))
            else:
                raise UserError(f"{path}: palette entries must be [r,g,b], [name, [r,g,b]] or {{name, color}}")
        if not out:
            raise UserError(f"{path}: no colours in the palette")
        return out
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        if ":" in line:  # labelmap: name:r,g,b:parts:actions
            name, _, rest = line.partition(":")
            out.append((name.strip(), _rgb(rest.split(":")[0], where)))
            continue
        parts = line.replace(",", " ").split()
        if len(parts) >= 3 and all(p.isdigit() for p in parts[:3]):
            out.append((" ".join(parts[3:]) or None, _rgb(" ".join(parts[:3]), where)))
        elif len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            out.append((" ".join(parts[:-3]), _rgb(" ".join(parts[-3:]), where)))
        else:
            raise UserError(f"{where}: expected `name:r,g,b::`, `r,g,b name` or `name r g b`, got '{line}'")
    if not out:
        raise UserError(f"{path}: no colours in the palette")
    return out


def read_classes(path: Path) -> list[str]:
    """Class names: a JSON list, or one name a line (blank lines and `#` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Classes file {path} not found")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{path}: expected a JSON list of class names")
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise UserError(f"{path}: no class names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{path}: class names repeated: {', '.join(dup)}")
    return names


def _read_roboflow_classes(path: Path) -> dict[int, str]:
    classes: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if len(row) < 2 or not row[0].strip():
                continue
            try:
                value = int(row[0])
            except ValueError:
                if n == 1:
                    continue  # the header: Pixel Value, Class
                raise UserError(f"{path}:{n}: expected `pixel value, class name`, got {','.join(row)}") from None
            classes[value] = row[1].strip()
    if not classes:
        raise UserError(f"{path}: no classes")
    return classes


def _read_stem_list(path: Path) -> list[str]:
    stems = []
    for ln in path.read_text(encoding="utf-8-sig").splitlines():
        parts = ln.split()
        if parts:
            p = parts[0]
            stems.append(p[: -len(Path(p).suffix)] if Path(p).suffix.lower() in IMAGE_EXTS else p)
    return stems


# --------------------------------------------------------------------------------------------
# layouts


def detect_layout(root: Path) -> str | None:
    if (root / "SegmentationClass").is_dir():
        return "cvat" if (root / "labelmap.txt").is_file() else "voc"
    for d in ("train", "valid", "val", "test"):
        p = root / d
        if p.is_dir() and ((p / "_classes.csv").is_file() or any(p.glob("*_mask.png"))):
            return "roboflow"
    if (root / "images").is_dir() and any((root / d).is_dir() for d in MASK_DIRS):
        return "plain"
    return None


def _pair(images: dict, masks: dict, export: Export) -> None:
    """Items from {(split, key): path} of images and of masks; a mask without image is a problem."""
    for sk, img in images.items():
        export.items.append(Item(sk[1], sk[0], img, masks.get(sk)))
    for sk, m in masks.items():
        if sk not in images:
            where = f" in split '{sk[0]}'" if sk[0] else ""
            export.problems.append(f"{m}: mask without image (no image with stem '{sk[1]}'{where})")


def _collect(folder: Path, exts, suffix: str, split: str | None, out: dict, export: Export, what: str) -> None:
    for p in _files(folder, exts):
        k = (split, _key(p, folder, suffix))
        if k in out:
            export.problems.append(f"{p}: duplicate stem '{k[1]}' (also {out[k]}); rename one of the {what}")
            continue
        out[k] = p


def _split_dirs(folder: Path) -> dict[str, Path]:
    return {
        SPLIT_ALIASES[d.name.lower()]: d
        for d in sorted(folder.iterdir())
        if d.is_dir() and d.name.lower() in SPLIT_ALIASES
    }


def _guess_suffix(image_keys: set, mask_keys: list[str]) -> str:
    if not mask_keys:
        return ""
    best, best_n = "", sum(k in image_keys for k in mask_keys)
    for s in SUFFIX_GUESSES:
        n = sum(k.endswith(s) and k[: -len(s)] in image_keys for k in mask_keys)
        if n > best_n:
            best, best_n = s, n
    return best


def read_plain(root: Path, mask_suffix: str | None) -> Export:
    img_dir = root / "images"
    mask_dir = next((root / d for d in MASK_DIRS if (root / d).is_dir()), None)
    if not img_dir.is_dir() or mask_dir is None:
        raise UserError(f"{root}: the plain layout needs images/ and masks/ (or labels/, annotations/)")
    export = Export("plain", [], scanned=[img_dir, mask_dir])
    img_splits, mask_splits = _split_dirs(img_dir), _split_dirs(mask_dir)
    images: dict = {}
    if img_splits:
        export.split_source, export.split_dirs = "folders", dict(img_splits)
        for s, d in img_splits.items():
            _collect(d, IMAGE_EXTS, "", s, images, export, "images")
        loose = [p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        if loose:
            export.notes.append(
                f"{len(loose)} image(s) directly in {img_dir} (outside {'/'.join(img_splits)}/) were left out"
            )
    else:
        _collect(img_dir, IMAGE_EXTS, "", None, images, export, "images")
    raw_masks = (
        {s: _files(d, MASK_EXTS) for s, d in mask_splits.items()}
        if mask_splits
        else {None: _files(mask_dir, MASK_EXTS)}
    )
    mask_base = {s: mask_splits[s] for s in mask_splits} if mask_splits else {None: mask_dir}
    suffix = mask_suffix
    if suffix is None:
        image_keys = {k for _, k in images}
        suffix = _guess_suffix(image_keys, [_key(p, mask_base[s]) for s, ps in raw_masks.items() for p in ps])
        if suffix:
            export.notes.append(f"masks are matched to images by stem + '{suffix}' (found; --mask-suffix sets it)")
    masks: dict = {}
    for s, ps in raw_masks.items():
        for p in ps:
            k = (s, _key(p, mask_base[s], suffix))
            if k in masks:
                export.problems.append(f"{p}: duplicate stem '{k[1]}' (also {masks[k]}); rename one of the masks")
                continue
            masks[k] = p
    if img_splits and not mask_splits:  # masks flat, images in split folders: pair by stem
        by_key = {k: p for (_, k), p in masks.items()}
        masks = {sk: by_key.pop(sk[1]) for sk in images if sk[1] in by_key}
        masks.update({(None, k): p for k, p in by_key.items()})
    elif mask_splits and not img_splits:  # images flat, masks in split folders: the masks' folders give the split
        export.split_source = "folders"
        split_of = {k: s for (s, k) in masks}
        images = {(split_of.get(k, "test"), k): p for (_, k), p in images.items()}
    _pair(images, masks, export)
    return export


def read_voc(root: Path, layout: str) -> Export:
    img_dir = next((root / d for d in ("JPEGImages", "images", "Images") if (root / d).is_dir()), None)
    mask_dir = root / "SegmentationClass"
    if not mask_dir.is_dir():
        raise UserError(f"{root}: the {layout} layout needs SegmentationClass/ (and JPEGImages/, labelmap.txt)")
    if img_dir is None:
        raise UserError(
            f"{root}: no JPEGImages/ beside SegmentationClass/ (CVAT: export with 'Save images' ticked, or copy "
            "the images into JPEGImages/)"
        )
    export = Export(layout, [], scanned=[img_dir, mask_dir])
    labelmap = root / "labelmap.txt"
    if labelmap.is_file():
        entries = read_palette(labelmap)
        export.names = []
        export.colours = []
        for name, rgb in entries:
            if name and name.strip().lower() in IGNORE_NAMES:
                export.ignore_colours.append(rgb)
            else:
                export.names.append(name)
                export.colours.append(rgb)
    images: dict = {}
    masks: dict = {}
    _collect(img_dir, IMAGE_EXTS, "", None, images, export, "images")
    _collect(mask_dir, MASK_EXTS, "", None, masks, export, "masks")
    lists_dir = root / "ImageSets" / "Segmentation"
    lists = {p.stem: p for p in sorted(lists_dir.glob("*.txt"))} if lists_dir.is_dir() else {}
    if "trainval" in lists and ("train" in lists or "val" in lists):
        del lists["trainval"]
    split_of: dict[str, str | None] = {}
    if lists:
        for name, p in lists.items():
            split = None if name.lower() in ("default", "trainval") else SPLIT_ALIASES.get(name.lower())
            if split is None and name.lower() not in ("default", "trainval"):
                export.problems.append(
                    f"{p}: unknown subset '{name}' (expected train, val, test or default); rename the list"
                )
                continue
            stems = _read_stem_list(p)
            if split is not None and not stems:
                export.problems.append(f"{p}: split '{split}' is empty (the list names no image)")
            for s in stems:
                if s in split_of and split_of[s] != split:
                    export.problems.append(f"{p}: duplicate stem '{s}' (listed in '{split_of[s]}' too)")
                split_of[s] = split
        export.split_source = "lists" if any(v for v in split_of.values()) else "none"
        for s in split_of:
            if (None, s) not in images:
                export.problems.append(f"{lists_dir}: '{s}' is listed but there is no image {img_dir}/{s}.*")
        unlisted = {k for (_, k) in images if k not in split_of} | {k for (_, k) in masks if k not in split_of}
        if unlisted:
            export.notes.append(
                f"{len(unlisted)} image(s) / mask(s) not in the ImageSets/Segmentation lists were left out"
            )
        images = {(split_of[k], k): p for (_, k), p in images.items() if k in split_of}
        masks = {(split_of[k], k): p for (_, k), p in masks.items() if k in split_of}
    # no lists: every image with a mask is split by --val-fraction, the others go to test
    _pair(images, masks, export)
    return export


def read_roboflow(root: Path) -> Export:
    export = Export("roboflow", [], split_source="folders")
    images: dict = {}
    masks: dict = {}
    tables: dict[Path, dict[int, str]] = {}
    for d in sorted(root.iterdir()):
        split = SPLIT_ALIASES.get(d.name.lower())
        if not d.is_dir() or split is None:
            continue
        export.scanned.append(d)
        export.split_dirs[split] = d
        for p in _files(d, IMAGE_EXTS, recursive=False):
            if p.stem.endswith("_mask"):
                k = (split, p.stem[: -len("_mask")])
                if k in masks:
                    export.problems.append(f"{p}: duplicate stem '{k[1]}' (also {masks[k]})")
                masks[k] = p
            else:
                k = (split, p.stem)
                if k in images:
                    export.problems.append(f"{p}: duplicate stem '{k[1]}' (also {images[k]})")
                images[k] = p
        if (d / "_classes.csv").is_file():
            tables[d / "_classes.csv"] = _read_roboflow_classes(d / "_classes.csv")
    if not export.scanned:
        raise UserError(f"{root}: the roboflow layout needs train/, valid/ or test/ folders")
    if tables:
        first_path, first = next(iter(tables.items()))
        for p, t in tables.items():
            if t != first:
                export.problems.append(f"{p}: classes differ from {first_path} ({t} vs {first})")
        n = max(first) + 1
        export.names = [first.get(v) for v in range(n)]
    _pair(images, masks, export)
    return export


def apply_split_lists(export: Export, splits_dir: Path) -> None:
    """--splits DIR: train.txt / val.txt / test.txt stems decide the splits (other images are left out)."""
    splits_dir = Path(splits_dir)
    if not splits_dir.is_dir():
        raise UserError(f"--splits {splits_dir} is not a folder (it should hold train.txt, val.txt, test.txt)")
    lists = {
        SPLIT_ALIASES[p.stem.lower()]: p for p in sorted(splits_dir.glob("*.txt")) if p.stem.lower() in SPLIT_ALIASES
    }
    if not lists:
        raise UserError(f"--splits {splits_dir}: no train.txt, val.txt or test.txt in it")
    by_key: dict[str, Item] = {}
    for it in export.items:
        by_key.setdefault(it.key, it)
        by_key.setdefault(Path(it.key).name, it)
    chosen: dict[str, str] = {}
    for split, p in lists.items():
        stems = _read_stem_list(p)
        if not stems:
            export.problems.append(f"{p}: split '{split}' is empty (the list names no image)")
        for s in stems:
            it = by_key.get(s)
            if it is None:
                export.problems.append(f"{p}: '{s}' is listed but there is no image with that stem")
            elif it.key in chosen and chosen[it.key] != split:
                export.problems.append(f"{p}: duplicate stem '{s}' (listed in '{chosen[it.key]}' too)")
            else:
                chosen[it.key] = split
    left = [it for it in export.items if it.key not in chosen and it.image is not None]
    if left:
        export.notes.append(f"{len(left)} image(s) in no list of {splits_dir} were left out, e.g. {left[0].key}")
    kept = []
    for it in export.items:
        if it.key in chosen:
            it.split = chosen[it.key]
            kept.append(it)
        elif it.image is None:
            kept.append(it)  # a mask without image stays a problem
    export.items = kept
    export.split_source = "lists"


# --------------------------------------------------------------------------------------------
# reading masks and images (the same functions in the scan and in the conversion workers)


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block: shown unrotated by every tool
        return 1


def read_mask(path: str | Path, colour: bool) -> np.ndarray:
    """A mask as HxW values (colour=False: class indices, uint8/uint16/int32 as stored; palette PNGs give
    their indices, 3-channel grey masks their first channel) or HxW int32 packed colours r<<16|g<<8|b
    (colour=True; palette PNGs through their palette, alpha dropped)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if colour and mode in ("P", "PA", "RGB", "RGBA", "RGBX", "L", "LA"):
            if mode in ("L", "LA"):  # a class-index mask beside a palette: its values are the indices
                return np.array(im.convert("L"))
            rgb = np.array(im.convert("RGB")).astype(np.int32)
            return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        if mode in ("RGB", "RGBA", "RGBX"):
            return np.ascontiguousarray(np.array(im)[..., 0])
        if mode in ("LA", "PA"):
            return np.array(im.getchannel(0))
        if mode == "1":
            return np.array(im).astype(np.uint8)
        if mode in ("P", "L") or mode.startswith("I"):
            return np.array(im)
        if mode == "F":
            arr = np.array(im)
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise UserError(f"{path}: a floating-point mask with non-integer values (not class indices)")
            return arr.astype(np.int64)
        raise UserError(f"{path}: unsupported mask mode {mode}")


def _unique(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their pixel counts, as int64 (a histogram for 8/16-bit masks: no sort)."""
    if arr.dtype in (np.uint8, np.uint16, np.bool_):
        hist = np.bincount(arr.ravel(), minlength=1)
        values = np.flatnonzero(hist)
        return values.astype(np.int64), hist[values].astype(np.int64)
    values, counts = np.unique(arr, return_counts=True)
    return values.astype(np.int64), counts.astype(np.int64)


def _scan_mask(path: str) -> dict:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        mode, (w, h) = im.mode, im.size
    res: dict = {"w": w, "h": h, "mode": mode}
    # one decode: the index values (palette PNGs: indices; RGB: packed colours), then what each view needs
    raw, counts = _unique(read_mask(path, mode in ("RGB", "RGBA", "RGBX")))
    if mode in ("RGB", "RGBA", "RGBX", "P", "PA"):
        if mode in ("P", "PA"):
            values = raw
            with Image.open(path) as im:
                flat = list(im.getpalette() or [])[:768]
            pal = np.array(flat + [0] * (768 - len(flat)), np.int64).reshape(256, 3)
            codes_all = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
            codes, inverse = np.unique(codes_all[np.clip(raw, 0, 255)], return_inverse=True)
            ccounts = np.bincount(inverse.ravel(), weights=counts, minlength=len(codes)).astype(np.int64)
            res["kind"] = "p"
        else:
            codes, ccounts = raw, counts
            values = codes & 255  # the first channel (used when every RGB mask is grey)
            res["kind"] = "rgb"
        res["colours"] = [[int(c), int(n)] for c, n in zip(codes[:MAX_VALUES], ccounts[:MAX_VALUES], strict=True)]
        res["distinct_colours"] = len(codes)
        r, g, b = codes >> 16, (codes >> 8) & 255, codes & 255
        res["grey"] = bool(np.all((r == g) & (g == b)))
        if res["kind"] == "rgb" and not res["grey"]:
            values, counts = codes[:0], counts[:0]  # colour masks are mapped by colour only
    else:
        values = raw
        res["kind"] = "index"
    res["values"] = [[int(v), int(n)] for v, n in zip(values[:MAX_VALUES], counts[:MAX_VALUES], strict=True)]
    res["distinct_values"] = len(values)
    return res


def _scan_image(path: str) -> dict:
    from PIL import Image

    validate_file(path)  # a complete decode: a truncated file raises
    with Image.open(path) as im:
        orient = _exif_orientation(im)
        w, h = im.size
        return {"w": w, "h": h, "mode": im.mode, "format": im.format or "", "orientation": orient}


def _scan_task(task: tuple[str, str]) -> tuple[str, str, dict]:
    kind, path = task
    try:
        return kind, path, (_scan_image(path) if kind == "image" else _scan_mask(path))
    except Exception as e:  # noqa: BLE001 - reported with every other problem
        what = "image" if kind == "image" else "mask"
        return kind, path, {"error": describe_error(path, e).replace(f"{path}: ", f"{path}: unreadable {what}: ", 1)}


def convert_mask(source: str, colour: bool, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A mask -> HxW uint8 labels: each read value (index or packed colour, see `read_mask`) in `keys` (sorted)
    becomes the matching entry of `values` (class index, or 255 for ignore); any other value is an error."""
    arr = read_mask(source, colour)
    if arr.dtype in (np.uint8, np.uint16) and keys.min() >= 0:  # a lookup table over the stored range
        lut = np.full(max(int(keys.max()), 255 if arr.dtype == np.uint8 else 65535) + 1, -1, np.int16)
        lut[keys] = values
        out = lut[arr]
        ok = out >= 0
    else:
        big = np.iinfo(np.int64).max
        keys_x = np.append(keys.astype(np.int64), big)  # every position searchsorted returns is valid
        values_x = np.append(values, -1)
        pos = np.searchsorted(keys_x, arr)
        out = values_x[pos]
        ok = keys_x[pos] == arr
    if not ok.all():
        bad = np.unique(arr[~ok])[:5].tolist()
        raise UserError(f"{source}: values {bad} changed since the scan (re-run the prepare)")
    return out.astype(np.uint8)


def convert_image(source: str, dst: str, orient: bool) -> None:
    """Write the image as the annotation tool showed it (EXIF orientation applied when `orient`), as 8-bit
    RGB PNG the dataset reader reads unchanged."""
    import cv2
    from PIL import Image, ImageOps

    img = None
    with Image.open(source) as im:
        mode = im.mode
        if mode in READER_MODES or mode in ("RGBX", "PA"):
            flags = cv2.IMREAD_COLOR if orient else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
            img = cv2.imread(source, flags)  # cv2.imread's own EXIF handling: what OpenCV users see
        if img is None:
            im = ImageOps.exif_transpose(im) if orient else im
            if im.mode.startswith("I") or im.mode == "F":
                arr = np.array(im).astype(np.float64)
                arr = arr / 257.0 if arr.max() > 255 else (arr * 255.0 if im.mode == "F" and arr.max() <= 1 else arr)
                grey = np.clip(np.round(arr), 0, 255).astype(np.uint8)
                img = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
            else:
                img = cv2.cvtColor(np.array(im.convert("RGB")), cv2.COLOR_RGB2BGR)
    with atomic_path(dst, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), img):
            raise UserError(f"Could not write image {dst}")


def _image_task(task) -> tuple[str, str | None]:
    source, dst, orient = task
    try:
        convert_image(source, dst, orient)
    except Exception as e:  # noqa: BLE001
        return dst, describe_error(source, e)
    return dst, None


def _link(source: Path, dst: Path) -> None:
    """dst -> source (a symbolic link; a copy where links are not allowed), replaced atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link-tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, dst)


# --------------------------------------------------------------------------------------------
# the prepare


def _safe(key: str) -> str:
    return "_".join(key.split())  # split files are whitespace-separated: no spaces in the index's names


def _rgb_str(code: int) -> str:
    return f"({code >> 16},{(code >> 8) & 255},{code & 255})"


def _pool_map(fn: Callable, tasks: list, workers: int, progress=None) -> list:
    results = []
    if workers <= 1 or len(tasks) < 2:
        for i, t in enumerate(tasks):
            results.append(fn(t))
            if progress:
                progress(i + 1, len(tasks))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, r in enumerate(pool.map(fn, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8) or 1)))):
            results.append(r)
            if progress:
                progress(i + 1, len(tasks))
    return results


def _load_scan_cache(out: Path) -> dict:
    try:
        data = json.loads((out / SCAN_FILE).read_text())
        if data.get("version") == SCAN_VERSION:
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"version": SCAN_VERSION, "files": {}, "images": {}}


def prepare(
    root,
    out,
    workers: int = 2,
    seed: int = 0,
    progress=None,
    *,
    layout: str | None = None,
    mask_suffix: str | None = None,
    splits: Path | None = None,
    palette: Path | None = None,
    classes: Path | None = None,
    ignore_index: int = 255,
    reduce_zero_label: bool = False,
    val_fraction: float = 0.1,
) -> dict:
    """Prepare a folder export (module docstring); returns meta (plus 'run' and 'notes')."""
    if root is None:
        raise UserError("`ctxseg prepare folder` needs --root: the folder with your images and masks")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder")
    root = root.resolve()
    out = Path(out).expanduser().resolve()
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must be at least 0 and below 1")
    if not 0 <= ignore_index <= 65535:
        raise UserError(f"--ignore-index {ignore_index}: must be 0..65535")
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"--layout {layout}: choose from {', '.join(LAYOUTS)}")
    found = layout or detect_layout(root)
    if found is None:  # an export unpacked one level down
        subs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(subs) == 1 and detect_layout(subs[0]):
            root, found = subs[0], detect_layout(subs[0])
    if found is None:
        raise UserError(
            f"No known layout in {root}: expected images/ + masks/ (plain), SegmentationClass/ + JPEGImages/ "
            "(+ labelmap.txt: CVAT / VOC) or train/ valid/ test/ with *_mask.png (Roboflow); see docs/datasets.md "
            "'Your own data', or give --layout"
        )
    if found == "plain":
        export = read_plain(root, mask_suffix)
    elif found in ("cvat", "voc"):
        export = read_voc(root, found)
    else:
        export = read_roboflow(root)
    if splits is not None:
        apply_split_lists(export, Path(splits).expanduser())
    if out == root or any(out == d or d in out.parents for d in export.scanned):
        raise UserError(f"--out {out} is inside the raw data ({root}); choose a folder outside it")
    if (out / "meta.json").is_file():
        try:
            old = json.loads((out / "meta.json").read_text())
        except ValueError:
            old = {}
        if old.get("preparer") != "folder":
            raise UserError(
                f"--out {out} already holds a prepared '{old.get('name', '?')}' index (not from `prepare folder`); "
                "choose another folder"
            )

    problems, notes = list(export.problems), list(export.notes)
    items = [it for it in export.items if it.image is not None]
    if not items:
        problems.append(f"{root}: no images found ({found} layout)")

    # ---- scan every file once (cached by fingerprint from an earlier successful run)
    cache = _load_scan_cache(out)
    files = cache["files"]
    tasks, fps = [], {}
    for it in items:
        for kind, p in (("image", it.image), ("mask", it.mask)):
            if p is None:
                continue
            fp = file_fingerprint(str(p))
            fps[str(p)] = fp
            hit = files.get(str(p))
            if not (hit and hit[0] == fp and hit[1] == kind):
                tasks.append((kind, str(p)))
    scan: dict[str, dict] = {p: files[p][2] for p in fps if p in files and files[p][0] == fps[p]}
    for _kind, path, res in _pool_map(_scan_task, tasks, workers, progress):
        scan[path] = res
    for it in items:
        for p in (it.image, it.mask):
            if p is not None and "error" in scan[str(p)]:
                problems.append(scan[str(p)]["error"])
    good = [
        it
        for it in items
        if "error" not in scan[str(it.image)] and (it.mask is None or "error" not in scan[str(it.mask)])
    ]
    masked = [it for it in good if it.mask is not None]

    # ---- classes and the value -> label mapping
    pal_entries: list[tuple[str | None, tuple[int, int, int]]] | None = None
    ignore_colours = list(export.ignore_colours)
    if palette is not None:
        pal_entries = []
        for name, rgb in read_palette(Path(palette).expanduser()):
            if name and name.strip().lower() in IGNORE_NAMES:
                ignore_colours.append(rgb)
            else:
                pal_entries.append((name, rgb))
    elif export.colours is not None:
        pal_entries = list(zip(export.names or [None] * len(export.colours), export.colours, strict=True))
    names_from_file = read_classes(Path(classes).expanduser()) if classes is not None else None
    rgb_masks = [it for it in masked if scan[str(it.mask)]["kind"] == "rgb"]
    colour_mode = pal_entries is not None or any(not scan[str(it.mask)]["grey"] for it in rgb_masks)
    code = lambda c: (c[0] << 16) | (c[1] << 8) | c[2]  # noqa: E731
    raw_names: list[str | None] | None = export.names
    colours_meta: list[list[int]] | None = None
    if colour_mode:
        if pal_entries is None:  # the distinct colours found, numbered in RGB order
            totals: dict[int, int] = {}
            for it in masked:
                r = scan[str(it.mask)]
                if r["kind"] == "index":
                    problems.append(
                        f"{it.mask}: a class-index mask among colour masks; give --palette FILE so both can be mapped"
                    )
                    continue
                for c, n in r["colours"]:
                    totals[c] = totals.get(c, 0) + n
            ignore_codes = {code(c) for c in ignore_colours}
            found_codes = sorted(c for c in totals if c not in ignore_codes)
            if len(found_codes) > 255 or any(
                scan[str(it.mask)].get("distinct_colours", 0) > MAX_VALUES for it in masked
            ):
                problems.append(
                    f"{root}: {len(found_codes)} distinct colours in the masks: not a class palette (lossy JPEG masks, "
                    "or images in the mask folder?); masks must be lossless PNG/TIFF"
                )
                found_codes = found_codes[:255]
            order = np.argsort(found_codes + sorted(ignore_codes))  # convert_mask needs sorted keys
            keys = np.array(found_codes + sorted(ignore_codes), np.int64)[order]
            vals = np.array(list(range(len(found_codes))) + [255] * len(ignore_codes), np.int64)[order]
            colours_meta = [[c >> 16, (c >> 8) & 255, c & 255] for c in found_codes]
            listing = "; ".join(f"{i} {_rgb_str(c)} {totals[c]} px" for i, c in enumerate(found_codes))
            notes.append(
                f"colour masks without a palette: {len(found_codes)} colour(s) found, numbered in RGB order: "
                f"{listing}. "
                "Name them with --classes FILE (one name a line, in this order) or give --palette FILE "
                "(`name:r,g,b` lines)"
            )
            raw_count = len(found_codes)
        else:
            codes = [code(c) for _, c in pal_entries]
            dup = sorted({c for c in codes if codes.count(c) > 1})
            if dup:
                raise UserError(f"the palette gives one colour to several classes: {', '.join(map(_rgb_str, dup))}")
            ignore_codes = {code(c) for c in ignore_colours}
            if code(VOC_BORDER) not in codes:
                ignore_codes.add(code(VOC_BORDER))  # VOC's boundary band, unless the palette names it
            ignore_codes -= set(codes)
            order = np.argsort(codes + sorted(ignore_codes))
            keys = np.array(codes + sorted(ignore_codes), np.int64)[order]
            vals = np.array(list(range(len(codes))) + [255] * len(ignore_codes), np.int64)[order]
            raw_names = [n for n, _ in pal_entries]
            colours_meta = [list(c) for _, c in pal_entries]
            raw_count = len(codes)
        known = set(keys.tolist())
        for it in masked:
            r = scan[str(it.mask)]
            if r["kind"] == "index":
                bad = [(v, n) for v, n in r["values"] if v >= raw_count and v != ignore_index]
                if bad:
                    problems.append(
                        f"{it.mask}: label value(s) {', '.join(f'{v} ({n} px)' for v, n in bad[:5])} >= the class "
                        f"count {raw_count} (and not the ignore index {ignore_index})"
                    )
                continue
            unknown = [(c, n) for c, n in r["colours"] if c not in known]
            if unknown:
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                problems.append(
                    f"{it.mask}: unknown colour(s) "
                    + ", ".join(f"{_rgb_str(c)} {n} px" for c, n in unknown[:5])
                    + more
                    + " (not in the palette)"
                )
        # index masks beside a palette hold raw indices: 0..raw_count-1 and the ignore value
        index_keys = np.array(sorted(set(range(raw_count)) | {ignore_index}), np.int64)
        index_vals = np.where(index_keys == ignore_index, 255, index_keys)
    else:
        if export.names is not None:
            raw_count = len(export.names)
        elif names_from_file is not None:
            raw_count = len(names_from_file) + int(reduce_zero_label)
        else:
            seen = [v for it in masked for v, _ in scan[str(it.mask)]["values"] if v != ignore_index]
            raw_count = max(seen) + 1 if seen else 1 + int(reduce_zero_label)
        for it in masked:
            r = scan[str(it.mask)]
            bad = [(v, n) for v, n in r["values"] if (v >= raw_count or v < 0) and v != ignore_index]
            if r["distinct_values"] > MAX_VALUES:
                problems.append(f"{it.mask}: {r['distinct_values']} distinct values: not a class-index mask")
            elif bad:
                problems.append(
                    f"{it.mask}: label value(s) {', '.join(f'{v} ({n} px)' for v, n in bad[:5])} >= the class "
                    f"count {raw_count - int(reduce_zero_label)}"
                    + (" (+1 for --reduce-zero-label)" if reduce_zero_label else "")
                    + f" (and not the ignore index {ignore_index})"
                )
        index_keys = np.array(sorted(set(range(raw_count)) | {ignore_index}), np.int64)
        index_vals = np.where(index_keys == ignore_index, 255, index_keys)
        keys, vals = index_keys, index_vals
    num_classes = raw_count - int(reduce_zero_label)
    if num_classes > 255 or (not reduce_zero_label and raw_count > 255):
        raise UserError(
            f"{num_classes} classes: the prepared labels are 8-bit with 255 as ignore (at most 255 classes)"
        )
    if num_classes < 1:
        raise UserError("--reduce-zero-label leaves no class (the masks hold only 0 and the ignore value)")
    if names_from_file is not None:
        if len(names_from_file) != num_classes:
            src = "the palette" if colour_mode else ("_classes.csv / labelmap" if export.names else "the mask values")
            raise UserError(
                f"--classes {classes} names {len(names_from_file)} classes but {src} gives {num_classes}"
                + (" (after --reduce-zero-label)" if reduce_zero_label else "")
            )
        class_names = names_from_file
    else:
        rn = list(raw_names or [None] * raw_count) + [None] * raw_count
        rn = rn[int(reduce_zero_label) : raw_count]
        class_names = [n or f"class_{i}" for i, n in enumerate(rn)]
    if colours_meta is not None:
        class_palette = colours_meta[int(reduce_zero_label) : raw_count]
    else:
        class_palette = bitmap_palette(raw_count)[int(reduce_zero_label) :]

    # ---- sizes (after the EXIF orientation the tool applied)
    use_orientation: dict[str, bool] = {}
    for it in good:
        r = scan[str(it.image)]
        rotated = r["orientation"] in (5, 6, 7, 8)
        size = (r["h"], r["w"]) if rotated else (r["w"], r["h"])
        use_orientation[str(it.image)] = r["orientation"] != 1
        if it.mask is None:
            continue
        m = scan[str(it.mask)]
        if (m["w"], m["h"]) != size:
            if rotated and (m["w"], m["h"]) == (r["w"], r["h"]):
                use_orientation[str(it.image)] = False
                notes.append(f"{it.image}: mask matches the unrotated image; its EXIF orientation is not applied")
            else:
                problems.append(
                    f"{it.mask}: mask is {m['w']}x{m['h']} but its image {it.image} is {size[0]}x{size[1]}"
                    + (" (after its EXIF rotation)" if rotated else "")
                )

    # ---- splits
    split_rule = None
    unassigned = [it for it in good if it.split is None]
    for it in unassigned:
        if it.mask is None:
            it.split = "test"
    pool = sorted((it for it in unassigned if it.mask is not None), key=lambda it: it.key)
    if pool:
        n_val = int(round(len(pool) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(pool) >= 2:
            n_val = 1
        perm = np.random.default_rng(seed).permutation(len(pool))
        val_idx = set(perm[:n_val].tolist())
        for i, it in enumerate(pool):
            it.split = "val" if i in val_idx else "train"
        split_rule = {"val_fraction": val_fraction, "seed": seed, "val": n_val, "train": len(pool) - n_val}
        notes.append(
            f"no split information for {len(pool)} labelled image(s): val = {n_val} chosen with --val-fraction "
            f"{val_fraction} --seed {seed} (deterministic), train = {len(pool) - n_val}"
            + (
                f"; {sum(it.mask is None for it in unassigned)} image(s) without mask -> test"
                if len(pool) < len(unassigned)
                else ""
            )
        )
    for it in good:
        if it.split in ("train", "val") and it.mask is None:
            problems.append(f"{it.image}: image without mask in split '{it.split}' (add its mask, or move it to test)")
    by_split: dict[str, list[Item]] = {}
    for it in good:
        by_split.setdefault(it.split, []).append(it)
    if export.split_source == "folders":
        for s, d in export.split_dirs.items():
            if not any(it.split == s for it in items):
                problems.append(f"{d}: split '{s}' is empty (no images in the folder)")
    if not [it for it in by_split.get("train", []) if it.mask is not None] and items:
        problems.append(f"{root}: split 'train' is empty (no image with a mask is in train)")
    test_items = by_split.get("test", [])
    if test_items and 0 < sum(it.mask is not None for it in test_items) < len(test_items):
        notes.append(
            f"split 'test': {sum(it.mask is None for it in test_items)} of {len(test_items)} images have no mask "
            "(scored only where a mask exists)"
        )
    safe_names: dict[tuple[str, str], Item] = {}
    for it in good:
        k = (it.split, _safe(it.key))
        if k in safe_names:
            problems.append(f"{it.image}: duplicate stem '{it.key}' in split '{it.split}' (also {safe_names[k].image})")
        safe_names[k] = it

    if problems:
        raise FolderProblems(sorted(dict.fromkeys(problems), key=lambda m: m), root)

    # ---- write: image links / converted copies, then labels + index through prepare_index
    n_grey = sum(scan[str(it.image)]["mode"] in ("L", "LA", "1") for it in good)
    n_alpha = sum(scan[str(it.image)]["mode"] in ("RGBA", "LA", "PA") for it in good)
    if n_grey or n_alpha:
        notes.append(
            f"{n_grey} greyscale and {n_alpha} RGBA image(s) are read as RGB (grey copied to 3 channels, alpha dropped)"
        )
    out.mkdir(parents=True, exist_ok=True)
    img_state = cache["images"]
    copies, jobs, sources, wanted, linked = [], [], [], set(), set()
    for it in sorted(good, key=lambda it: ({"train": 0, "val": 1, "test": 2}.get(it.split, 3), it.key)):
        r = scan[str(it.image)]
        orient = use_orientation[str(it.image)]
        # an EXIF tag is never left for a reader to interpret (OpenCV IMREAD_UNCHANGED ignores it, Pillow-based
        # tools apply it): EXIF-tagged images become copies holding the pixels as annotated
        needs_copy = r["orientation"] != 1 or r["format"] not in READER_FORMATS or r["mode"] not in READER_MODES
        rel = f"{it.split}/{_safe(it.key)}" + (".png" if needs_copy else it.image.suffix.lower())
        dst = out / "images" / rel
        wanted.add(dst)
        how = f"{fps[str(it.image)]}\t{'copy' if needs_copy else 'link'}\t{int(orient)}"
        if not (dst.is_file() and img_state.get(rel) == how):
            if needs_copy:
                copies.append((str(it.image), str(dst), orient, rel, how))
            else:
                _link(it.image, dst)
                img_state[rel] = how
        if not needs_copy:
            linked.add(rel)
        label = None
        if it.mask is not None:
            label = f"{it.split}/{_safe(it.key)}.png"
            wanted.add(out / "labels" / label)
            m = scan[str(it.mask)]
            colour = colour_mode and m["kind"] != "index"
            k, v = (keys, vals) if (colour or not colour_mode) else (index_keys, index_vals)
            spec = hashlib.sha256(k.tobytes() + v.tobytes() + bytes([colour])).hexdigest()[:16]
            jobs.append(
                Job(
                    it.split,
                    rel,
                    label,
                    str(it.mask),
                    convert_mask,
                    (colour, k, v),
                    fingerprint=f"{fps[str(it.mask)]}\t{spec}",
                )
            )
            sources.append(str(it.mask))
        else:
            jobs.append(Job(it.split, rel))
        sources.append(str(it.image))
    if copies:
        notes.append(
            f"{len(copies)} image(s) written as converted PNG copies (EXIF orientation applied, or a format the "
            "reader would read differently)"
        )
        errs = [e for _, e in _pool_map(_image_task, [c[:3] for c in copies], workers) if e]
        if errs:
            raise BadFilesError(str(root), errs)
        for _, _, _, rel, how in copies:
            img_state[rel] = how
    info = DatasetInfo(
        out.name,
        class_names,
        [list(map(int, c)) for c in class_palette],
        255,
        reduce_zero_label,
        extra={
            "preparer": "folder",
            "layout": found,
            "source_root": str(root),
            "mask_format": "colour" if colour_mode else "index",
            "input_ignore_index": ignore_index,
            "split_source": "val-fraction" if split_rule else export.split_source,
            "split_rule": split_rule,
            "notes": notes,
        },
    )
    # the images were decoded completely by the scan: recorded as validated, prepare_index skips them
    state = _State(out)
    for job in jobs:
        path = out / "images" / job.image
        fp = file_fingerprint(str(path))
        if fp is not None and job.image in linked:
            state.data[str(path)] = fp
    state.save(force=True)
    meta = prepare_index(info, jobs, out, out / "images", "labels", workers, progress, sources, [])
    # the scan cache: only files that passed (kind recorded so an image never stands in for a mask)
    kinds = {str(it.image): "image" for it in good} | {str(it.mask): "mask" for it in good if it.mask is not None}
    cache["files"] = {p: [fps[p], kind, scan[p]] for p, kind in kinds.items()}
    cache["images"] = {rel: how for rel, how in img_state.items() if out / "images" / rel in wanted}
    write_json(out / SCAN_FILE, cache)
    removed = 0
    for sub in ("images", "labels"):
        for p in sorted((out / sub).rglob("*")) if (out / sub).is_dir() else []:
            if (p.is_file() or p.is_symlink()) and p not in wanted and not p.name.startswith("."):
                p.unlink()
                removed += 1
    if removed:
        notes.append(f"{removed} file(s) of an earlier prepare no longer in the export were removed from {out}")
    meta["notes"] = notes
    return meta
