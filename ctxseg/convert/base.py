"""The converter mechanism: a key-rename table + a few functional fix-ups, applied strictly.

A foreign checkpoint is opened only with torch.load(weights_only=True). Zoo files often carry
non-tensor metadata pickled with classes we do not have (mmengine's HistoryBuffer, numpy
scalars, ConfigDicts); those globals are mapped to an inert stub so the load never executes
foreign code, and the metadata is dropped.

Strict means: every source key is used or matched by an explicit ignore pattern, every target
key is filled, and shapes are equal. Otherwise the report lists the first mismatches and the
CLI exits with code 2 without writing anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ctxseg.errors import UserError

# A fix-up reads source tensors and writes target tensors; returns the source keys it used.
FixUp = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], set[str]]


class _Inert:
    """Stand-in for any non-tensor class found in checkpoint metadata; it keeps nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()


def _inert_global(name: str):
    module, _, qual = name.rpartition(".")
    stub = type(qual or "Inert", (_Inert,), {"__module__": module})
    return (stub, name)


def load_foreign(path: str | Path, max_retries: int = 64) -> dict[str, torch.Tensor]:
    """Tensors of a foreign .pth (state_dict/model/net wrappers and `module.` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Source checkpoint not found: {path}")
    stubs: list = []
    for _ in range(max_retries):
        try:
            with torch.serialization.safe_globals(stubs):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            break
        except Exception as e:  # noqa: BLE001 - unpickling errors name the unsupported global
            m = re.search(r"(?:Unsupported global: GLOBAL|global) ([\w\.]+)", str(e))
            if not m or any(s[1] == m.group(1) for s in stubs):
                raise UserError(f"Cannot read {path} as a weights-only checkpoint: {str(e).splitlines()[0]}") from None
            stubs.append(_inert_global(m.group(1)))
    else:
        raise UserError(f"{path}: too many unknown classes in its metadata")
    for key in ("state_dict", "model", "net", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k[7:] if k.startswith("module.") else k] = v
    if not out:
        raise UserError(f"{path} holds no tensors")
    return out


@dataclass
class KeyMap:
    """Regex rename rules (first match wins, applied to the full source key), ignored source
    patterns, and fix-ups for what renaming cannot express (splits, merges, reshapes)."""

    rules: list[tuple[str, str]]
    ignore: list[str] = field(default_factory=list)
    fixups: list[FixUp] = field(default_factory=list)
    # target keys that legitimately have no source (e.g. buffers recomputed at load); explicit
    target_defaults: list[str] = field(default_factory=list)


@dataclass
class Report:
    source_keys: int
    mapped: int
    ignored: list[str]
    unused: list[str]
    missing: list[str]
    shape_mismatches: list[tuple[str, tuple, tuple]]
    defaulted: list[str]

    @property
    def ok(self) -> bool:
        return not (self.unused or self.missing or self.shape_mismatches)

    def problems(self, limit: int = 10) -> str:
        lines = []
        for k in self.unused[:limit]:
            lines.append(f"  source key not used and not ignored: {k}")
        for k in self.missing[:limit]:
            lines.append(f"  target key not filled: {k}")
        for k, s, t in self.shape_mismatches[:limit]:
            lines.append(f"  shape mismatch at {k}: source {list(s)} vs ctxseg {list(t)}")
        return "\n".join(lines)


def apply_keymap(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor], keymap: KeyMap) -> tuple[dict[str, torch.Tensor], Report]:
    rules = [(re.compile(p), r) for p, r in keymap.rules]
    ignore = [re.compile(p) for p in keymap.ignore]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for fix in keymap.fixups:
        used |= fix(src, out)
    ignored = []
    for k, v in src.items():
        if k in used:
            continue
        if any(p.fullmatch(k) for p in ignore):
            ignored.append(k)
            continue
        for pat, rep in rules:
            if pat.fullmatch(k):
                out[pat.sub(rep, k)] = v
                used.add(k)
                break
    unused = [k for k in src if k not in used and k not in ignored]
    mismatches = [(k, tuple(out[k].shape), tuple(t.shape)) for k, t in target.items() if k in out and out[k].shape != t.shape]
    defaulted = [k for k in target if k not in out and any(re.fullmatch(p, k) for p in keymap.target_defaults)]
    missing = [k for k in target if k not in out and k not in defaulted]
    unused += [f"{k} (-> {k} has no ctxseg target)" for k in out if k not in target]
    report = Report(len(src), len(used), ignored, unused, missing, mismatches, defaulted)
    return out, report


def convert_state_dict(src: dict[str, torch.Tensor], model: torch.nn.Module, keymap: KeyMap) -> tuple[dict, Report]:
    target = model.state_dict()
    out, report = apply_keymap(src, target, keymap)
    for k in report.defaulted:
        out[k] = target[k]
    out = {k: v.to(target[k].dtype) for k, v in out.items() if k in target}
    return out, report


def run_conversion(fmt: str, source: Path, recipe_name: str, output: Path, keymap_for: Callable, overrides: list[str] | None = None,
                   console=None) -> Report:
    """Build the recipe's model, convert `source` into it strictly, and write a ctxseg checkpoint."""
    from rich.console import Console
    from rich.table import Table

    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import save_weights
    from ctxseg.models.segmentor import build_segmentor

    console = console or Console()
    recipe = load_recipe(recipe_name, overrides)
    # model construction must not download anything: drop pretrained for the target skeleton
    backbone = dict(recipe.model.backbone)
    backbone.pop("pretrained", None)
    recipe.model.backbone = backbone
    model = build_segmentor(recipe)
    src = load_foreign(source)
    state, report = convert_state_dict(src, model, keymap_for(recipe, src))
    table = Table(title=f"convert {fmt}: {source.name} -> {output.name}")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("source tensors", str(report.source_keys))
    table.add_row("mapped", str(report.mapped))
    table.add_row("ignored (listed)", str(len(report.ignored)))
    table.add_row("target tensors", str(len(model.state_dict())))
    table.add_row("kept at ctxseg init", str(len(report.defaulted)))
    console.print(table)
    if report.ignored:
        console.print("ignored: " + ", ".join(report.ignored[:20]) + (" ..." if len(report.ignored) > 20 else ""))
    if not report.ok:
        raise UserError(f"Conversion is not exact ({len(report.unused)} unused, {len(report.missing)} missing, "
                        f"{len(report.shape_mismatches)} shape mismatches); nothing written:\n{report.problems()}")
    model.load_state_dict(state, strict=True)
    save_weights(output, model, recipe, {"converted_from": f"{fmt}:{source.name}"})
    console.print(f"[green]wrote[/] {output}")
    return report
