"""Pretrained backbone weights: where they come from, how their keys map, a strict load with a report.

`pretrained =` in [model.backbone] names the source:
  "timm"           the backbone's default timm model (downloaded by timm)
  "timm:NAME.TAG"  any timm model/tag
  "official"       the official initialisation of the recipe (its init entry in the weights
                   registry, ctxseg.weights: downloaded once, verified, no network when cached)
  "official:NAME"  the registry's init entry NAME (explicit: survives a copied or renamed recipe)
  "https://..."    a file downloaded once into torch.hub's cache (sha256 prefix checked when the
                   file name carries one, as torch.hub does)
  a path           a local .pth / .pt / .safetensors file
  "" (or absent)   random initialisation

Each backbone owns a *key filter* (beside the backbone, as timm's `checkpoint_filter_fn`): it
renames the source's keys to the backbone's, and says which source tensors it skips and why (an
ImageNet classifier, a final norm the segmentation backbone does not have) and which backbone
tensors have no source (e.g. MCIBI's output norms). The load is strict by default: any other
source key, any backbone tensor left unfilled, or any shape difference stops with a report (a
UserError, exit code 2), before training. `pretrained_strict = false` on the backbone loads what
fits and prints the rest instead. A timm source is checked against the backbone on the meta
device before anything is downloaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ctxseg.errors import UserError


@dataclass
class Mapped:
    """A key filter's result: tensors under the backbone's names, and what it left out on purpose.

    Args:
        state: the source tensors renamed to the backbone's state-dict keys.
        layout: name of the recognised source layout (e.g. "timm ResNet"), for the report.
        skipped: source key -> why it is deliberately not loaded (e.g. the ImageNet classifier).
        kept_init: backbone key pattern (regex) -> why no source tensor fills it (keeps its initialisation).
        notes: functional fix-ups applied (e.g. the position embedding resized).
    """

    state: dict[str, torch.Tensor]
    layout: str
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> why it is not loaded
    kept_init: dict[str, str] = field(default_factory=dict)  # backbone key pattern (regex) -> why no source
    notes: list[str] = field(default_factory=list)  # functional fix-ups applied (e.g. pos_embed resized)


# a key filter: (source state dict, target module) -> Mapped
KeyFilter = Callable[[dict[str, torch.Tensor], nn.Module], Mapped]


@dataclass
class PretrainedReport:
    """What loading pretrained weights did, printed after loading and used to refuse a bad fit.

    Args:
        source: the weights' origin (file, URL or `timm:NAME`).
        layout: the key filter's recognised layout.
        loaded: backbone keys filled from the source.
        skipped: source key -> why it was deliberately not loaded.
        kept_init: backbone key -> why it keeps its initialisation.
        unexpected: source tensors the backbone has no place for.
        missing: backbone tensors no source tensor fills.
        shape_mismatches: (key, source shape, backbone shape) of tensors that do not fit.
        notes: functional fix-ups the key filter applied.
    """

    source: str
    layout: str
    loaded: list[str]
    skipped: dict[str, str]
    kept_init: dict[str, str]  # backbone key -> why it keeps its initialisation
    unexpected: list[str]  # source tensors the backbone has no place for
    missing: list[str]  # backbone tensors no source tensor fills
    shape_mismatches: list[tuple[str, tuple, tuple]]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.missing or self.shape_mismatches)

    def problems(self, limit: int = 10) -> str:
        lines = [f"  source tensor with no place in the backbone: {k}" for k in self.unexpected[:limit]]
        lines += [f"  backbone tensor not filled: {k}" for k in self.missing[:limit]]
        lines += [
            f"  shape mismatch at {k}: source {list(s)} vs backbone {list(t)}"
            for k, s, t in self.shape_mismatches[:limit]
        ]
        more = len(self.unexpected) + len(self.missing) + len(self.shape_mismatches) - len(lines)
        if more > 0:
            lines.append(f"  ... and {more} more")
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [
            f"pretrained backbone weights: {self.source} (layout: {self.layout}): loaded {len(self.loaded)} tensors"
        ]
        for why, keys in _group(self.skipped).items():
            lines.append(f"  skipped {len(keys)} source tensors ({why}): {_short(keys)}")
        for why, keys in _group(self.kept_init).items():
            lines.append(f"  kept at initialisation: {len(keys)} backbone tensors ({why}): {_short(keys)}")
        lines += [f"  {n}" for n in self.notes]
        if not self.ok:
            lines.append("  NOT LOADED (pretrained_strict = false):\n" + self.problems())
        return "\n".join(lines)


def _group(d: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, why in d.items():
        out.setdefault(why, []).append(k)
    return out


def _short(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------
# sources


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth/.pt file (only ever opened with weights_only=True); the
    usual wrappers (`state_dict`, `model`, `module`) and a DataParallel `module.` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Pretrained weights not found: {path}{known_file_hint(path.name)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise UserError(f"Cannot read {path} as a weights-only checkpoint: {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


# Official files recipes name that are not on a hub: where the official code gets them.
KNOWN_FILES = {
    "resnet101-imagenet.pth": "openseg.pytorch / ContrastiveSeg's deep-base ResNet-101 (64-64-128 stem) "
    "ImageNet weights (scripts/cityscapes/deeplab/*: PRETRAINED_MODEL=${ASSET_ROOT}/resnet101-imagenet.pth); "
    "the same file name and key layout as CSAIL's "
    "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/resnet101-imagenet.pth",
}


def known_file_hint(name: str) -> str:
    what = KNOWN_FILES.get(name)
    if what is None:
        return ""
    return f"\n  This is {what}.\n  Put the file there, or point the recipe at it: --set model.backbone.pretrained=PATH"


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def timm_model_name(spec: str, default: str | None) -> str | None:
    if spec == "timm":
        return default
    return spec.split(":", 1)[1] if spec.startswith("timm:") else None


def download(url: str) -> Path:
    """The file behind `url` in torch.hub's checkpoint cache (downloaded once, hash-checked)."""
    from urllib.parse import urlparse

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / os.path.basename(urlparse(url).path)
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        m = re.search(r"-([a-f0-9]{6,})\.", target.name)
        try:
            torch.hub.download_url_to_file(url, str(target), hash_prefix=m.group(1) if m else None, progress=True)
        except Exception as e:  # noqa: BLE001 - offline, 404, hash mismatch: the user must fetch it
            raise UserError(
                f"Cannot download pretrained weights {url}: {e}\n  Download the file yourself and set "
                f"model.backbone.pretrained to its path"
            ) from None
    return target


def timm_skeleton(name: str, **kwargs) -> dict[str, torch.Tensor]:
    """The state dict layout (meta tensors) of a timm model, without downloading anything."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, **kwargs).state_dict()
    except Exception as e:  # noqa: BLE001 - unknown model name
        raise UserError(f"Pretrained source 'timm:{name}': not a timm model ({e})") from None


def timm_weights(name: str, **kwargs) -> dict[str, torch.Tensor]:
    import timm

    try:
        return timm.create_model(name, pretrained=True, **kwargs).state_dict()
    except Exception as e:  # noqa: BLE001 - offline, unknown tag
        raise UserError(
            f"Cannot fetch timm weights '{name}': {e}\n  Save them to a file elsewhere and set "
            f"model.backbone.pretrained to its path"
        ) from None


OFFICIAL = "official"


def is_official(spec: str) -> bool:
    return spec == OFFICIAL or spec.startswith(OFFICIAL + ":")


def resolve_official(spec: str, recipe_name: str | None) -> str:
    """`official` -> `official:<init entry>` of the recipe named `recipe_name` (registry rows only,
    no network); any other spec is returned as it is."""
    if spec != OFFICIAL:
        return spec
    from ctxseg.weights import find

    if not recipe_name:
        raise UserError('pretrained = "official" needs the recipe\'s name; write "official:<entry>" instead')
    try:
        entry = find(recipe_name, init=True)
    except UserError:
        raise UserError(
            f"pretrained = \"official\": the weights registry lists no initialisation for recipe '{recipe_name}'. "
            'Name the entry (pretrained = "official:<entry>", see `ctxseg weights list`) or give a file.'
        ) from None
    return f"{OFFICIAL}:{entry.name}"


def official_entry(spec: str):
    """The registry's init entry an `official:NAME` spec names (UserError when unknown or not an init)."""
    from ctxseg.weights import find
    from ctxseg.weights.registry import load_registry

    name = spec.split(":", 1)[1] if ":" in spec else ""
    if not name:
        raise UserError('pretrained = "official" was not resolved to an entry; write "official:<entry>"')
    entry = load_registry().get(name) or find(name, init=True)  # an entry's name, else a recipe's
    if entry.kind != "init":
        raise UserError(
            f"pretrained = '{spec}': entry '{entry.name}' is a released model, not an initialisation "
            "(fine-tune from a released model with `ctxseg train --init`)"
        )
    return entry


def official_file(spec: str) -> Path:
    """The verified raw file of an `official:NAME` init (downloaded once; no request when cached)."""
    from ctxseg.weights import fetch

    return fetch(official_entry(spec), progress=_is_main_process())


def source_state(spec: str, timm_name: str | None, timm_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
    if is_official(spec):
        return read_state_dict(official_file(spec))
    name = timm_model_name(spec, timm_name)
    if spec.startswith("timm"):
        if name is None:
            raise UserError(
                f"Pretrained source '{spec}': this backbone has no default timm model; give timm:NAME.TAG or a file"
            )
        return timm_weights(name, **(timm_kwargs or {}))
    if is_url(spec):
        return read_state_dict(download(spec))
    return read_state_dict(spec)


# ---------------------------------------------------------------------------------------------
# the strict load


def compare(mapped: Mapped, target: dict[str, torch.Tensor], source: str) -> PretrainedReport:
    kept = {}
    for k in target:
        if k in mapped.state:
            continue
        why = next((w for p, w in mapped.kept_init.items() if re.fullmatch(p, k)), None)
        if why is None and k.endswith("num_batches_tracked"):
            why = "BatchNorm step counters, not in the source"
        if why is not None:
            kept[k] = why
    missing = [k for k in target if k not in mapped.state and k not in kept]
    unexpected = [k for k in mapped.state if k not in target]
    mismatches = [
        (k, tuple(v.shape), tuple(target[k].shape))
        for k, v in mapped.state.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    bad = {k for k, _, _ in mismatches}
    loaded = [k for k in mapped.state if k in target and k not in bad]
    return PretrainedReport(
        source, mapped.layout, loaded, mapped.skipped, kept, unexpected, missing, mismatches, mapped.notes
    )


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def print_report(report: PretrainedReport) -> None:
    if _is_main_process():
        from rich.console import Console

        Console(highlight=False, soft_wrap=True).print(report.summary(), markup=False)


def check_timm_source(
    module: nn.Module, spec: str, key_filter: KeyFilter, timm_name: str | None, timm_kwargs: dict | None = None
) -> PretrainedReport | None:
    """For a timm source: map the timm model's layout (meta tensors) onto `module` without downloading."""
    if not spec.startswith("timm"):
        return None
    name = timm_model_name(spec, timm_name)
    if name is None:
        raise UserError(
            f"Pretrained source '{spec}': this backbone has no default timm model; give timm:NAME.TAG or a file"
        )
    skeleton = timm_skeleton(name, **(timm_kwargs or {}))
    return compare(key_filter(skeleton, module), module.state_dict(), f"timm:{name}")


def load_pretrained(
    module: nn.Module,
    spec: str,
    key_filter: KeyFilter,
    timm_name: str | None = None,
    strict: bool = True,
    timm_kwargs: dict | None = None,
) -> PretrainedReport:
    """Load `spec` into `module` through the backbone's `key_filter`; strict by default (see module doc)."""
    pre = check_timm_source(module, spec, key_filter, timm_name, timm_kwargs)
    if pre is not None and strict and not pre.ok:  # refuse before downloading
        raise UserError(f"Pretrained weights '{pre.source}' do not fit this backbone:\n{pre.problems()}" + _hint(pre))
    src = source_state(spec, timm_name, timm_kwargs)
    target = module.state_dict()
    mapped = key_filter(src, module)
    report = compare(
        mapped, target, spec if not spec.startswith("timm") else f"timm:{timm_model_name(spec, timm_name)}"
    )
    if strict and not report.ok:
        raise UserError(
            f"Pretrained weights '{report.source}' (layout: {report.layout}) do not fit this backbone:\n"
            f"{report.problems()}{_hint(report)}\n  (pretrained_strict = false loads what fits and lists the rest)"
        )
    load = {k: mapped.state[k].to(target[k].dtype) for k in report.loaded}
    module.load_state_dict(load, strict=False)
    record_load(module, report.loaded, report.summary())
    print_report(report)
    return report


_loads: list[list[tuple[nn.Module, list[str], str]]] = []


@contextmanager
def collect_loads() -> Iterator[list[tuple[nn.Module, list[str], str]]]:
    """Collects (module, loaded keys, report text) of every pretrained load in the block (used by
    `ctxseg weights get --init` to save exactly the backbone tensors an init file fills)."""
    found: list[tuple[nn.Module, list[str], str]] = []
    _loads.append(found)
    try:
        yield found
    finally:
        _loads.remove(found)


def record_load(module: nn.Module, loaded: list[str], summary: str) -> None:
    for found in _loads:
        found.append((module, list(loaded), summary))


def _hint(report: PretrainedReport) -> str:
    for k, s, t in report.shape_mismatches:
        if re.search(r"(^|\.)conv1\.0\.weight$", k) and len(s) == 4 and s[0] != t[0]:
            return (
                f"\n  The source's deep stem starts with {s[0]} channels, this backbone's with {t[0]}: timm's "
                f"resnet*c weights have a 32-32-64 stem; openseg's deep-base ResNet (64-64-128, stem_channels = 128) "
                f"needs its own ImageNet file (resnet101-imagenet.pth)."
            )
    return ""


def check_recipe_pretrained(backbone_cfg: dict, recipe_name: str = "") -> str:
    """Before training: a one-line statement of where the backbone's weights come from; a UserError
    when a local file is missing, or an `official` spec names no registry entry or an entry only behind
    a page (cloud drive) that is not in the cache yet. Never fetches anything. (Fit is checked when the
    backbone is built, before any step.)"""
    spec = backbone_cfg.get("pretrained") or ""
    if not spec:
        return "backbone: random initialisation (no `pretrained` in the recipe)"
    if is_official(spec):
        return _check_official(spec, recipe_name)
    if not spec.startswith("timm") and not is_url(spec) and not Path(spec).is_file():
        raise UserError(
            f"Pretrained weights not found: {spec} (model.backbone.pretrained){known_file_hint(Path(spec).name)}"
        )
    return f"backbone: pretrained weights from {spec}"


def _check_official(spec: str, recipe_name: str) -> str:
    """`official` / `official:ENTRY`: the registry row (built-in and user registries), looked up
    without any network access; a file only behind a page (cloud drive) must already be cached."""
    entry = official_entry(resolve_official(spec, recipe_name))
    what = f"{entry.name} ({entry.official_name or entry.file})"
    if entry.cached:
        return f"backbone: official initialisation {what}; cached"
    if not entry.fetchable:
        where = entry.page or entry.url or "(no link published)"
        raise UserError(
            f"Pretrained weights {what} are published only behind a page a program cannot fetch: {where}\n"
            f"  Download the file yourself, then: ctxseg weights add FILE --name {entry.name}"
            "  (or --set model.backbone.pretrained=PATH)"
            + "".join(known_file_hint(w) for w in str(entry.official_name or "").split() if w in KNOWN_FILES)
        )
    return f"backbone: official initialisation {what}; to download from {entry.download_url}"


# ---------------------------------------------------------------------------------------------
# small helpers for key filters


def rename(
    src: dict[str, torch.Tensor],
    rules: list[tuple[str, str]],
    skip: list[tuple[str, str]],
    layout: str,
    prefix: str = "backbone.",
) -> Mapped:
    """Apply regex `rules` (first full match wins) and `skip` = [(pattern, why)]; unmatched keys keep
    their name. When some keys start with `prefix` (a whole segmentation or classification
    checkpoint), only those are used, without it; the others are skipped as outside the backbone."""
    out, skipped = {}, {}
    compiled = [(re.compile(p), r) for p, r in rules]
    has_prefix = bool(prefix) and any(k.startswith(prefix) for k in src)
    for k, v in src.items():
        if has_prefix:
            if not k.startswith(prefix):
                skipped[k] = f"outside the backbone (not under `{prefix}`)"
                continue
            k = k[len(prefix) :]
        why = next((w for p, w in skip if re.fullmatch(p, k)), None)
        if why is not None:
            skipped[k] = why
            continue
        for pat, rep in compiled:
            if pat.fullmatch(k):
                k = pat.sub(rep, k)
                break
        out[k] = v
    return Mapped(out, layout, skipped)


def same_names(skip: list[tuple[str, str]], layout: str) -> KeyFilter:
    """A key filter for sources that already use the backbone's names (timm ResNet/ResNeSt, HRNet)."""
    return lambda src, module: rename(src, [], skip, layout)
