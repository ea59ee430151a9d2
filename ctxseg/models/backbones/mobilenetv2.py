"""MobileNetV2 as mmseg's `MobileNetV2` (CAC's FCN-MobileNetV2-D8), with mmseg's module names.

Stem ConvModule(3, 32, 3, stride 2) then seven layers of inverted residuals
(expand_ratio, channels, blocks) = (1,16,1) (6,24,2) (6,32,3) (6,64,4) (6,96,3) (6,160,3) (6,320,1).
Only the first block of a layer has the layer's stride; every block of a layer uses the layer's
dilation on its depthwise 3x3 (padding = dilation). ReLU6; the projection 1x1 has no activation;
residual only when stride 1 and in == out. D8: strides (1,2,2,1,1,1,1), dilations
(1,1,1,2,2,4,4), out_indices (1,2,4,6) -> channels (24, 32, 96, 320) at strides 4, 8, 8, 8.
timm's MobileNetV2 (EfficientNet builder) has other module boundaries, so this one is our own.
"""

from __future__ import annotations

import torch
from torch import nn

ARCH = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < min_ratio * value else new


class ConvModule6(nn.Sequential):
    """conv -> BN -> (ReLU6); mmseg names `conv`, `bn`."""

    def __init__(self, cin, cout, k=1, stride=1, padding=0, dilation=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.activate = nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, dilation: int = 1):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand_ratio != 1:
            layers.append(ConvModule6(cin, hidden, 1))
        layers += [ConvModule6(hidden, hidden, 3, stride, dilation, dilation, groups=hidden),
                   ConvModule6(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, widen_factor: float = 1.0, strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4),
                 out_indices=(1, 2, 4, 6)):
        super().__init__()
        self.out_indices = tuple(out_indices)
        cin = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvModule6(3, cin, 3, 2, 1)
        self.layer_names = []
        channels = []
        for i, ((t, c, n), s, d) in enumerate(zip(ARCH, strides, dilations)):
            cout = make_divisible(c * widen_factor, 8)
            blocks = [InvertedResidual(cin if j == 0 else cout, cout, s if j == 0 else 1, t, d) for j in range(n)]
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.layer_names.append(name)
            channels.append(cout)
            cin = cout
        self.out_channels = [channels[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.conv1(x)
        outs = []
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def mobilenetv2(*, widen_factor: float = 1.0, strides: list[int] = (1, 2, 2, 1, 1, 1, 1),
                dilations: list[int] = (1, 1, 1, 2, 2, 4, 4), out_indices: list[int] = (1, 2, 4, 6),
                pretrained: str | None = None) -> MobileNetV2:
    """MobileNetV2-D8 (mmseg). `pretrained`: a local file in mmseg/mmcls naming (e.g. mmcls'
    mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth, `backbone.` prefix stripped)."""
    model = MobileNetV2(widen_factor, tuple(strides), tuple(dilations), tuple(out_indices))
    if pretrained:
        from ctxseg.models.backbones.pretrained import read_state_dict
        from ctxseg.errors import UserError

        src = read_state_dict(pretrained)
        src = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in src.items()}
        missing, _ = model.load_state_dict({k: v for k, v in src.items() if k in model.state_dict()}, strict=False)
        if missing:
            raise UserError(f"Pretrained weights '{pretrained}' miss {len(missing)} MobileNetV2 keys, e.g. {missing[:3]}")
    return model
