"""DeepLabV3 head (mmseg ASPPHead): [image_pool, 1x1, d12, d24, d36] -> 3x3 bottleneck."""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.layers import ConvModule, resize


class ASPPModule(nn.ModuleList):
    """Parallel ConvModules, one per dilation (1x1 for dilation 1, else 3x3 with that dilation).

    Args:
        dilations: dilation of each branch.
        in_channels: input channels.
        channels: output channels of each branch.
    """

    def __init__(self, dilations, in_channels: int, channels: int):
        super().__init__(
            ConvModule(in_channels, channels, 1 if d == 1 else 3, padding=0 if d == 1 else d, dilation=d)
            for d in dilations
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [m(x) for m in self]


class ASPPHead(DecodeHead):
    """DeepLabV3 head (mmseg ASPPHead): image pool + ASPP branches, concatenated, 3x3 bottleneck.

    Note the order: mmseg puts the image-pool branch FIRST (torchvision puts it last).

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of every branch and of the bottleneck.
        dilations: dilation of each ASPP branch (1: a 1x1 conv).
        in_index: which backbone output the head reads.
        dropout_ratio: Dropout2d probability before the classifier.
        align_corners: `align_corners` of the image-pool upsampling (injected: model.align_corners).
        input_transform: see InputSelector (None: one backbone output).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 512,
        dilations: tuple[int, ...] = (1, 12, 24, 36),
        in_index: int | list[int] = -1,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
        input_transform: str | None = None,
    ):
        super().__init__(
            in_channels=in_channels,
            channels=channels,
            num_classes=num_classes,
            in_index=in_index,
            input_transform=input_transform,
            dropout_ratio=dropout_ratio,
            align_corners=align_corners,
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvModule(self.in_channels, channels, 1))
        self.aspp_modules = ASPPModule(dilations, self.in_channels, channels)
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3, padding=1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        pooled = resize(self.image_pool(x), x.shape[2:], self.align_corners)
        return torch.cat([pooled, *self.aspp_modules(x)], dim=1)

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.bottleneck(self.context(self.select(inputs)))
