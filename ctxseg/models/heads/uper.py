"""UPerNet head (mmseg UPerHead): PPM on the last level + FPN over the others, fused by a 3x3 conv.

  level 3:     PPM (psp_modules, pool scales) -> concat [x, pools] -> bottleneck 3x3
  levels 0..2: lateral_convs (1x1)
  top-down:    lateral[i-1] += resize(lateral[i], size of i-1)   (bilinear, align_corners from recipe)
  fpn_convs (3x3) on levels 0..2; level 3 passes unchanged
  all levels resized to level 0, concatenated in order [0, 1, 2, 3] -> fpn_bottleneck 3x3 -> conv_seg
Every resize passes an explicit size (never a scale factor), as mmseg's `resize`.
"""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.heads.psp import PPM
from ctxseg.models.layers import ConvModule, resize


class UPerHead(DecodeHead):
    """UPerNet head (mmseg UPerHead): PPM on the last input, FPN top-down path, fused by a 3x3 bottleneck.

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of the lateral, FPN and bottleneck convolutions.
        pool_scales: output sizes of the PPM's adaptive average pools.
        in_index: the backbone outputs read, fine to coarse (input_transform is always
            "multiple_select", as mmseg forces).
        dropout_ratio: Dropout2d probability before the classifier.
        align_corners: `align_corners` of the bilinear resizes (injected: model.align_corners).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
        in_index: list[int] = (0, 1, 2, 3),
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ):
        # mmseg forces input_transform="multiple_select" for UPerHead
        super().__init__(
            in_channels=in_channels,
            channels=channels,
            num_classes=num_classes,
            in_index=list(in_index),
            input_transform="multiple_select",
            dropout_ratio=dropout_ratio,
            align_corners=align_corners,
        )
        last = self.in_channels[-1]
        self.psp_modules = PPM(pool_scales, last, channels, align_corners)
        self.bottleneck = ConvModule(last + len(pool_scales) * channels, channels, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * channels, channels, 3, padding=1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        xs = self.select(inputs)
        laterals = [conv(xs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(xs[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path, coarse to fine
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [conv(laterals[i]) for i, conv in enumerate(self.fpn_convs)]
        outs.append(laterals[-1])
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(o, size, self.align_corners) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))
