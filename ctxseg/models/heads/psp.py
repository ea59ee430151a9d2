"""PSPNet head (mmseg PSPHead): pyramid pooling, concat [x, pool1, pool2, pool3, pool6], 3x3 bottleneck."""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.layers import ConvModule, resize


class PPM(nn.ModuleList):
    """Pyramid pooling module: AdaptiveAvgPool(s) -> 1x1 ConvModule -> bilinear resize, per scale.

    Args:
        pool_scales: output sizes of the adaptive average pools.
        in_channels: input channels.
        channels: output channels of each branch.
        align_corners: `align_corners` of the upsampling back to the input size.
    """

    def __init__(self, pool_scales, in_channels: int, channels: int, align_corners: bool):
        super().__init__(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)) for s in pool_scales
        )
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(m(x), x.shape[2:], self.align_corners) for m in self]


class PSPHead(DecodeHead):
    """PSPNet head (mmseg PSPHead): the input concatenated with its pyramid pooling, 3x3 bottleneck.

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of the pooling branches and of the bottleneck.
        pool_scales: output sizes of the pyramid's adaptive average pools.
        in_index: which backbone output the head reads.
        dropout_ratio: Dropout2d probability before the classifier.
        align_corners: `align_corners` of the pooled maps' upsampling (injected: model.align_corners).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 512,
        pool_scales: tuple[int, ...] = (1, 2, 3, 6),
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
        self.psp_modules = PPM(pool_scales, self.in_channels, channels, align_corners)
        self.bottleneck = ConvModule(self.in_channels + len(pool_scales) * channels, channels, 3, padding=1)

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = self.select(inputs)
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))
