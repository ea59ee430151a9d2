"""`ctxseg convert openseg`: openseg.pytorch / ContrastiveSeg checkpoints -> ctxseg checkpoints.

A trainer checkpoint is `{'config_dict': ..., 'state_dict': {'module.' + key: tensor}}`;
load_foreign opens it with weights_only=True and strips `module.`. The memory model
(HRNet_W48_MEM) nests the network under `encoder_q.` and keeps the queues at the top level.

The key table (source pattern -> ctxseg name):

  (encoder_q.)backbone.*  (HRNet)            -> backbone.*                 same names as ctxseg's HRNet
  backbone.resinit.{conv1,bn1,conv2,bn2,conv3} -> backbone.net.conv1.{0,1,3,4,6}   deep-base stem (64-64-128)
  backbone.resinit.bn3.*                     -> backbone.net.bn1.*
  backbone.layerN.*                          -> backbone.net.layerN.*
  cls_head.0.* / cls_head.1.0.* / cls_head.3.* -> decode_head.pre_cls.0 / pre_cls.1 / conv_seg   (openseg_hrnet)
  decoder.layer_aspp.bK.0 / bK.1.0           -> decode_head.aspp.bK.0 / bK.1      (b4: .1 / .2.0 -> .1 / .2)
  decoder.layer_aspp.project.0 / project.1.0 -> decode_head.aspp.project.0 / project.1
  decoder.refine.0 / refine.1 / refine.2     -> decode_head.refine.0 / refine.1 / conv_seg   (openseg_deeplab)
  decoder.layer_dsn.0 / .1.0 / .2            -> auxiliary_head.dsn.0 / dsn.1 / conv_seg      (openseg_dsn)
  proj_head.proj.0 / .1.0 / .2 (convmlp)     -> plugins.contrast.proj_head.proj.0 / .1 / .3
  proj_head.proj.* (linear)                  -> plugins.contrast.proj_head.proj.0.*
  segment_queue(_ptr), pixel_queue(_ptr)     -> plugins.contrast.*  (memory variant)

Training-only parts the recipe does not build (projection head and queues without a
`pixel_contrast` plug-in, the DSN branch without an aux head) are ignored and listed in the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctxseg.convert.base import KeyMap

if TYPE_CHECKING:  # tables never import the recipe layer
    from ctxseg.config import Recipe

_P = r"(?:encoder_q\.)?"  # the memory model wraps the network in encoder_q

_HRNET = [(_P + r"backbone\.(.+)", r"backbone.\1")]
_DEEPBASE = [
    (_P + r"backbone\.resinit\.conv1\.(.+)", r"backbone.net.conv1.0.\1"),
    (_P + r"backbone\.resinit\.bn1\.(.+)", r"backbone.net.conv1.1.\1"),
    (_P + r"backbone\.resinit\.conv2\.(.+)", r"backbone.net.conv1.3.\1"),
    (_P + r"backbone\.resinit\.bn2\.(.+)", r"backbone.net.conv1.4.\1"),
    (_P + r"backbone\.resinit\.conv3\.(.+)", r"backbone.net.conv1.6.\1"),
    (_P + r"backbone\.resinit\.bn3\.(.+)", r"backbone.net.bn1.\1"),
    (_P + r"backbone\.(layer[1-4]\..+)", r"backbone.net.\1"),
]
_HRNET_HEAD = [
    (_P + r"cls_head\.0\.(.+)", r"decode_head.pre_cls.0.\1"),
    (_P + r"cls_head\.1\.0\.(.+)", r"decode_head.pre_cls.1.\1"),
    (_P + r"cls_head\.3\.(.+)", r"decode_head.conv_seg.\1"),
]
_DEEPLAB_HEAD = [
    (_P + r"decoder\.layer_aspp\.b([0-3])\.0\.(.+)", r"decode_head.aspp.b\1.0.\2"),
    (_P + r"decoder\.layer_aspp\.b([0-3])\.1\.0\.(.+)", r"decode_head.aspp.b\1.1.\2"),
    (_P + r"decoder\.layer_aspp\.b4\.1\.(.+)", r"decode_head.aspp.b4.1.\1"),
    (_P + r"decoder\.layer_aspp\.b4\.2\.0\.(.+)", r"decode_head.aspp.b4.2.\1"),
    (_P + r"decoder\.layer_aspp\.project\.0\.(.+)", r"decode_head.aspp.project.0.\1"),
    (_P + r"decoder\.layer_aspp\.project\.1\.0\.(.+)", r"decode_head.aspp.project.1.\1"),
    (_P + r"decoder\.refine\.([01])\.(.+)", r"decode_head.refine.\1.\2"),
    (_P + r"decoder\.refine\.2\.(.+)", r"decode_head.conv_seg.\1"),
]
_DSN = [
    (_P + r"decoder\.layer_dsn\.0\.(.+)", r"auxiliary_head.dsn.0.\1"),
    (_P + r"decoder\.layer_dsn\.1\.0\.(.+)", r"auxiliary_head.dsn.1.\1"),
    (_P + r"decoder\.layer_dsn\.2\.(.+)", r"auxiliary_head.conv_seg.\1"),
]
_PROJ = [
    (_P + r"proj_head\.proj\.0\.(.+)", r"plugins.contrast.proj_head.proj.0.\1"),
    (_P + r"proj_head\.proj\.1\.0\.(.+)", r"plugins.contrast.proj_head.proj.1.\1"),
    (_P + r"proj_head\.proj\.2\.(.+)", r"plugins.contrast.proj_head.proj.3.\1"),
    (_P + r"proj_head\.proj\.(weight|bias)", r"plugins.contrast.proj_head.proj.0.\1"),
]
_QUEUES = [(r"(segment_queue|segment_queue_ptr|pixel_queue|pixel_queue_ptr)", r"plugins.contrast.\1")]


def keymap_for(recipe: Recipe, src: dict) -> KeyMap:
    m = recipe.model
    rules: list[tuple[str, str]] = []
    ignore: list[str] = []
    rules += _DEEPBASE if m.backbone["type"] == "resnet" else _HRNET
    rules += _DEEPLAB_HEAD if m.head["type"] == "openseg_deeplab" else _HRNET_HEAD
    if m.aux_head is not None:
        rules += _DSN
    else:
        ignore.append(_P + r"decoder\.layer_dsn\..+")
    contrast = m.plugin("pixel_contrast")
    if contrast is not None:
        rules += _PROJ
        if contrast.get("use_queue", False):
            rules += _QUEUES
        else:
            ignore.append(r"(segment|pixel)_queue(_ptr)?")
    else:  # a contrast checkpoint converted for inference only: the training-only parts are listed
        ignore += [_P + r"proj_head\..+", r"(segment|pixel)_queue(_ptr)?"]
    return KeyMap(rules=rules, ignore=ignore)
