"""Swin backbone keys for `ctxseg convert mmseg`: the table lives beside the backbone
(ctxseg.models.backbones.swin_keys, also used for `pretrained=` files); this module adapts it to
a recipe. ctxseg.convert.mmseg calls `swin_rules(recipe, src)` for `type = "swin"` backbones; the
decode/auxiliary heads are its own identity rules (UPerHead keeps mmseg's names).
"""

from __future__ import annotations

from ctxseg.keymap import KeyMap
from ctxseg.models.backbones.swin_keys import (  # noqa: F401 (re-exported for converters and tests)
    orig_to_unfold,
    relative_position_index,
    source_layout,
    swin_keymap,
    unfold_to_orig,
)


def swin_rules(recipe, src: dict) -> KeyMap:
    """The backbone part of the mmseg key map for a recipe with a `swin` backbone."""
    order = recipe.model.backbone.get("merge_order", "unfold")
    return swin_keymap(src, order)
