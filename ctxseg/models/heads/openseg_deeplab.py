"""openseg.pytorch's DeepLabV3 head (DeepLabV3 / DeepLabV3Contrast in ContrastiveSeg).

Differs from mmseg's ASPPHead: dilations (12, 24, 36) at output stride 8, the image-pool branch
is upsampled bilinear with align_corners=True, the 5-branch concat is fused by a 3x3 conv + BN + ReLU
(`project`), followed by a `refine` 3x3 conv + BN (no ReLU) and a 1x1 classifier with bias; no
dropout. The auxiliary
branch (`layer_dsn`: 3x3 conv WITH bias, BN, ReLU, 1x1 conv) is `OpensegDSNHead`.
"""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.layers import resize


def _conv_bn_relu(
    in_ch: int, out_ch: int, k: int, dilation: int = 1, bias: bool = False, relu: bool = True
) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, k, padding=dilation * (k // 2), dilation=dilation, bias=bias),
        nn.BatchNorm2d(out_ch),
    ]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class _ASPP(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dilations: list[int], align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        self.b0 = nn.Sequential(*_conv_bn_relu(in_ch, out_ch, 1))
        for i, d in enumerate(dilations, start=1):
            setattr(self, f"b{i}", nn.Sequential(*_conv_bn_relu(in_ch, out_ch, 3, d)))
        self.b4 = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_ch, out_ch, 1))
        self.project = nn.Sequential(*_conv_bn_relu(5 * out_ch, out_ch, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = resize(self.b4(x), x.shape[2:], self.align_corners)
        return self.project(torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x), pooled], dim=1))


class OpensegDeepLabHead(DecodeHead):
    """openseg.pytorch's DeepLabV3 head (ContrastiveSeg's DeepLabV3), see the module docstring.

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of the ASPP branches, `project` and `refine`.
        dilations: the three dilations of the 3x3 ASPP branches.
        in_index: which backbone output the head reads.
        dropout_ratio: Dropout2d probability before the classifier (openseg: none).
        align_corners: `align_corners` of the image-pool upsampling (openseg: True; injected:
            model.align_corners).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 512,
        dilations: list[int] = [12, 24, 36],
        in_index: int = -1,
        dropout_ratio: float = 0.0,
        align_corners: bool = True,
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
        if len(dilations) != 3:
            raise ValueError("openseg ASPP takes 3 dilations")
        self.aspp = _ASPP(self.in_channels, channels, list(dilations), align_corners)
        self.refine = nn.Sequential(*_conv_bn_relu(channels, channels, 3, relu=False))

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.refine(self.aspp(self.select(inputs)))


class OpensegDSNHead(DecodeHead):
    """openseg's auxiliary `layer_dsn` on the stride-8 layer3 output (1024 channels for R-101).

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of the 3x3 conv (with bias) + BN + ReLU.
        in_index: which backbone output the head reads (-2: layer3).
        dropout_ratio: Dropout2d probability before the classifier (openseg: none).
        align_corners: `align_corners` of resizes (injected: model.align_corners).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 256,
        in_index: int = -2,
        dropout_ratio: float = 0.0,
        align_corners: bool = True,
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
        self.dsn = nn.Sequential(*_conv_bn_relu(self.in_channels, channels, 3, bias=True))

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.dsn(self.select(inputs))
