"""MobileNetV2 as mmseg's `MobileNetV2` (CAC's FCN-MobileNetV2-D8), with mmseg's module names.

Stem ConvModule(3, 32, 3, stride 2) then seven layers of inverted residuals
(expand_ratio, channels, blocks) = (1,16,1) (6,24,2) (6,32,3) (6,64,4) (6,96,3) (6,160,3) (6,320,1).
Only the first block of a layer has the layer's stride; every block of a layer uses the layer's
dilation on its depthwise 3x3 (padding = dilation). ReLU6; the projection 1x1 has no activation;
residual only when stride 1 and in == out. D8: strides (1,2,2,1,1,1,1), dilations
(1,1,1,2,2,4,4), out_indices (1,2,4,6) -> channels (24, 32, 96, 320) at strides 4, 8, 8, 8.
timm's MobileNetV2 (EfficientNet builder) has other module boundaries, so this one is our own.

Pretrained ImageNet weights (`mobilenetv2_key_filter`), two layouts told apart by their keys:
- mmcls / mmpretrain (`backbone.conv1.conv`, `backbone.layerN.M.conv.K.{conv,bn}`, the official
  weights of mmseg's and CAC's MobileNetV2 configs, mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth):
  the `backbone.` prefix is removed as mmcv's `mmcls://` loader does; the classifier's last
  1x1 conv (`conv2`, 320 -> 1280) and `head.fc` are skipped (mmseg's MobileNetV2 stops at layer7).
- timm (`mobilenetv2_100`: `conv_stem`, `bn1`, `blocks.i.j.{conv_pw,bn1,conv_dw,bn2,conv_pwl,bn3}`):
  the same architecture block for block (blocks.i = layer{i+1}); another training (RandAugment,
  timm's `ra_in1k`), so not the CAC/mmseg weights. `conv_head`/`bn2`/`classifier` are skipped.

Norm: mmseg's MobileNetV2 defaults to plain BN (norm_cfg=dict(type='BN')); the CAC fork's FCN config
replaces the backbone (`_delete_=True`) without giving it the heads' SyncBN, while mmseg 1.2.2's passes
norm_cfg=SyncBN. `norm = "BN"` keeps this backbone's BatchNorms per process when the rest of the model
is converted to SyncBN (fcn-cac-mv2); `norm = "model"` follows model.norm (fcn-mv2). Checked per layer
against the official models by tests/test_schedule_golden.py.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ctxseg.models.backbones.pretrained import Mapped, load_pretrained, rename

ARCH = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))


def make_divisible(value: float, divisor: int = 8, min_ratio: float = 0.9) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < min_ratio * value else new


class ConvModule6(nn.Sequential):
    """conv -> BN -> (ReLU6); mmseg names `conv`, `bn`.

    Args:
        cin: input channels.
        cout: output channels.
        k: kernel size.
        stride: convolution stride.
        padding: zero padding on each side.
        dilation: convolution dilation.
        groups: convolution groups (`cin` for the depthwise 3x3).
        act: end with an in-place ReLU6 (`activate`); False for the linear projection.
    """

    def __init__(self, cin, cout, k=1, stride=1, padding=0, dilation=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.activate = nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (unless expand_ratio is 1) -> depthwise 3x3 -> linear 1x1 projection.

    Args:
        cin: input channels.
        cout: output channels; a residual connection is added when stride is 1 and cin == cout.
        stride: stride of the depthwise 3x3.
        expand_ratio: hidden channels = round(cin x expand_ratio).
        dilation: dilation (and padding) of the depthwise 3x3.
    """

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, dilation: int = 1):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand_ratio != 1:
            layers.append(ConvModule6(cin, hidden, 1))
        layers += [
            ConvModule6(hidden, hidden, 3, stride, dilation, dilation, groups=hidden),
            ConvModule6(hidden, cout, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """mmseg's MobileNetV2: stem + seven layers of inverted residuals (module docstring).

    Args:
        widen_factor: channel multiplier (channels rounded to multiples of 8).
        strides: stride of the first block of each of the seven layers.
        dilations: dilation of every block of each of the seven layers.
        out_indices: which layers' outputs (0..6) forward returns.
    """

    def __init__(
        self,
        widen_factor: float = 1.0,
        strides=(1, 2, 2, 1, 1, 1, 1),
        dilations=(1, 1, 1, 2, 2, 4, 4),
        out_indices=(1, 2, 4, 6),
    ):
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


_MMCLS_SKIP = [
    (r"conv2\..+", "the ImageNet model's last 1x1 conv (320 -> 1280); mmseg's MobileNetV2 has none"),
    (r"head\..+", "ImageNet classifier"),
]
_TIMM_SKIP = [
    (r"(conv_head|bn2)\..+", "the ImageNet model's last 1x1 conv (320 -> 1280); mmseg's MobileNetV2 has none"),
    (r"classifier\..+", "ImageNet classifier"),
]


def _timm_rules() -> list[tuple[str, str]]:
    rules = [
        (r"conv_stem\.(.+)", r"conv1.conv.\1"),
        (r"bn1\.(.+)", r"conv1.bn.\1"),
        # stage 0 is timm's depthwise-separable block (dw, pw) = mmseg's expand_ratio-1 block (conv.0, conv.1)
        (r"blocks\.0\.(\d+)\.conv_dw\.(.+)", r"layer1.\1.conv.0.conv.\2"),
        (r"blocks\.0\.(\d+)\.bn1\.(.+)", r"layer1.\1.conv.0.bn.\2"),
        (r"blocks\.0\.(\d+)\.conv_pw\.(.+)", r"layer1.\1.conv.1.conv.\2"),
        (r"blocks\.0\.(\d+)\.bn2\.(.+)", r"layer1.\1.conv.1.bn.\2"),
    ]
    for i in range(1, 7):
        b, layer = rf"blocks\.{i}\.(\d+)\.", f"layer{i + 1}"
        rules += [
            (b + r"conv_pw\.(.+)", layer + r".\1.conv.0.conv.\2"),
            (b + r"bn1\.(.+)", layer + r".\1.conv.0.bn.\2"),
            (b + r"conv_dw\.(.+)", layer + r".\1.conv.1.conv.\2"),
            (b + r"bn2\.(.+)", layer + r".\1.conv.1.bn.\2"),
            (b + r"conv_pwl\.(.+)", layer + r".\1.conv.2.conv.\2"),
            (b + r"bn3\.(.+)", layer + r".\1.conv.2.bn.\2"),
        ]
    return rules


def mobilenetv2_key_filter(src: dict[str, torch.Tensor], module: nn.Module) -> Mapped:
    """mmcls/mmpretrain or timm MobileNetV2 ImageNet weights -> mmseg's MobileNetV2 names (module docstring)."""
    if "conv_stem.weight" in src:
        return rename(src, _timm_rules(), _TIMM_SKIP, "timm MobileNetV2 (mobilenetv2_100)")
    return rename(src, [], _MMCLS_SKIP, "mmcls MobileNetV2")


def mobilenetv2(
    *,
    widen_factor: float = 1.0,
    strides: list[int] = (1, 2, 2, 1, 1, 1, 1),
    dilations: list[int] = (1, 1, 1, 2, 2, 4, 4),
    out_indices: list[int] = (1, 2, 4, 6),
    norm: Literal["model", "BN"] = "model",
    pretrained: str | None = None,
    pretrained_strict: bool = True,
) -> MobileNetV2:
    """MobileNetV2-D8 (mmseg); recipe type "mobilenetv2".

    Args:
        widen_factor: channel multiplier.
        strides: stride of each of the seven layers (D8: (1, 2, 2, 1, 1, 1, 1)).
        dilations: dilation of each of the seven layers (D8: (1, 1, 1, 2, 2, 4, 4)).
        out_indices: which layers' outputs forward returns ((1, 2, 4, 6): channels 24, 32, 96, 320).
        norm: "model" follows model.norm; "BN" keeps plain per-process BatchNorm under SyncBN (mmseg's
            default for this backbone).
        pretrained: the official mmcls file or its URL
            (https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth,
            mmseg's `mmcls://mobilenet_v2`), "timm" (mobilenetv2_100, another training) or "timm:NAME.TAG";
            None: random initialisation.
        pretrained_strict: False loads what fits and lists the rest instead of stopping.
    """
    model = MobileNetV2(widen_factor, tuple(strides), tuple(dilations), tuple(out_indices))
    model.keep_plain_bn = norm == "BN"  # read by ctxseg.models.norm.convert_sync_batchnorm
    if pretrained:
        load_pretrained(
            model,
            pretrained,
            mobilenetv2_key_filter,
            timm_name="mobilenetv2_100" if widen_factor == 1.0 else None,
            strict=pretrained_strict,
        )
    return model
