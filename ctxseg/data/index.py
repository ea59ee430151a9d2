"""The prepared-index format every dataset is converted to (the built-in one included).

    <root>/meta.json          name, classes, palette, num_classes, ignore_index, reduce_zero_label,
                              image_root, label_root (relative to <root> or absolute), flip_pairs,
                              splits {name: count}, class_pixel_counts, source_checksum
    <root>/splits/<split>.txt one sample per line: "<image path> <label path>" (label optional for
                              test splits), relative to image_root / label_root
Raw images are never copied: image_root may point at the untouched download.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ctxseg.errors import UserError


@dataclass
class Sample:
    """One line of a split file, resolved.

    Args:
        image: path of the image (under the index's image_root).
        label: path of the label image (under label_root); None in a split without labels.
        name: image path relative to image_root, without suffix (a stable id for outputs).
    """

    image: Path
    label: Path | None
    name: str  # image path relative to image_root, without suffix (stable id for outputs)


@dataclass
class PreparedIndex:
    """A prepared dataset (module docstring); open one with `PreparedIndex.open(root)`.

    Args:
        root: the index folder (meta.json, splits/).
        meta: the parsed meta.json.
    """

    root: Path
    meta: dict = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> PreparedIndex:
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"No prepared dataset at {root} (meta.json missing). Run `ctxseg prepare` first.")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{meta_path} is not valid JSON: {e}") from None
        return cls(root, meta)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.meta["palette"]]

    @property
    def ignore_index(self) -> int:
        return int(self.meta.get("ignore_index", 255))

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        return [tuple(p) for p in self.meta.get("flip_pairs", [])]

    def _dir(self, key: str) -> Path:
        p = Path(self.meta.get(key, "."))
        return p if p.is_absolute() else self.root / p

    def samples(self, split: str) -> list[Sample]:
        path = self.root / "splits" / f"{split}.txt"
        if not path.is_file():
            have = sorted(p.stem for p in (self.root / "splits").glob("*.txt"))
            raise UserError(f"Split '{split}' not found in {self.root} (available: {', '.join(have) or 'none'})")
        image_root, label_root = self._dir("image_root"), self._dir("label_root")
        out = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if not parts:
                continue
            label = label_root / parts[1] if len(parts) > 1 else None
            out.append(Sample(image_root / parts[0], label, str(Path(parts[0]).with_suffix(""))))
        return out
