"""`ctxseg convert cac`: released CAC models (tianzhuotao/CAC, an mmseg 0.x fork) -> ctxseg.

The fork's checkpoints are mmseg 0.x containers whose decode head also holds CAC's two
projectors. The key table is mmseg's (ctxseg.convert.mmseg: backbones, cascade OCR heads,
auxiliary head) plus the classifier plug-in:

  decode_head.proj.*        -> plugins.cac.proj.*         (OCR: decode_head.1.proj.*)
  decode_head.apd_proj.*    -> plugins.cac.apd_proj.*     (OCR: decode_head.1.apd_proj.*)
  decode_head.conv_seg.*    -> decode_head.conv_seg.*     the vanilla classifier CAC adapts
  everything else           -> as `ctxseg convert mmseg`

Conversion is strict (every key used or explicitly ignored, every target filled, equal shapes);
the file is opened with torch.load(weights_only=True) only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctxseg.convert import mmseg
from ctxseg.convert.base import KeyMap
from ctxseg.errors import UserError

if TYPE_CHECKING:  # tables never import the recipe layer
    from ctxseg.config import Recipe


def cac_rules(recipe: Recipe) -> list[tuple[str, str]]:
    """The plug-in's keys: the reference keeps proj / apd_proj inside the decode head."""
    prefix = r"decode_head\.1\." if recipe.model.head["type"] == "ocr" else r"decode_head\."
    return [(prefix + r"(proj|apd_proj)\.(.+)", r"plugins.cac.\1.\2")]


def keymap_for(recipe: Recipe, src: dict) -> KeyMap:
    has_cac_keys = any(".apd_proj." in k for k in src)
    if recipe.model.plugin("cac") is None:
        if has_cac_keys:
            raise UserError(
                f"The checkpoint holds a CAC head but recipe '{recipe.name}' has no [[model.plugins]] type = 'cac'; "
                "use a *-cac-* recipe (ctxseg recipes list)"
            )
    elif not has_cac_keys:
        raise UserError(
            f"Recipe '{recipe.name}' uses CAC but the checkpoint has no CAC projector weights "
            "(decode_head.apd_proj.*); convert a plain mmseg model with `ctxseg convert mmseg`"
        )
    base = mmseg.keymap_for(recipe, src)
    # first match wins: the projector rules must precede the generic decode_head rule
    return KeyMap(
        rules=cac_rules(recipe) + list(base.rules),
        ignore=list(base.ignore),
        fixups=list(base.fixups),
        target_defaults=list(base.target_defaults),
    )
