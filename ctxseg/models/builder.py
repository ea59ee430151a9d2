"""Explicit builders: a recipe `type` -> constructor. A reader finds a model by opening one file.

Adding a component = one import and one dict entry here; its constructor's keyword arguments
are the recipe keys (validated by ctxseg.config against the signature).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ctxseg.models.backbones.hrnet import hrnet
from ctxseg.models.backbones.resnet import resnet
from ctxseg.models.backbones.mobilenetv2 import mobilenetv2
from ctxseg.models.backbones.resnest import resnest
from ctxseg.models.backbones.swin import swin
from ctxseg.models.backbones.vit import vit
from ctxseg.models.heads.aspp import ASPPHead
from ctxseg.models.heads.fcn import FCNHead
from ctxseg.models.heads.ocr import OCRHead
from ctxseg.models.heads.openseg_deeplab import OpensegDeepLabHead, OpensegDSNHead
from ctxseg.models.heads.openseg_hrnet import OpensegHRNetHead
from ctxseg.models.heads.psp import PSPHead
from ctxseg.models.heads.sep_aspp import SepASPPHead
from ctxseg.models.heads.ssseg_aux import SssegAuxHeads
from ctxseg.models.heads.uper import UPerHead
from ctxseg.models.context.cac import cac
from ctxseg.models.context.contrast import PixelContrast
from ctxseg.models.context.memory import mcibi

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

# `model.aux_head`: any head, or one that is only ever auxiliary (its logits are a list)
AUX_HEADS: dict[str, Callable[..., nn.Module]] = {
    **HEADS,
    "ssseg_aux": SssegAuxHeads,  # sssegmentation's auxiliary decoders (MCIBI ViT-L: three)
}

# context plug-ins, filled by their issues: MCIBI memory, pixel contrast, CAC classifier
MEMORIES: dict[str, Callable[..., nn.Module]] = {"mcibi": mcibi}
CONTRASTS: dict[str, Callable[..., nn.Module]] = {"pixel_contrast": PixelContrast}
CACS: dict[str, Callable[..., nn.Module]] = {"cac": cac}

_KINDS = {"backbone": BACKBONES, "head": HEADS, "aux_head": AUX_HEADS, "memory": MEMORIES, "contrast": CONTRASTS, "cac": CACS}


def component_builder(kind: str, type_name: str) -> tuple[Callable | None, list[str]]:
    table = _KINDS[kind]
    return table.get(type_name), list(table)


def build_component(kind: str, cfg: dict[str, Any], **fixed: Any) -> nn.Module:
    builder, _ = component_builder(kind, cfg["type"])
    assert builder is not None, f"unvalidated {kind} type {cfg['type']}"
    return builder(**fixed, **{k: v for k, v in cfg.items() if k != "type"})
