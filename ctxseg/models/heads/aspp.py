"""DeepLabV3 head (mmseg ASPPHead): [image_pool, 1x1, d12, d24, d36] -> 3x3 bottleneck."""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.layers import ConvModule, resize


class ASPPModule(nn.ModuleList):
    def __init__(self, dilations, in_channels: int, channels: int):
        super().__init__(
            ConvModule(in_channels, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d) for d in dilations
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self]


class ASPPHead(DecodeHead):
    """Note the order: mmseg puts the image-pool branch FIRST (torchvision puts it last)."""

    def __init__(self, *, in_channels, num_classes: int, channels: int = 512, dilations: tuple[int, ...] = (1, 12, 24, 36),
                 in_index: int | list[int] = -1, dropout_ratio: float = 0.1, align_corners: bool = False,
                 input_transform: str | None = None):
        super().__init__(in_channels=in_channels, channels=channels, num_classes=num_classes, in_index=in_index, input_transform=input_transform,
                         dropout_ratio=dropout_ratio, align_corners=align_corners)
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(self.in_channels, channels, 1))
        self.aspp_modules = ASPPModule(dilations, self.in_channels, channels)
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        pooled = resize(self.image_pool(x), x.shape[2:], self.align_corners)
        return torch.cat([pooled, *self.aspp_modules(x)], dim=1)

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.bottleneck(self.context(self.select(inputs)))
