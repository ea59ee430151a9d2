"""`ctxseg convert mmseg`: mmsegmentation 0.x / 1.x checkpoints -> ctxseg checkpoints.

The key table (source pattern -> ctxseg name):

  backbone.stem.{0,1,3,4,6}.*      -> backbone.net.conv1.{0,1,3,4,6}.*   ResNetV1c deep stem (timm)
  backbone.stem.7.*                -> backbone.net.bn1.*
  backbone.conv1/bn1.*             -> backbone.net.conv1/bn1.*           ResNetV1b (no deep stem)
  backbone.layerN.*                -> backbone.net.layerN.*              same block names as timm
  backbone.* (HRNet)               -> backbone.*                         HRNet keeps mmseg's names
  backbone.* (Swin)                -> ctxseg.convert.mmseg_swin.swin_rules (when present)
  decode_head.0.* (cascade, OCR)   -> decode_head.region_head.*
  decode_head.1.* (cascade, OCR)   -> decode_head.*
  decode_head.*                    -> decode_head.*                      FCN / PSP / ASPP / UPer
  auxiliary_head.*                 -> auxiliary_head.*  (ignored, and listed, if the recipe has none)

mmseg 0.x and 1.x zoo files use the same state-dict key names for these models (both put the
OCR cascade under decode_head.0 / decode_head.1); they differ in the metadata around the state
dict (0.x: meta.CLASSES/PALETTE/config/env_info; 1.x: meta.dataset_meta and an mmengine
message_hub), which load_foreign drops without executing any pickled code. A `module.` prefix
(DataParallel-saved files) is stripped by load_foreign too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctxseg.convert.base import KeyMap

if TYPE_CHECKING:  # tables never import the recipe layer
    from ctxseg.config import Recipe

try:  # the Swin backbone's rules live in their own module (another issue); optional here
    from ctxseg.convert.mmseg_swin import swin_rules
except ImportError:  # pragma: no cover - depends on which modules are installed
    swin_rules = None

_RESNET_STEM = [
    (r"backbone\.stem\.([0-6])\.(.+)", r"backbone.net.conv1.\1.\2"),
    (r"backbone\.stem\.7\.(.+)", r"backbone.net.bn1.\1"),
    (r"backbone\.(conv1|bn1)\.(.+)", r"backbone.net.\1.\2"),
    (r"backbone\.(layer[1-4]\..+)", r"backbone.net.\1"),
]


def _backbone_keymap(recipe: Recipe, src: dict) -> KeyMap:
    kind = recipe.model.backbone["type"]
    if kind == "resnet":
        return KeyMap(rules=list(_RESNET_STEM))
    if kind == "hrnet":
        return KeyMap(rules=[(r"backbone\.(.+)", r"backbone.\1")])
    if kind == "swin" and swin_rules is not None:
        return swin_rules(recipe, src)
    # other backbones whose module names are mmseg's: identity, still checked strictly
    return KeyMap(rules=[(r"backbone\.(.+)", r"backbone.\1")])


def keymap_for(recipe: Recipe, src: dict) -> KeyMap:
    bb = _backbone_keymap(recipe, src)
    rules = list(bb.rules)
    ignore = list(bb.ignore)
    if recipe.model.head["type"] == "ocr":
        rules += [
            (r"decode_head\.0\.(.+)", r"decode_head.region_head.\1"),
            (r"decode_head\.1\.(.+)", r"decode_head.\1"),
        ]
    else:
        rules.append((r"decode_head\.(.+)", r"decode_head.\1"))
    if recipe.model.aux_head is not None:
        rules.append((r"auxiliary_head\.(.+)", r"auxiliary_head.\1"))
    else:  # training-only head of the source model; reported as ignored
        ignore.append(r"auxiliary_head\..+")
    return KeyMap(rules=rules, ignore=ignore, fixups=list(bb.fixups), target_defaults=list(bb.target_defaults))
