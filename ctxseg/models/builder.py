"""Explicit builders: a recipe `type` -> constructor. A reader finds a model by opening one file.

Adding a component = one import and one dict entry here; its constructor's keyword arguments
are the recipe keys (validated by ctxseg.config against the signature).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ctxseg.models.backbones.resnet import resnet
from ctxseg.models.heads.aspp import ASPPHead
from ctxseg.models.heads.fcn import FCNHead
from ctxseg.models.heads.psp import PSPHead

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet": resnet,
}

HEADS: dict[str, Callable[..., nn.Module]] = {
    "fcn": FCNHead,
    "psp": PSPHead,
    "aspp": ASPPHead,
}

# context plug-ins, filled by their issues: MCIBI memory, pixel contrast, CAC classifier
MEMORIES: dict[str, Callable[..., nn.Module]] = {}
CONTRASTS: dict[str, Callable[..., nn.Module]] = {}
CACS: dict[str, Callable[..., nn.Module]] = {}

_KINDS = {"backbone": BACKBONES, "head": HEADS, "memory": MEMORIES, "contrast": CONTRASTS, "cac": CACS}


def component_builder(kind: str, type_name: str) -> tuple[Callable | None, list[str]]:
    table = _KINDS[kind]
    return table.get(type_name), list(table)


def build_component(kind: str, cfg: dict[str, Any], **fixed: Any) -> nn.Module:
    builder, _ = component_builder(kind, cfg["type"])
    assert builder is not None, f"unvalidated {kind} type {cfg['type']}"
    return builder(**fixed, **{k: v for k, v in cfg.items() if k != "type"})
