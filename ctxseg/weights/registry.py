"""The weights registry: rows read from the built-in table and from the user's own files.

Built-in: `recipes/provenance/weights.toml` beside the bundled recipes (may be absent). User
registries: `CTXSEG_WEIGHTS_REGISTRY=a.toml:b.toml`, same row format; a later file's row replaces
an earlier one of the same name (a user file may so re-point a built-in entry). A row is checked
when read: an unknown key, a missing one or a wrong type is a UserError naming the file and the
row. `CTXSEG_WEIGHTS_MIRROR=http://host/prefix` replaces scheme and host of every URL (the path
is kept and appended to the prefix). Nothing here imports torch or touches the network.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ctxseg.errors import UserError

BUILTIN_NAME = Path("provenance") / "weights.toml"
REGISTRY_ENV = "CTXSEG_WEIGHTS_REGISTRY"
MIRROR_ENV = "CTXSEG_WEIGHTS_MIRROR"

KINDS = ("released", "init")
RELEASED_LAYOUTS = ("mmseg", "ssseg", "openseg", "cac", "ctxseg")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_HEX = re.compile(r"[0-9a-f]{6,64}")

# key -> (accepted types, description used in error messages)
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), "released | init"),
    "url": ((str,), "an http(s) URL"),
    "sha256": ((str,), "hex digest or its published prefix (>= 6 hex digits)"),
    "size": ((int,), "bytes (an integer)"),
    "layout": ((str,), "the file's layout"),
    "recipe": ((str,), "a bundled recipe name or a path to a recipe file"),
    "recipes": ((list,), "a list of recipe names"),
    "official_name": ((str,), "the name the official config uses"),
    "source": ((str,), "where the facts were read"),
    "published": ((dict,), "a table of published numbers"),
    "fetchable": ((bool,), "true | false"),
    "page": ((str,), "a web page holding the file"),
    "file": ((str,), "the file name in the cache (default: the URL's last path part)"),
    "notes": ((str,), "free text"),
}


@dataclass(frozen=True)
class Entry:
    """One registry row: a released model or an initialisation, with where it comes from.

    Args:
        name: the entry's name (the TOML table name under [weights]).
        kind: "released" (a whole segmentation model) or "init" (the backbone initialisation).
        url: where the file is published (before `CTXSEG_WEIGHTS_MIRROR` is applied); "" for a
            file that is not fetchable and has only a `page`.
        sha256: the full hex digest, or the published prefix (checked as torch.hub's check_hash);
            "" where none is published (the digest seen first is recorded and checked after).
        size: file size in bytes, when known.
        layout: released: mmseg | ssseg | openseg | cac | ctxseg; init: the file's layout tag.
        recipe: released: the recipe (bundled name, or a recipe file path, made absolute).
        recipes: init: the bundled recipes that start from it.
        official_name: init: the name the official config uses (e.g. open-mmlab://msra/hrnetv2_w18).
        source: where these facts were read.
        published: the published numbers (e.g. {"miou": 80.8}).
        fetchable: False when the file sits behind a page a program cannot fetch.
        page: that page (for `fetchable = false`).
        file: the file's name in the cache.
        origin: the registry file the row was read from.
    """

    name: str
    kind: str
    url: str
    sha256: str
    size: int | None = None
    layout: str = ""
    recipe: str | None = None
    recipes: tuple[str, ...] = ()
    official_name: str | None = None
    source: str = ""
    published: dict[str, Any] = field(default_factory=dict)
    fetchable: bool = True
    page: str | None = None
    file: str = ""
    origin: str = ""

    @property
    def download_url(self) -> str:
        """The URL actually requested (`CTXSEG_WEIGHTS_MIRROR` applied)."""
        return mirrored(self.url)

    @property
    def hash_text(self) -> str:
        """The expected hash as messages print it."""
        return self.sha256 or "not published (the digest is recorded at the first download or import)"

    @property
    def cached(self) -> bool:
        """Whether the verified file (for a released model: or its conversion) is in the cache."""
        from ctxseg.weights import cache

        return cache.raw_path(self).is_file() or cache.converted_path(self).is_file()

    def all_recipes(self) -> tuple[str, ...]:
        """Every recipe the entry belongs to (a released model's one, an init's list)."""
        return ((self.recipe,) if self.recipe else ()) + tuple(r for r in self.recipes if r != self.recipe)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "recipe": self.recipe,
            "recipes": list(self.recipes),
            "url": self.url,
            "download_url": self.download_url,
            "sha256": self.sha256,
            "size": self.size,
            "layout": self.layout,
            "file": self.file,
            "official_name": self.official_name,
            "source": self.source,
            "published": self.published,
            "fetchable": self.fetchable,
            "page": self.page,
            "origin": self.origin,
            "cached": self.cached,
        }


def mirrored(url: str) -> str:
    """`url` with scheme and host replaced by `CTXSEG_WEIGHTS_MIRROR` (its path appended to the mirror's)."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror or not url:
        return url
    parts = urlsplit(url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return mirror.rstrip("/") + "/" + tail.lstrip("/")


def builtin_path() -> Path | None:
    from ctxseg.config import recipe_dirs

    for d in recipe_dirs():
        if (d / BUILTIN_NAME).is_file():
            return d / BUILTIN_NAME
    return None


def registry_files() -> list[Path]:
    """The registry files read, in order: the built-in table (if present), then `CTXSEG_WEIGHTS_REGISTRY`'s."""
    files = [p for p in [builtin_path()] if p is not None]
    for part in os.environ.get(REGISTRY_ENV, "").split(os.pathsep):
        if part.strip():
            p = Path(part.strip()).expanduser()
            if not p.is_file():
                raise UserError(f"{REGISTRY_ENV} names {p}, which is not a file")
            files.append(p)
    return files


def _check_row(name: str, row: Any, where: Path) -> Entry:
    at = f"{where}: [weights.{name}]"
    if not _NAME.fullmatch(name):
        raise UserError(f"{at}: entry names use letters, digits and . _ + - (got '{name}')")
    if not isinstance(row, dict):
        raise UserError(f"{at} must be a table")
    for key, value in row.items():
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, list(_FIELDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(_FIELDS)}"
            raise UserError(f"{at}: unknown key '{key}'{hint}")
        types, what = _FIELDS[key]
        if not isinstance(value, types) or (int in types and isinstance(value, bool)):
            raise UserError(f"{at}: '{key}' must be {what}, got {value!r}")
    kind = row.get("kind", "released")
    if kind not in KINDS:
        raise UserError(f"{at}: kind must be one of {', '.join(KINDS)}, got '{kind}'")
    fetchable = row.get("fetchable", True)
    # A file behind a page a program cannot fetch may have no file URL at all (only `page`); and
    # where the official code base publishes no hash, `sha256` is left out: the digest is then
    # recorded at the first download or import and checked from then on (trust on first use).
    required = ("url", "layout") if fetchable else ("layout",)
    for key in required:
        if not row.get(key):
            raise UserError(f"{at}: '{key}' is missing ({_FIELDS[key][1]})")
    if not fetchable and not (row.get("url") or row.get("page")):
        raise UserError(f"{at}: a file that is not fetchable needs 'page' (where a person downloads it) or 'url'")
    url = row.get("url", "")
    if url and not url.startswith(("http://", "https://")):
        raise UserError(f"{at}: url must start with http:// or https://, got '{url}'")
    sha = row.get("sha256", "").lower()
    if "sha256" in row and not _HEX.fullmatch(sha):
        raise UserError(f"{at}: sha256 must be 6 to 64 hex digits (a digest or its published prefix), got '{sha}'")
    layout = row["layout"]
    if kind == "released" and layout not in RELEASED_LAYOUTS:
        raise UserError(f"{at}: a released model's layout must be one of {', '.join(RELEASED_LAYOUTS)}, got '{layout}'")
    recipe = row.get("recipe")
    recipes = row.get("recipes", [])
    if not all(isinstance(r, str) for r in recipes):
        raise UserError(f"{at}: 'recipes' must be a list of recipe names")
    if kind == "released" and not recipe:
        raise UserError(f"{at}: a released model needs 'recipe' (the recipe that describes it)")
    if recipe and recipe.endswith(".toml") and not Path(recipe).is_absolute():
        recipe = str((where.parent / recipe).resolve())  # a recipe file relative to its registry file
    file = row.get("file") or (Path(urlsplit(url).path).name if fetchable else "") or f"{name}.pth"
    if not file or "/" in file or file.startswith("."):
        raise UserError(f"{at}: cannot take a file name from url '{url}'; give file = \"NAME\"")
    return Entry(
        name=name,
        kind=kind,
        url=url,
        sha256=sha,
        size=row.get("size"),
        layout=layout,
        recipe=recipe,
        recipes=tuple(recipes),
        official_name=row.get("official_name"),
        source=row.get("source", ""),
        published=dict(row.get("published", {})),
        fetchable=fetchable,
        page=row.get("page"),
        file=file,
        origin=str(where),
    )


def read_registry_file(path: Path) -> dict[str, Entry]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise UserError(f"Cannot read weights registry {path}: {e.strerror or e}") from None
    extra = sorted(set(raw) - {"weights"})
    if extra:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(extra)}; rows go under [weights.<name>]")
    table = raw.get("weights", {})
    if not isinstance(table, dict):
        raise UserError(f"{path}: 'weights' must be a table of [weights.<name>] rows")
    return {name: _check_row(name, row, path) for name, row in table.items()}


def load_registry() -> dict[str, Entry]:
    """Every entry, built-in first, user files after (a later row of the same name replaces an earlier one)."""
    entries: dict[str, Entry] = {}
    for path in registry_files():
        entries.update(read_registry_file(path))
    return entries


def list_entries() -> list[Entry]:
    """Every registry entry (built-in and user), in registry order."""
    return list(load_registry().values())


def _recipe_key(recipe: str) -> str:
    """A recipe reference compared by name: a bundled name, or a recipe file's name (its `name` key,
    as `load_recipe` gives it; the file's stem when it sets none or cannot be read)."""
    if not recipe.endswith(".toml"):
        return recipe
    path = Path(recipe)
    try:
        return _file_recipe_name(str(path.resolve()), path.stat().st_mtime_ns)
    except OSError:
        return path.stem


def _recipe_keys(recipe: str) -> set[str]:
    """Every name a recipe reference answers to: its name, and a recipe file's stem."""
    return {_recipe_key(recipe), Path(recipe).stem if recipe.endswith(".toml") else recipe}


@functools.lru_cache(maxsize=64)
def _file_recipe_name(path: str, mtime_ns: int) -> str:
    from ctxseg.config import load_raw

    try:
        name = load_raw(Path(path)).get("name")
    except UserError:
        name = None
    return name if isinstance(name, str) and name else Path(path).stem


def find(name: str, *, init: bool = False) -> Entry:
    """An entry by its name, or by a recipe's name: that recipe's released model (init=True: its
    initialisation). UserError when nothing matches."""
    entries = load_registry()
    if name in entries and not (init and entries[name].kind == "released"):
        return entries[name]  # (a released model's entry is named after its recipe: `--init` means the recipe)
    keys = _recipe_keys(name)
    if init:
        found = [
            e for e in entries.values() if e.kind == "init" and any(keys & _recipe_keys(r) for r in e.all_recipes())
        ]
    else:
        found = [e for e in entries.values() if e.kind == "released" and e.recipe and keys & _recipe_keys(e.recipe)]
    if found:
        return found[-1]  # a user registry's row (read last) wins
    what = "an initialisation" if init else "a released model"
    close = difflib.get_close_matches(name, list(entries), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    files = ", ".join(str(p) for p in registry_files()) or "none (no built-in table, CTXSEG_WEIGHTS_REGISTRY unset)"
    raise UserError(
        f"No weights entry '{name}' and no recipe '{name}' with {what} in the registry.{hint} "
        f"See `ctxseg weights list`; registries read: {files}"
    )
