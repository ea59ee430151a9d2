"""ResNet-V1c (deep stem) with output stride 8 or 16, built on timm's ResNet.

timm's ResNet with `stem_type="deep"` and `output_stride=8` is numerically mmseg's ResNetV1c-D8:
three 3x3 stem convs (stem_width, stem_width, 2*stem_width), stride on the 3x3 conv of the
bottleneck, conv1x1+BN downsample, and the first block of each dilated stage using the previous
dilation (mmseg's `contract_dilation=True`). Only the key names differ (see convert/mmseg.py).
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ctxseg.models.backbones.pretrained import load_pretrained

_DEPTHS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def timm_resnet_stages(net: ResNet, x: torch.Tensor, out_indices) -> list[torch.Tensor]:
    """Stem + the four stages of a timm ResNet-family network; the outputs of `out_indices`."""
    x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
    outs = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        outs.append(x)
    return [outs[i] for i in out_indices]


class ResNetD8(nn.Module):
    """Deep-stem dilated ResNet returning the four stage outputs (strides 4, 8, 8, 8 for OS 8)."""

    def __init__(self, depth: int = 50, stem_channels: int = 64, base_channels: int = 64, output_stride: int = 8,
                 deep_stem: bool = True, avg_down: bool = False, out_indices: tuple[int, ...] = (0, 1, 2, 3),
                 pretrained: str | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        block, layers = _DEPTHS[depth]
        self.net = ResNet(
            block, layers, num_classes=0, global_pool="", output_stride=output_stride,
            stem_type="deep" if deep_stem else "", stem_width=stem_channels // 2 if deep_stem else stem_channels,
            avg_down=avg_down, channels=tuple(base_channels * 2**i for i in range(4)), drop_path_rate=drop_path_rate,
        )
        if block is BasicBlock:
            # mmseg/ssseg dilate only conv1 of a BasicBlock (conv2 stays 3x3, padding 1); timm dilates both
            for layer in (self.net.layer3, self.net.layer4):
                for blk in layer:
                    blk.conv2.dilation, blk.conv2.padding = (1, 1), (1, 1)
        expansion = block.expansion
        self.out_indices = tuple(out_indices)
        self.out_channels = [base_channels * 2**i * expansion for i in range(4)]
        if pretrained:
            timm_name = f"resnet{depth}{'d' if avg_down else 'c' if deep_stem else ''}"
            load_pretrained(self.net, pretrained, timm_name=timm_name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return timm_resnet_stages(self.net, x, self.out_indices)


def resnet(*, depth: int = 50, stem_channels: int = 64, base_channels: int = 64, output_stride: int = 8,
           deep_stem: bool = True, avg_down: bool = False, pretrained: str | None = None,
           drop_path_rate: float = 0.0) -> ResNetD8:
    """ResNet-V1c-D8 (mmseg's ResNetV1c with dilations (1,1,2,4), strides (1,2,1,1))."""
    return ResNetD8(depth, stem_channels, base_channels, output_stride, deep_stem, avg_down,
                    pretrained=pretrained, drop_path_rate=drop_path_rate)
