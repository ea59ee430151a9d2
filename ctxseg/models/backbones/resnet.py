"""ResNet-V1c (deep stem) with output stride 8 or 16, built on timm's ResNet.

timm's ResNet with `stem_type="deep"` and `output_stride=8` is numerically mmseg's ResNetV1c-D8:
three 3x3 stem convs (stem_width, stem_width, 2*stem_width), stride on the 3x3 conv of the
bottleneck, conv1x1+BN downsample, and the first block of each dilated stage using the previous
dilation (mmseg's `contract_dilation=True`). Only the key names differ (see convert/mmseg.py).

Pretrained ImageNet weights (`pretrained`, see ctxseg.models.backbones.pretrained) come in two
layouts, told apart by their keys (`resnet_key_filter`):
- timm (`conv1.{0,1,3,4,6}`, `bn1`, `layerN`, `fc`): timm's resnet*c / resnet*d; the classifier
  `fc` is skipped. timm's deep stems are 32-32-64 (stem_channels 64).
- openseg deep-base (ContrastiveSeg's `resnet101-imagenet.pth`, CSAIL's layout): stem
  `conv1, bn1, conv2, bn2, conv3, bn3` (64-64-128, stem_channels 128; optionally under
  `resinit.`, as openseg's own model names them), `layerN`, `fc` (skipped). openseg's stem
  max-pool rounds up (`ceil_mode=True`): `stem_pool_ceil = true` reproduces it.
- mmcv / mmseg ResNetV1c (`open-mmlab://resnet{50,101}_v1c`, the same files as sssegmentation's
  `resnet{50,101}conv3x3stem`): stem Sequential `stem.{0,1,3,4,6,7}` (conv, BN, ReLU x 3) ->
  timm's `conv1.{0,1,3,4,6}` + `bn1`; `layerN` keeps its names; `fc` (if present) is skipped.
"""

from __future__ import annotations

import re

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ctxseg.models.backbones.pretrained import Mapped, load_pretrained, rename

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


_CLASSIFIER = [(r"fc\.(weight|bias)", "ImageNet classifier")]
# openseg / CSAIL deep-base stem -> timm's deep stem Sequential (conv, bn, act, conv, bn, act, conv) + bn1
_DEEPBASE_STEM = [
    (r"(?:resinit\.)?conv1\.(.+)", r"conv1.0.\1"),
    (r"(?:resinit\.)?bn1\.(.+)", r"conv1.1.\1"),
    (r"(?:resinit\.)?conv2\.(.+)", r"conv1.3.\1"),
    (r"(?:resinit\.)?bn2\.(.+)", r"conv1.4.\1"),
    (r"(?:resinit\.)?conv3\.(.+)", r"conv1.6.\1"),
    (r"(?:resinit\.)?bn3\.(.+)", r"bn1.\1"),
]


# mmcv / mmseg / mmdet deep stem Sequential(conv, bn, relu, conv, bn, relu, conv, bn, relu) -> timm's
MMCV_STEM = [(r"stem\.([0-6])\.(.+)", r"conv1.\1.\2"), (r"stem\.7\.(.+)", r"bn1.\1")]


def is_mmcv_stem(src) -> bool:
    return any(re.fullmatch(r"(backbone\.)?stem\.0\.weight", k) for k in src)


def resnet_key_filter(src: dict[str, torch.Tensor], module: nn.Module) -> Mapped:
    """ImageNet ResNet weights (timm, openseg deep-base or mmcv ResNetV1c layout, told apart by the stem
    keys) -> timm ResNet."""
    if any(re.fullmatch(r"(backbone\.)?(resinit\.)?conv3\.weight", k) for k in src):  # a 3-conv stem
        return rename(src, _DEEPBASE_STEM, _CLASSIFIER, "openseg deep-base ResNet (conv1-3/bn1-3 stem)")
    if is_mmcv_stem(src):
        return rename(src, MMCV_STEM, _CLASSIFIER, "mmcv ResNetV1c (stem.N)")
    return rename(src, [], _CLASSIFIER, "timm ResNet")


class ResNetD8(nn.Module):
    """Deep-stem dilated ResNet returning the four stage outputs (strides 4, 8, 8, 8 for OS 8).

    Args:
        depth: 18, 34 (BasicBlock), 50, 101 or 152 (Bottleneck).
        stem_channels: output channels of the stem; a deep stem's first two convs have half as many
            (64: timm/mmseg 32-32-64; 128: openseg deep-base 64-64-128).
        base_channels: channels of the first stage's blocks before expansion (doubled at each stage).
        output_stride: 8 (stages 3 and 4 dilated 2 and 4) or 16 (stage 4 dilated 2); 32: no dilation.
        deep_stem: three 3x3 stem convolutions (V1c) instead of one 7x7.
        avg_down: average-pool + 1x1 conv shortcut in downsampling blocks (ResNet-D).
        out_indices: which stage outputs (0..3) forward returns.
        pretrained: ImageNet weights: "timm", "timm:NAME.TAG", a URL or a local file (see `resnet`);
            None: random initialisation.
        drop_path_rate: stochastic depth rate (timm's, linearly increasing over the blocks).
        stem_pool_ceil: the stem max-pool rounds up (ceil_mode=True), as openseg's deep-base ResNet.
        pretrained_strict: stop when the pretrained weights do not fit exactly; False loads what fits
            and lists the rest.
    """

    def __init__(
        self,
        depth: int = 50,
        stem_channels: int = 64,
        base_channels: int = 64,
        output_stride: int = 8,
        deep_stem: bool = True,
        avg_down: bool = False,
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        pretrained: str | None = None,
        drop_path_rate: float = 0.0,
        stem_pool_ceil: bool = False,
        pretrained_strict: bool = True,
    ):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        block, layers = _DEPTHS[depth]
        self.net = ResNet(
            block,
            layers,
            num_classes=0,
            global_pool="",
            output_stride=output_stride,
            stem_type="deep" if deep_stem else "",
            stem_width=stem_channels // 2 if deep_stem else stem_channels,
            avg_down=avg_down,
            channels=tuple(base_channels * 2**i for i in range(4)),
            drop_path_rate=drop_path_rate,
        )
        if block is BasicBlock:
            # mmseg/ssseg dilate only conv1 of a BasicBlock (conv2 stays 3x3, padding 1); timm dilates both
            for layer in (self.net.layer3, self.net.layer4):
                for blk in layer:
                    blk.conv2.dilation, blk.conv2.padding = (1, 1), (1, 1)
        if stem_pool_ceil:  # openseg's deep-base ResNet: MaxPool2d(3, 2, 1, ceil_mode=True)
            self.net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        expansion = block.expansion
        self.out_indices = tuple(out_indices)
        self.out_channels = [base_channels * 2**i * expansion for i in range(4)]
        if pretrained:
            timm_name = f"resnet{depth}{'d' if avg_down else 'c' if deep_stem else ''}"
            load_pretrained(self.net, pretrained, resnet_key_filter, timm_name=timm_name, strict=pretrained_strict)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return timm_resnet_stages(self.net, x, self.out_indices)


def resnet(
    *,
    depth: int = 50,
    stem_channels: int = 64,
    base_channels: int = 64,
    output_stride: int = 8,
    deep_stem: bool = True,
    avg_down: bool = False,
    pretrained: str | None = None,
    drop_path_rate: float = 0.0,
    stem_pool_ceil: bool = False,
    pretrained_strict: bool = True,
) -> ResNetD8:
    """ResNet-V1c-D8 (mmseg's ResNetV1c with dilations (1,1,2,4), strides (1,2,1,1)); recipe type "resnet".

    Args:
        depth: 18, 34, 50, 101 or 152.
        stem_channels: output channels of the stem (64: timm/mmseg; 128: openseg deep-base).
        base_channels: channels of the first stage's blocks before expansion.
        output_stride: 8, 16 or 32.
        deep_stem: three 3x3 stem convolutions (V1c) instead of one 7x7.
        avg_down: average-pool shortcut in downsampling blocks (ResNet-D).
        pretrained: "timm" (timm's resnet{depth}c, or resnet{depth}d with avg_down), "timm:NAME.TAG",
            a URL or a local file in timm or openseg deep-base layout (module docstring); None: none.
        drop_path_rate: stochastic depth rate.
        stem_pool_ceil: openseg's ceil-mode stem max-pool.
        pretrained_strict: False loads what fits and lists the rest instead of stopping.
    """
    return ResNetD8(
        depth,
        stem_channels,
        base_channels,
        output_stride,
        deep_stem,
        avg_down,
        pretrained=pretrained,
        drop_path_rate=drop_path_rate,
        stem_pool_ceil=stem_pool_ceil,
        pretrained_strict=pretrained_strict,
    )
