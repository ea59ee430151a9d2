"""FCN head (mmseg FCNHead): num_convs 3x3 ConvModules, optional concat of the input (input first)."""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.layers import ConvModule


class FCNHead(DecodeHead):
    """FCN head (mmseg FCNHead): `num_convs` ConvModules, optionally fused with the input by `conv_cat`.

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of the convolutions.
        num_convs: number of ConvModules; 0 passes the input through.
        kernel_size: kernel size of the convolutions (and of `conv_cat`).
        concat_input: concatenate the input before the convolutions' output (input first) and fuse them
            with one more ConvModule (`conv_cat`).
        dilation: dilation of the convolutions (not of `conv_cat`).
        in_index: which backbone output(s) the head reads.
        dropout_ratio: Dropout2d probability before the classifier.
        align_corners: `align_corners` of the "resize_concat" transform (injected: model.align_corners).
        input_transform: see InputSelector (None: one backbone output).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 512,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dilation: int = 1,
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
        pad = (kernel_size // 2) * dilation
        convs = []
        for i in range(num_convs):
            convs.append(
                ConvModule(
                    self.in_channels if i == 0 else channels, channels, kernel_size, padding=pad, dilation=dilation
                )
            )
        self.convs = nn.Sequential(*convs) if num_convs > 0 else nn.Identity()
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + channels, channels, kernel_size, padding=kernel_size // 2)

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.features_of_selected(self.select(inputs))

    def features_of_selected(self, x: torch.Tensor) -> torch.Tensor:
        """features() on an input already selected/transformed (lets a cascade share it)."""
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats
