"""Explicit builders: a recipe `type` -> constructor. A reader finds a model by opening one file.

Three tables (BACKBONES, HEADS, PLUGINS) map a recipe `type` to a class or builder. Built-in
components are listed here; code outside ctxseg adds its own with `register_backbone`,
`register_head` or `register_plugin` (and a recipe names the module in `imports = [...]`, or a
package declares it in the `ctxseg.plugins` entry-point group, see ctxseg.extensions).

A constructor's keyword arguments are the recipe keys, validated against its signature
(`validate_component`), except the INJECTED ones, which the builder fills from one place: data
facts from the recipe's `data`/`model` sections, and the build context (the decode head, the
current classifier slot, the backbone's channels).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from torch import nn

from ctxseg.errors import UserError
from ctxseg.models.backbones.hrnet import hrnet
from ctxseg.models.backbones.mobilenetv2 import mobilenetv2
from ctxseg.models.backbones.resnest import resnest
from ctxseg.models.backbones.resnet import resnet
from ctxseg.models.backbones.swin import swin
from ctxseg.models.backbones.vit import vit
from ctxseg.models.context.base import ContextPlugin
from ctxseg.models.context.cac import ContextAwareClassifier
from ctxseg.models.context.contrast import PixelContrast
from ctxseg.models.context.memory import MCIBIMemory
from ctxseg.models.heads.aspp import ASPPHead
from ctxseg.models.heads.fcn import FCNHead
from ctxseg.models.heads.ocr import OCRHead
from ctxseg.models.heads.openseg_deeplab import OpensegDeepLabHead, OpensegDSNHead
from ctxseg.models.heads.openseg_hrnet import OpensegHRNetHead
from ctxseg.models.heads.psp import PSPHead
from ctxseg.models.heads.sep_aspp import SepASPPHead
from ctxseg.models.heads.ssseg_aux import SssegAuxHeads
from ctxseg.models.heads.uper import UPerHead

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet": resnet,
    "hrnet": hrnet,
    "swin": swin,
    "mobilenetv2": mobilenetv2,
    "resnest": resnest,
    "vit": vit,
}

HEADS: dict[str, Callable[..., nn.Module]] = {
    "fcn": FCNHead,
    "psp": PSPHead,
    "aspp": ASPPHead,
    "sep_aspp": SepASPPHead,
    "ocr": OCRHead,
    "uper": UPerHead,
    "openseg_hrnet": OpensegHRNetHead,
    "openseg_deeplab": OpensegDeepLabHead,
    "openseg_dsn": OpensegDSNHead,
}

# context plug-ins (ctxseg.models.context.base.ContextPlugin subclasses), listed in a recipe as
# [[model.plugins]] and composed in the order listed
PLUGINS: dict[str, Callable[..., nn.Module]] = {
    "mcibi": MCIBIMemory,
    "cac": ContextAwareClassifier,
    "pixel_contrast": PixelContrast,
}

# heads that are only ever auxiliary (their logits are a list); `model.aux_head` may also name any HEADS type
AUX_HEADS: dict[str, Callable[..., nn.Module]] = {
    "ssseg_aux": SssegAuxHeads,  # sssegmentation's auxiliary decoders (MCIBI ViT-L: three)
}

KINDS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "backbone": BACKBONES,
    "head": HEADS,
    "aux_head": AUX_HEADS,
    "plugin": PLUGINS,
}

# constructor arguments filled by the builder, never by a recipe key; where each comes from
INJECTED: dict[str, str] = {
    "num_classes": "data.num_classes",
    "ignore_index": "data.ignore_index",
    "align_corners": "model.align_corners",
    "in_channels": "the backbone's out_channels",
    "head": "the decode head",
    "classifier": "the current classifier slot (the decode head's, or the one a plug-in before took over)",
}


@dataclass(frozen=True)
class DataFacts:
    """Facts about the data every component may need, read once from the recipe.

    Args:
        num_classes: number of classes (data.num_classes).
        ignore_index: label value not trained on nor scored (data.ignore_index).
        align_corners: `align_corners` of every bilinear resize (model.align_corners).
    """

    num_classes: int
    ignore_index: int = 255
    align_corners: bool = False


def register(kind: str, name: str, constructor: Callable[..., nn.Module] | None = None):
    """Register `constructor` as recipe `type = name` for `kind` ("backbone", "head", "plugin").

    Usable as a call or a class decorator. Re-registering the same object is a no-op (a module
    imported twice); another object under a taken name is an error."""
    table = KINDS[kind]

    def add(obj):
        if kind == "plugin" and inspect.isclass(obj) and not issubclass(obj, ContextPlugin):
            raise TypeError(
                f"plug-in '{name}': {obj.__qualname__} must subclass ctxseg.models.context.base.ContextPlugin"
            )
        if name in table and table[name] is not obj and getattr(table[name], "__qualname__", None) != obj.__qualname__:
            raise ValueError(f"{kind} type '{name}' is already registered ({table[name]!r})")
        table[name] = obj
        _signature_model.cache_clear()
        return obj

    return add if constructor is None else add(constructor)


def register_backbone(name: str, constructor=None):
    return register("backbone", name, constructor)


def register_head(name: str, constructor=None):
    return register("head", name, constructor)


def register_plugin(name: str, constructor=None):
    """Register a ContextPlugin subclass as `[[model.plugins]] type = name`."""
    return register("plugin", name, constructor)


def component_builder(kind: str, type_name: str) -> tuple[Callable | None, list[str]]:
    table = {**HEADS, **AUX_HEADS} if kind == "aux_head" else KINDS[kind]
    return table.get(type_name), list(table)


def _accepted(builder: Callable) -> set[str]:
    return set(inspect.signature(builder).parameters)


def build_component(kind: str, cfg: dict[str, Any], **injected: Any) -> nn.Module:
    """Build from a validated recipe table; of `injected`, only what the constructor accepts is passed."""
    builder, _ = component_builder(kind, cfg["type"])
    assert builder is not None, f"unvalidated {kind} type {cfg['type']}"
    accepted = _accepted(builder)
    args = {k: v for k, v in injected.items() if k in accepted}
    args.update({k: v for k, v in cfg.items() if k not in ("type", "name")})
    return builder(**args)


# --------------------------------------------------------------------------------------------
# validation of component tables against constructor signatures


@cache
def _signature_model(fn) -> type[BaseModel]:
    """A pydantic model with one field per recipe argument of a component constructor."""
    fields: dict[str, Any] = {}
    try:  # string annotations (from __future__ import annotations) resolved in the component's module
        params = inspect.signature(fn, eval_str=True).parameters
    except (NameError, TypeError):
        params = inspect.signature(fn).parameters
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name == "self" or name in INJECTED:
            continue
        ann = p.annotation if p.annotation is not inspect.Parameter.empty else Any
        default = p.default if p.default is not inspect.Parameter.empty else ...
        fields[name] = (ann, default)
    return create_model(
        f"{getattr(fn, '__name__', 'component')}_args",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


def validate_component(kind: str, cfg: dict[str, Any], where: str, format_errors: Callable | None = None) -> None:
    """Check a recipe table: a known `type`, and keys that its constructor accepts, with the right types."""
    if not isinstance(cfg, dict):
        raise UserError(f"'{where}' must be a table")
    if "type" not in cfg:
        raise UserError(f"'{where}' needs a 'type' key")
    builder, choices = component_builder(kind, cfg["type"])
    if builder is None:
        close = difflib.get_close_matches(str(cfg["type"]), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; choose one of: {', '.join(sorted(choices))}"
        extra = (
            ' (a plug-in defined outside ctxseg is loaded by the recipe\'s `imports = ["module"]`)'
            if kind == "plugin"
            else ""
        )
        raise UserError(f"'{where}.type' = '{cfg['type']}' is not a known {kind}{hint}{extra}")
    fixed = sorted(set(cfg) & set(INJECTED))
    if fixed:
        raise UserError(
            f"'{where}.{fixed[0]}' is not a recipe key of a component: it comes from "
            f"{INJECTED[fixed[0]]}, set once for every component"
        )
    model = _signature_model(builder)
    args = {k: v for k, v in cfg.items() if k not in ("type", "name")}
    try:
        model.model_validate(args)
    except ValidationError as e:
        detail = format_errors(e, model, where + ".") if format_errors else str(e)
        raise UserError(f"Invalid recipe:\n{detail}") from None


def plugin_name(cfg: dict[str, Any]) -> str:
    """The plug-in's key in Segmentor.plugins: the entry's `name`, else the class's default_name, else its type."""
    if cfg.get("name"):
        return str(cfg["name"])
    builder, _ = component_builder("plugin", cfg["type"])
    return getattr(builder, "default_name", None) or str(cfg["type"])


def validate_plugins(entries: list[dict[str, Any]], format_errors: Callable | None = None) -> None:
    seen: dict[str, int] = {}
    for i, cfg in enumerate(entries):
        where = f"model.plugins[{i}]"
        validate_component("plugin", cfg, where, format_errors)
        name = plugin_name(cfg)
        if name in seen:
            raise UserError(
                f"'{where}': a plug-in named '{name}' is already listed (model.plugins[{seen[name]}]); "
                f'give one of them another `name = "..."`'
            )
        seen[name] = i
