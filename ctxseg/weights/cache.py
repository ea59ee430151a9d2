"""The weights cache: `$CTXSEG_HOME/weights/` (CTXSEG_HOME defaults to ~/.cache/ctxseg).

    raw/<entry>/<file>                      the verified file as published (never changed)
    converted/<entry>.safetensors           a released model as a ctxseg checkpoint, or an init's
                                            backbone tensors under ctxseg's backbone names
    converted/<entry>.report.json / .txt    what the conversion did (strict: every key accounted for)

A file under its final name is complete and verified (temp file + fsync + rename); `.part` files
are interrupted downloads, resumed by the next `get`. Conversions run once, under a lock, and a
second `get` reads nothing but the file system. torch is imported only to convert.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from ctxseg.errors import UserError
from ctxseg.paths import home
from ctxseg.weights.download import download, file_lock, hash_matches, sha256_of, write_fault
from ctxseg.weights.registry import Entry


def weights_dir() -> Path:
    return home() / "weights"


def raw_path(entry: Entry) -> Path:
    return weights_dir() / "raw" / entry.name / entry.file


def converted_path(entry: Entry) -> Path:
    if entry.kind == "released" and entry.layout == "ctxseg":
        return raw_path(entry)  # already a ctxseg checkpoint: used as it is
    return weights_dir() / "converted" / f"{entry.name}.safetensors"


def report_paths(entry: Entry) -> tuple[Path, Path]:
    base = weights_dir() / "converted" / entry.name
    return base.with_name(f"{entry.name}.report.json"), base.with_name(f"{entry.name}.report.txt")


def add_command(entry: Entry) -> str:
    return f"ctxseg weights add FILE --name {entry.name}"


def _failure_message(entry: Entry, dest: Path):
    def message(kind: str, detail: str) -> str:
        what = {
            "unreachable": "cannot reach the server (no network?)",
            "not found": "the server has no such file",
            "dropped": "the server kept dropping the connection",
        }[kind]
        part = dest.with_name(dest.name + ".part")
        kept = f"\n  The partial download is kept as {part} and resumes next time." if part.is_file() else ""
        mirror = "" if entry.download_url == entry.url else f" (via CTXSEG_WEIGHTS_MIRROR; published at {entry.url})"
        return (
            f"Cannot download weights '{entry.name}': {what} ({detail}).\n"
            f"  URL: {entry.download_url}{mirror}\n"
            f"  expected sha256: {entry.hash_text}{f' ({entry.size} bytes)' if entry.size else ''}\n"
            f"  cache path: {dest}{kept}\n"
            f"  Fetch the file another way and import it: {add_command(entry)}"
        )

    return message


def fetch(entry: Entry, *, progress: bool = True) -> Path:
    """The verified raw file of `entry` in the cache; downloaded once (no request when cached)."""
    dest = raw_path(entry)
    if dest.is_file():
        return dest
    if not entry.fetchable:
        raise UserError(
            f"Weights '{entry.name}' are published only behind a page a program cannot fetch"
            f"{f': {entry.page or entry.url}' if entry.page or entry.url else ''}.\n  Download {entry.file} there "
            f"(expected sha256 {entry.hash_text}) and import it: {add_command(entry)}\n  cache path: {dest}"
        )
    path = download(
        entry.download_url,
        dest,
        entry.sha256,
        size=entry.size,
        progress=progress,
        label=entry.file,
        on_failure=_failure_message(entry, dest),
    )
    if not entry.sha256:
        _record_first_digest(entry, path)
    return path


def recorded_digest_path(entry: Entry) -> Path:
    """Where the digest of a file whose official code base publishes no hash is kept (first seen)."""
    raw = raw_path(entry)
    return raw.with_name(raw.name + ".sha256")


def file_digest(entry: Entry) -> str:
    """The hash the cached file was accepted under: the published one, else the one recorded."""
    if entry.sha256:
        return entry.sha256
    recorded = recorded_digest_path(entry)
    return recorded.read_text().strip() if recorded.is_file() else ""


def _record_first_digest(entry: Entry, path: Path, digest: str | None = None) -> None:
    from ctxseg.io import write_text

    recorded = recorded_digest_path(entry)
    if recorded.is_file():
        return
    digest = digest or sha256_of(path)
    write_text(recorded, digest + "\n")
    _console(None).print(
        f"[yellow]note[/]: the official code base publishes no hash for '{entry.name}'; "
        f"accepted sha256 {digest} (recorded in {recorded}; re-imports must match it)"
    )


def add(entry: Entry, file: Path, digest: str | None = None) -> Path:
    """Import a file the user fetched: verified against the entry's hash, then copied into the cache.
    `digest`: the file's sha256 when the caller has computed it already (a large file is read once)."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"No such file: {file}")
    digest = digest or sha256_of(file)
    expected = file_digest(entry)
    if expected and not hash_matches(digest, expected):
        recorded = recorded_digest_path(entry)
        source = "the registry's" if entry.sha256 else f"the one recorded at the first import ({recorded})"
        raise UserError(
            f"{file} is not the file of weights '{entry.name}': its sha256 differs from {source}; "
            f"nothing was imported.\n  expected: {expected}\n  got:      {digest}"
        )
    dest = raw_path(entry)
    lock = dest.parent / f".{dest.name}.lock"
    with file_lock(lock):
        if dest.is_file():
            return dest
        tmp = dest.with_name(f".{dest.name}.import-{os.getpid()}")
        try:
            shutil.copyfile(file, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except OSError as e:
            raise write_fault(dest, e) from None
        finally:
            tmp.unlink(missing_ok=True)
    if not entry.sha256:
        _record_first_digest(entry, dest, digest)
    return dest


def get(entry: Entry, *, progress: bool = True, console=None) -> Path:
    """The converted ctxseg checkpoint of `entry`: fetched, verified and converted once."""
    out = converted_path(entry)
    if out.is_file():
        return out
    raw = fetch(entry, progress=progress)
    if out == raw:
        return out
    with file_lock(out.parent / f".{out.name}.lock"):
        if out.is_file():
            return out
        if entry.kind == "released":
            _convert_released(entry, raw, out, console)
        else:
            _convert_init(entry, raw, out, console)
    return out


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console(stderr=True)


def _write_reports(entry: Entry, raw: Path, data: dict, text: str) -> None:
    from ctxseg.io import write_json, write_text

    report_json, report_txt = report_paths(entry)
    info = {
        "entry": entry.name,
        "kind": entry.kind,
        "layout": entry.layout,
        "url": entry.url,
        "sha256": file_digest(entry),
        "sha256_published": bool(entry.sha256),
        "raw_file": str(raw),
        "registry": entry.origin,
        **data,
    }
    write_json(report_json, info)
    write_text(report_txt, text.rstrip() + "\n")


def _recipe_digest(recipe) -> str:
    return hashlib.sha256(recipe.to_json().encode()).hexdigest()[:16]


def _convert_released(entry: Entry, raw: Path, out: Path, console) -> None:
    """The strict converter of the entry's layout: the same code and tensors as `ctxseg convert`."""
    from rich.console import Console

    from ctxseg.config import load_recipe
    from ctxseg.engine.conversion import keymap_for_format, run_conversion

    shown = _console(console)
    record = Console(record=True, file=open(os.devnull, "w"), width=120)  # noqa: SIM115 - the report text

    class Both:
        def print(self, *args, **kwargs):
            shown.print(*args, **kwargs)
            record.print(*args, **kwargs)

    both = Both()
    if entry.recipe is None:
        raise UserError(f"weights '{entry.name}' names no recipe; cannot convert it")
    report = run_conversion(entry.layout, raw, entry.recipe, out, keymap_for_format(entry.layout, both), console=both)
    recipe = load_recipe(entry.recipe)
    data = {
        "recipe": entry.recipe,
        "recipe_digest": _recipe_digest(recipe),
        "converted": str(out),
        "source_tensors": report.source_keys,
        "mapped": report.mapped,
        "ignored": report.ignored,
        "kept_at_init": report.defaulted,
        "command": f"ctxseg convert {entry.layout} {raw} --recipe {entry.recipe} -o {out}",
    }
    _write_reports(entry, raw, data, record.export_text())


def _convert_init(entry: Entry, raw: Path, out: Path, console) -> None:
    """Map an init file onto the backbone of its first recipe through the backbone's key filter
    (strict) and save exactly the tensors it fills, under the backbone's names."""
    import torch
    from safetensors.torch import save_file

    from ctxseg.config import load_recipe
    from ctxseg.io import atomic_path
    from ctxseg.models.backbones.pretrained import collect_loads
    from ctxseg.models.builder import build_component

    recipes = entry.all_recipes()
    if not recipes:
        raise UserError(
            f"init weights '{entry.name}' list no recipe (recipes = [...]): ctxseg cannot tell which backbone "
            f"they fit. The verified file is {raw}"
        )
    recipe = load_recipe(recipes[0])
    cfg = dict(recipe.model.backbone)
    cfg["pretrained"] = str(raw)
    cfg["pretrained_strict"] = True
    if "pretrained_strict" not in _accepted_args(cfg["type"]):
        cfg.pop("pretrained_strict")
    with collect_loads() as loads:
        backbone = build_component("backbone", cfg)
    if not loads:
        raise UserError(f"backbone type '{cfg['type']}' of recipe {recipes[0]} loaded no pretrained tensors")
    state = backbone.state_dict()
    prefixes = {id(m): (n + "." if n else "") for n, m in backbone.named_modules()}
    tensors: dict[str, torch.Tensor] = {}
    for module, keys, _ in loads:
        prefix = prefixes.get(id(module))
        if prefix is None:
            raise UserError(f"init '{entry.name}': the pretrained load happened outside the backbone")
        for k in keys:
            tensors[prefix + k] = state[prefix + k].detach().contiguous().cpu()
    meta = {
        "format": "ctxseg-backbone-v1",
        "entry": entry.name,
        "backbone": json.dumps({k: v for k, v in cfg.items() if k not in ("pretrained", "pretrained_strict")}),
        "recipe": recipes[0],
    }
    with atomic_path(out, ".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    text = "\n".join(summary for _, _, summary in loads)
    data = {
        "recipe": recipes[0],
        "recipes": list(entry.recipes),
        "backbone_type": cfg["type"],
        "converted": str(out),
        "tensors": len(tensors),
        "keys": sorted(tensors),
    }
    _console(console).print(text, markup=False, highlight=False)
    _write_reports(entry, raw, data, text)


def _accepted_args(type_name: str) -> set[str]:
    import inspect

    from ctxseg.models.builder import component_builder

    builder, _ = component_builder("backbone", type_name)
    try:
        return set(inspect.signature(builder).parameters)
    except (TypeError, ValueError):
        return set()
