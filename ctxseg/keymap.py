"""Key maps: regex renames of state-dict keys plus functional fix-ups, applied strictly with a report.

A leaf module (torch only): converters (ctxseg.convert) and backbones' pretrained-weight filters
(e.g. Swin's, in ctxseg.models.backbones.swin_keys) both use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

# A fix-up reads source tensors and writes target tensors; returns the source keys it used.
FixUp = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], set[str]]


@dataclass
class KeyMap:
    """Regex rename rules (first match wins, applied to the full source key), ignored source
    patterns, and fix-ups for what renaming cannot express (splits, merges, reshapes).

    Args:
        rules: (pattern, replacement) pairs; a source key that fully matches a pattern is renamed with
            re.sub (backreferences allowed); the first matching rule wins.
        ignore: patterns (full match) of source keys deliberately not converted.
        fixups: functions fn(source, out) -> used source keys, run before the rules; they write target
            tensors renaming cannot produce.
        target_defaults: patterns (full match) of target keys that legitimately have no source (e.g.
            buffers recomputed at load); they are reported as defaulted, not missing.
    """

    rules: list[tuple[str, str]]
    ignore: list[str] = field(default_factory=list)
    fixups: list[FixUp] = field(default_factory=list)
    # target keys that legitimately have no source (e.g. buffers recomputed at load); explicit
    target_defaults: list[str] = field(default_factory=list)


@dataclass
class Report:
    """The outcome of `apply_keymap`; `ok` when nothing is unused, missing or mis-shaped.

    Args:
        source_keys: number of source tensors.
        mapped: number of source tensors used (renamed or consumed by a fix-up).
        ignored: source keys matched by an ignore pattern.
        unused: source keys neither used nor ignored (and mapped keys with no target).
        missing: target keys no source filled (and not defaulted).
        shape_mismatches: (target key, source shape, target shape) of mapped tensors that do not fit.
        defaulted: target keys left to their defaults through `target_defaults`.
    """

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


def apply_keymap(
    src: dict[str, torch.Tensor], target: dict[str, torch.Tensor], keymap: KeyMap
) -> tuple[dict[str, torch.Tensor], Report]:
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
    mismatches = [
        (k, tuple(out[k].shape), tuple(t.shape)) for k, t in target.items() if k in out and out[k].shape != t.shape
    ]
    defaulted = [k for k in target if k not in out and any(re.fullmatch(p, k) for p in keymap.target_defaults)]
    missing = [k for k in target if k not in out and k not in defaulted]
    unused += [f"{k} (-> {k} has no ctxseg target)" for k in out if k not in target]
    report = Report(len(src), len(used), ignored, unused, missing, mismatches, defaulted)
    return out, report
