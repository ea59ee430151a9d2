"""DeepLabV3+ head (mmseg DepthwiseSeparableASPPHead).

  x          = inputs[in_index]                       (OS8/OS16 backbone output)
  aspp       = [image_pool(x) resized, 1x1 conv, separable 3x3 at each dilation > 1]
  output     = bottleneck(cat(aspp))                  3x3 ConvModule
  c1         = c1_bottleneck(inputs[c1_in_index])     1x1 ConvModule (low-level skip, mmseg: inputs[0])
  output     = resize(output, c1 size) ++ c1          bilinear, head align_corners
  feats      = sep_bottleneck(output)                 two depthwise-separable 3x3 modules
  logits     = conv_seg(dropout(feats))
Module names follow mmseg (image_pool.1, aspp_modules.i[.depthwise_conv/.pointwise_conv],
bottleneck, c1_bottleneck, sep_bottleneck.j) so checkpoints convert by prefix only.
"""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.layers import ConvModule, DepthwiseSeparableConvModule, resize


class SeparableASPPModule(nn.ModuleList):
    """Dilation 1 -> plain 1x1 ConvModule; dilation d > 1 -> depthwise-separable 3x3 with dilation d.

    Args:
        dilations: dilation of each branch.
        in_channels: input channels.
        channels: output channels of each branch.
    """

    def __init__(self, dilations, in_channels: int, channels: int):
        super().__init__(
            ConvModule(in_channels, channels, 1)
            if d == 1
            else DepthwiseSeparableConvModule(in_channels, channels, 3, padding=d, dilation=d)
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self]


class SepASPPHead(DecodeHead):
    """DeepLabV3+ head (mmseg DepthwiseSeparableASPPHead), see the module docstring.

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of the ASPP branches, the bottleneck and the separable convolutions.
        dilations: dilation of each ASPP branch (1: a 1x1 conv).
        c1_in_channels: channels of the low-level skip input; 0 disables the skip (then c1_channels must
            be 0 too, mmseg semantics).
        c1_channels: output channels of the skip's 1x1 ConvModule.
        c1_in_index: which backbone output feeds the skip (mmseg: 0, stride 4).
        in_index: which backbone output feeds the ASPP.
        dropout_ratio: Dropout2d probability before the classifier.
        align_corners: `align_corners` of the bilinear resizes (injected: model.align_corners).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 512,
        dilations: tuple[int, ...] = (1, 12, 24, 36),
        c1_in_channels: int = 256,
        c1_channels: int = 48,
        c1_in_index: int = 0,
        in_index: int = -1,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ):
        super().__init__(
            in_channels=in_channels,
            channels=channels,
            num_classes=num_classes,
            in_index=in_index,
            input_transform=None,
            dropout_ratio=dropout_ratio,
            align_corners=align_corners,
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(self.in_channels, channels, 1))
        self.aspp_modules = SeparableASPPModule(dilations, self.in_channels, channels)
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)
        self.c1_in_index = c1_in_index
        # c1_in_channels = 0 disables the skip (mmseg semantics); then c1_channels must be 0 too
        self.c1_bottleneck = ConvModule(c1_in_channels, c1_channels, 1) if c1_in_channels > 0 else None
        skip = c1_channels if c1_in_channels > 0 else 0
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(channels + skip, channels, 3, padding=1),
            DepthwiseSeparableConvModule(channels, channels, 3, padding=1),
        )

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = self.select(inputs)
        pooled = resize(self.image_pool(x), x.shape[2:], self.align_corners)
        out = self.bottleneck(torch.cat([pooled, *self.aspp_modules(x)], dim=1))
        if self.c1_bottleneck is not None:
            c1 = self.c1_bottleneck(inputs[self.c1_in_index])
            out = torch.cat([resize(out, c1.shape[2:], self.align_corners), c1], dim=1)
        return self.sep_bottleneck(out)
