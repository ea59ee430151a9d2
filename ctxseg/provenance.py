"""Provenance of every recipe setting: the official values behind each recipe, machine-checked.

The table (recipes/provenance/official.toml) holds, per recipe, the settings read from the
official configuration it reproduces (mmsegmentation, sssegmentation, openseg/ContrastiveSeg,
CAC) and where each was read. Shared facts live in `profiles` (one dataset pipeline, one
schedule); a row lists the profiles it `use`s, then its own keys, which win. A recipe may differ
from the official value only where its row names the key under `deviations`, with the reason.
Recipes that reproduce no paper are listed under `own` with what they are instead.

`compare(recipe)` resolves a recipe's row and returns one line per setting; the test suite
requires every line to agree, and `ctxseg recipes show NAME --provenance` prints them.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ctxseg.config import Recipe, recipe_dirs
from ctxseg.errors import UserError

TABLE_NAME = Path("provenance") / "official.toml"
WEIGHTS_NAME = Path("provenance") / "weights.toml"  # the built-in weights registry (data; read by ctxseg.weights)
OFFICIAL = "official"  # `pretrained = "official"` / "official:<entry>": the official init through the registry

# setting name -> dotted path in a resolved recipe (what is compared with the official value)
KEYS: dict[str, str] = {
    "iters": "train.iters",
    "epochs": "train.epochs",
    "processes": "train.processes",
    "batch": "data.batch_size",
    "crop": "data.crop_size",
    "scale": "data.scale",
    "keep_ratio": "data.keep_ratio",
    "ratio_range": "data.ratio_range",
    "cat_max": "data.cat_max_ratio",
    "rotate_prob": "data.rotate_prob",
    "rotate_degree": "data.rotate_degree",
    "flip_prob": "data.flip_prob",
    "photometric": "data.photometric",
    "pipeline": "data.pipeline",  # whose transforms, draw for draw: mmseg, mmseg0, ssseg or openseg
    "optimizer": "train.optimizer.type",
    "lr": "train.optimizer.lr",
    "momentum": "train.optimizer.momentum",
    "weight_decay": "train.optimizer.weight_decay",
    "policy": "train.schedule.policy",
    "power": "train.schedule.power",
    "min_lr": "train.schedule.min_lr",
    "warmup_iters": "train.schedule.warmup_iters",
    "decode_weight": "train.loss.decode_weight",
    "aux_weight": "train.loss.aux_weight",
    "norm": "model.norm",
    "pretrained": "model.backbone.pretrained",
    "test_mode": "eval.mode",
    "ms_mode": "eval.ms_mode",
    "test_crop": "eval.crop_size",
    "test_stride": "eval.stride",
    "test_resize": "eval.resize",
    "test_keep_ratio": "eval.keep_ratio",
    "test_flip": "eval.flip",
    "ms_scales": "eval.ms_scales",
    "train_split": "data.train_split",
    "val_split": "data.val_split",
    "miou": "published.miou",
    "miou_flip": "published.miou_flip",
    "miou_ms": "published.miou_ms",
}
PUBLISHED_KEYS = ("miou", "miou_flip", "miou_ms")  # absent in a row = the paper has no such number
# keys every row must state (directly or through a profile); the others depend on the row (test crop
# and stride for sliding windows, momentum for SGD, ms_scales where the official config defines them)
REQUIRED = tuple(
    k
    for k in KEYS
    if k
    not in (
        "iters",
        "epochs",
        "test_crop",
        "test_stride",
        "rotate_degree",
        "momentum",
        "ms_mode",
        "ms_scales",
        "pipeline",  # unstated: the mmseg-style pipeline (DEFAULT_PIPELINE), compared all the same
        *PUBLISHED_KEYS,
    )
)
META_KEYS = {"use", "config", "deviations", "published_source", "notes", "source"}
# settings of the mmseg-style pipeline: inert (compared as unset) in a recipe with data.pipeline = "openseg",
# whose augmentation is stated by the row's "data.openseg.*" keys
MMSEG_PIPELINE_KEYS = (
    "scale",
    "keep_ratio",
    "ratio_range",
    "cat_max",
    "rotate_prob",
    "rotate_degree",
    "flip_prob",
    "photometric",
)
DEFAULT_PIPELINE = "mmseg"  # a row that states no `pipeline`: the mmseg-style one (mmseg, ssseg and CAC alike)


@dataclass
class Line:
    """One compared setting of a recipe (a row of `ctxseg recipes show NAME --provenance`).

    Args:
        key: setting name (a key of KEYS, e.g. "iters").
        path: dotted path of the setting in the resolved recipe (e.g. "train.iters").
        recipe: the recipe's value.
        official: the official configuration's value (None when the row does not state it).
        source: where the official value was read (file and line of the official config).
        status: "ok", "deviation" (differs, with the reason in the row's `deviations`) or "MISMATCH".
        note: the deviation's reason, or what is wrong.
    """

    key: str
    path: str
    recipe: Any
    official: Any
    source: str
    status: str  # "ok", "deviation" or "MISMATCH"
    note: str = ""


def table_path() -> Path:
    for d in recipe_dirs():
        if (d / TABLE_NAME).is_file():
            return d / TABLE_NAME
    raise UserError(f"The provenance table {TABLE_NAME} was not found beside the recipes")


@lru_cache(maxsize=4)
def _load(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_table(path: Path | None = None) -> dict:
    return _load(path or table_path())


def weights_path() -> Path:
    for d in recipe_dirs():
        if (d / WEIGHTS_NAME).is_file():
            return d / WEIGHTS_NAME
    raise UserError(f"The weights registry {WEIGHTS_NAME} was not found beside the recipes")


def load_weights(path: Path | None = None) -> dict[str, dict]:
    """The built-in registry's rows, `[weights.<name>]` -> row (no user registries, no network)."""
    return _load(path or weights_path()).get("weights", {})


def official_entry_name(spec: Any, recipe_name: str, weights: dict[str, dict] | None = None) -> str | None:
    """The init entry an `official` / `official:<entry>` pretrained spec names (None for any other spec).
    Plain `official` means the init entry that lists the recipe (by its name) in `recipes`; "" when none does."""
    if not isinstance(spec, str) or not (spec == OFFICIAL or spec.startswith(OFFICIAL + ":")):
        return None
    if spec != OFFICIAL:
        return spec.split(":", 1)[1]
    weights = load_weights() if weights is None else weights
    return next((n for n, e in weights.items() if e.get("kind") == "init" and recipe_name in e.get("recipes", [])), "")


def weights_rows(recipe_name: str, weights: dict[str, dict] | None = None) -> list[tuple[str, dict]]:
    """(entry name, row) of a recipe's registry entries: its released model (the entry named after the
    recipe or whose `recipe` is it), then the init entries that list it."""
    weights = load_weights() if weights is None else weights
    released = [(n, e) for n, e in weights.items() if e.get("kind") == "released" and e.get("recipe") == recipe_name]
    inits = [(n, e) for n, e in weights.items() if e.get("kind") == "init" and recipe_name in e.get("recipes", [])]
    return released + inits


def resolve_row(name: str, table: dict | None = None) -> tuple[dict[str, Any], dict[str, str], dict]:
    """(official values, source per key, the row itself) of a recipe; UserError without a row."""
    table = table or load_table()
    rows = table.get("recipes", {})
    if name not in rows:
        raise UserError(
            f"No provenance row for recipe '{name}'"
            + (f" (own setting: {table['own'][name]})" if name in table.get("own", {}) else "")
        )
    row = rows[name]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for prof in row.get("use", []):
        if prof not in table.get("profiles", {}):
            raise UserError(f"provenance row '{name}' uses unknown profile '{prof}'")
        p = table["profiles"][prof]
        for k, v in p.items():
            if k not in META_KEYS:
                values[k], sources[k] = v, p.get("source", prof)
    for k, v in row.items():
        if k not in META_KEYS:
            values[k], sources[k] = v, row.get("config", "")
    for k in PUBLISHED_KEYS:
        if k in values and row.get("published_source"):
            sources[k] = row["published_source"]
    return values, sources, row


def _get(d: dict, path: str) -> Any:
    """The value at a dotted path; in a list of tables (`model.plugins`) a part names the entry by
    its `name` or `type`, as `--set model.plugins.mcibi.base_lr=...` does."""
    node: Any = d
    for part in path.split("."):
        if isinstance(node, list):
            node = next((e for e in node if isinstance(e, dict) and part in (e.get("name"), e.get("type"))), None)
            if node is None:
                return None
            continue
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def same(a: Any, b: Any) -> bool:
    """Equality for settings: lists == tuples, ints == floats, floats to 1e-9 relative."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _pretrained_matches(recipe_value: Any, official: Any, recipe_name: str = "") -> bool:
    """`official:<entry>` (or `official`) must name the registry's init entry whose `official_name` is the
    row's `pretrained`. Any other source (timm, a URL, a path) is a file ctxseg cannot compare with the
    official name: what must agree then is whether the backbone starts from pretrained weights at all
    ("none" = random init)."""
    entry = official_entry_name(recipe_value, recipe_name)
    if entry is not None:
        row = load_weights().get(entry)
        return row is not None and row.get("kind") == "init" and row.get("official_name") == official
    wants = str(official).lower() not in ("none", "")
    has = recipe_value not in (None, False, "", "none")
    return wants == has


def _registry_note(spec: Any, recipe_name: str) -> str:
    """For an `official` pretrained spec: the registry entry it names (shown beside the comparison)."""
    entry = official_entry_name(spec, recipe_name)
    if entry is None:
        return ""
    row = load_weights().get(entry or "")
    if row is None:
        return f"no init entry '{entry}' in recipes/provenance/weights.toml"
    return f"weights registry entry {entry} ({row.get('official_name', '')})"


def compare(recipe: Recipe, table: dict | None = None) -> list[Line]:
    values, sources, row = resolve_row(recipe.name, table)
    resolved = recipe.to_dict()
    deviations = row.get("deviations", {})
    lines = []
    keys = list(KEYS) + [k for k in values if "." in k]  # dotted keys: method hyper-parameters
    for key in keys:
        if key not in values and key not in REQUIRED and key not in PUBLISHED_KEYS and key != "pipeline":
            continue
        path = KEYS.get(key, key)
        ours = _get(resolved, path)
        official = values.get(key)
        if official == "none":  # TOML has no null: "none" states that the official config has no such setting
            official = None
        if key == "ms_mode":  # the mode --ms-flip runs with
            ours = recipe.eval.ms_mode or recipe.eval.mode
        if key == "aux_weight" and official is None and recipe.model.aux_head is None:
            ours = None  # no auxiliary head: its weight is inert
        if key in MMSEG_PIPELINE_KEYS and recipe.data.pipeline == "openseg":
            ours = None  # openseg's own pipeline: the mmseg-style keys are not read
        if key == "pipeline" and key not in values:
            official = DEFAULT_PIPELINE
        if key not in values and key in REQUIRED:
            lines.append(Line(key, path, ours, None, "", "MISMATCH", "the provenance row does not state this setting"))
            continue
        ok = _pretrained_matches(ours, values.get(key), recipe.name) if key == "pretrained" else same(ours, official)
        if ok:
            status, note = "ok", deviations.get(key, "")
        elif key in deviations:
            status, note = "deviation", deviations[key]
        else:
            status, note = "MISMATCH", ""
        if key == "pretrained" and not note:
            note = _registry_note(ours, recipe.name)
        if key == "pipeline" and key not in values and not note:
            note = "the row states no pipeline: the mmseg-style one"
        lines.append(
            Line(
                key,
                path,
                ours,
                official,
                sources.get(key, "") if key in values else row.get("published_source", row.get("config", "")),
                status,
                note,
            )
        )
    for key in deviations:
        if key not in values and key not in KEYS:
            lines.append(Line(key, key, None, None, "", "MISMATCH", "deviation names a setting the row does not state"))
    return lines


def own_reason(name: str, table: dict | None = None) -> str | None:
    return (table or load_table()).get("own", {}).get(name)
