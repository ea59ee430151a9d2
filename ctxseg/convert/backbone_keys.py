"""Rename tables for backbones whose foreign names differ from ctxseg's, for other converters.

Each function returns [(regex, replacement)] rules on FULL keys (first match wins, as
ctxseg.convert.base.KeyMap), from the foreign prefix `src` to ctxseg's `dst` (default
"backbone."). Converters add them to their KeyMap:

    KeyMap(rules=ssseg_resnest_rules() + head_rules, ...)
"""

from __future__ import annotations

import re


def mmseg_mobilenetv2_rules(src: str = "backbone.", dst: str = "backbone.") -> list[tuple[str, str]]:
    """mmseg / CAC MobileNetV2: ctxseg keeps mmseg's names (conv1, layerN.M.conv.K.{conv,bn})."""
    return [(re.escape(src) + r"((?:conv1|layer[1-7])\..+)", dst + r"\1")]


def ssseg_resnest_rules(src: str = "backbone_net.", dst: str = "backbone.") -> list[tuple[str, str]]:
    """sssegmentation ResNeSt (deep stem `stem.{0,1,3,4,6,7}`) -> timm ResNet inside `.net`."""
    s = re.escape(src)
    return [
        (s + r"stem\.([0-6])\.(.+)", dst + r"net.conv1.\1.\2"),
        (s + r"stem\.7\.(.+)", dst + r"net.bn1.\1"),
        (s + r"(layer[1-4]\..+)", dst + r"net.\1"),
    ]


def ssseg_vit_rules(
    src: str = "backbone_net.", dst: str = "backbone.", norm_src: str = "norm_layers."
) -> list[tuple[str, str]]:
    """sssegmentation (mmseg-style) VisionTransformer -> timm VisionTransformer inside `.net`.

    nn.MultiheadAttention's packed in_proj is timm's qkv (same q, k, v row order); MCIBI's
    `norm_layers.i` (outside the backbone in sssegmentation) -> `backbone.norm_layers.i`."""
    s = re.escape(src)
    blk = s + r"layers\.(\d+)\."
    return [
        (s + r"(cls_token|pos_embed)", dst + r"net.\1"),
        (s + r"patch_embed\.projection\.(weight|bias)", dst + r"net.patch_embed.proj.\1"),
        (blk + r"ln1\.(weight|bias)", dst + r"net.blocks.\1.norm1.\2"),
        (blk + r"ln2\.(weight|bias)", dst + r"net.blocks.\1.norm2.\2"),
        (blk + r"attn\.attn\.in_proj_(weight|bias)", dst + r"net.blocks.\1.attn.qkv.\2"),
        (blk + r"attn\.attn\.out_proj\.(weight|bias)", dst + r"net.blocks.\1.attn.proj.\2"),
        (blk + r"ffn\.layers\.0\.0\.(weight|bias)", dst + r"net.blocks.\1.mlp.fc1.\2"),
        (blk + r"ffn\.layers\.1\.(weight|bias)", dst + r"net.blocks.\1.mlp.fc2.\2"),
        (re.escape(norm_src) + r"(\d+)\.(weight|bias)", dst + r"norm_layers.\1.\2"),
    ]
