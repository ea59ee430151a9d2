"""HRNetV2p (segmentation variant) exactly as mmseg's `HRNet` backbone.

All four branches are returned (the heads concatenate them with input_transform="resize_concat").
Module names are mmseg's, which are also the names of the original HRNet ImageNet weights and of
timm's `hrnet_*` models, so `pretrained="timm"` loads timm's ImageNet weights by name and the
mmseg converter needs no backbone renames.

Why not timm's HRNet module: its fuse layers upsample with `nearest`; mmseg's use bilinear, and
twice (see `_Upsample` and `HRModule.forward`), which changes the outputs at odd input sizes.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ctxseg.models.backbones.pretrained import Mapped, load_pretrained, rename
from ctxseg.models.layers import FusedConv2d, foldable, resize

# (num_modules, num_blocks, num_channels) for stages 1..4; stage 1 uses Bottleneck, the rest BasicBlock
ARCHS: dict[str, list[dict[str, Any]]] = {
    "w18_small": [
        dict(num_modules=1, num_blocks=[2], num_channels=[64]),
        dict(num_modules=1, num_blocks=[2, 2], num_channels=[18, 36]),
        dict(num_modules=3, num_blocks=[2, 2, 2], num_channels=[18, 36, 72]),
        dict(num_modules=2, num_blocks=[2, 2, 2, 2], num_channels=[18, 36, 72, 144]),
    ],
    "w18": [
        dict(num_modules=1, num_blocks=[4], num_channels=[64]),
        dict(num_modules=1, num_blocks=[4, 4], num_channels=[18, 36]),
        dict(num_modules=4, num_blocks=[4, 4, 4], num_channels=[18, 36, 72]),
        dict(num_modules=3, num_blocks=[4, 4, 4, 4], num_channels=[18, 36, 72, 144]),
    ],
    "w48": [
        dict(num_modules=1, num_blocks=[4], num_channels=[64]),
        dict(num_modules=1, num_blocks=[4, 4], num_channels=[48, 96]),
        dict(num_modules=4, num_blocks=[4, 4, 4], num_channels=[48, 96, 192]),
        dict(num_modules=3, num_blocks=[4, 4, 4, 4], num_channels=[48, 96, 192, 384]),
    ],
}
_TIMM_NAMES = {"w18_small": "hrnet_w18_small_v2", "w18": "hrnet_w18", "w48": "hrnet_w48"}


def _conv_bn(in_ch: int, out_ch: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Sequential(conv, BN[, ReLU]) -> state-dict names `.0.weight`, `.1.*` as in mmseg."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, k, stride, k // 2, bias=False), nn.BatchNorm2d(out_ch)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Residual block of two 3x3 conv + BN (mmseg / original HRNet names).

    Args:
        in_ch: input channels.
        planes: output channels (expansion 1).
        stride: stride of the first 3x3 conv.
        downsample: shortcut projection (conv + BN) when shape changes; None: identity shortcut.
    """

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.fused = False

    def fuse_for_inference(self) -> None:
        """Eval copies only (ctxseg.models.layers.fuse_for_inference): BN folded, ReLU and the
        residual add fused into the convolutions."""
        if not (foldable(self.bn1) and foldable(self.bn2)):
            return
        self.conv1, self.bn1 = FusedConv2d(self.conv1, self.bn1, relu=True), nn.Identity()
        self.conv2, self.bn2 = FusedConv2d(self.conv2, self.bn2, relu=True), nn.Identity()
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.fused:
            return self.conv2(self.conv1(x), identity)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """pytorch style: the stride sits on the 3x3 conv.

    Args:
        in_ch: input channels.
        planes: width of the 1x1 / 3x3 convs; the output has planes x 4 channels.
        stride: stride of the 3x3 conv.
        downsample: shortcut projection (conv + BN) when shape changes; None: identity shortcut.
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.fused = False

    def fuse_for_inference(self) -> None:
        """As BasicBlock.fuse_for_inference."""
        if not (foldable(self.bn1) and foldable(self.bn2) and foldable(self.bn3)):
            return
        self.conv1, self.bn1 = FusedConv2d(self.conv1, self.bn1, relu=True), nn.Identity()
        self.conv2, self.bn2 = FusedConv2d(self.conv2, self.bn2, relu=True), nn.Identity()
        self.conv3, self.bn3 = FusedConv2d(self.conv3, self.bn3, relu=True), nn.Identity()
        self.fused = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.fused:
            return self.conv3(self.conv2(self.conv1(x)), identity)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _make_blocks(block, in_ch: int, planes: int, num_blocks: int) -> nn.Sequential:
    downsample = None
    if in_ch != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, planes * block.expansion, 1, bias=False), nn.BatchNorm2d(planes * block.expansion)
        )
    layers = [block(in_ch, planes, 1, downsample)]
    layers += [block(planes * block.expansion, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*layers)


class _Upsample(nn.Module):
    """mmseg's `Upsample(scale_factor=s)`: interpolates to size (int(h*s), int(w*s)), bilinear."""

    def __init__(self, scale_factor: int):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return resize(x, (int(h * self.scale_factor), int(w * self.scale_factor)))


class HRModule(nn.Module):
    """Parallel branches of BasicBlocks followed by the all-to-all fuse layers.

    fuse (j > i): conv1x1 -> BN -> upsample x2^(j-i) -> resize to x[i] again (the double resize;
    `fuse_upsample="direct"` skips the first, i.e. one interpolate straight to the target size).
    fuse (j < i): (i-j) conv3x3 stride-2 + BN, ReLU on all but the last. ReLU after the sum.

    Args:
        in_channels: input channels of each branch.
        num_blocks: BasicBlocks per branch.
        num_channels: output channels of each branch.
        fuse_upsample: "mmseg" (double bilinear resize), "direct" (one resize) or "openseg" (one resize
            with align_corners=True), see `hrnet`.
    """

    def __init__(
        self, in_channels: list[int], num_blocks: list[int], num_channels: list[int], fuse_upsample: str = "mmseg"
    ):
        super().__init__()
        n = len(num_channels)
        self.branches = nn.ModuleList(
            _make_blocks(BasicBlock, in_channels[i], num_channels[i], num_blocks[i]) for i in range(n)
        )
        self.in_channels = list(num_channels)  # after the branches (BasicBlock expansion 1)
        ch = self.in_channels
        self.fuse_upsample = fuse_upsample
        self.fuse_layers = nn.ModuleList()
        if n == 1:
            return
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    up: list[nn.Module] = [nn.Conv2d(ch[j], ch[i], 1, bias=False), nn.BatchNorm2d(ch[i])]
                    if fuse_upsample == "mmseg":
                        up.append(_Upsample(2 ** (j - i)))
                    row.append(nn.Sequential(*up))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    chain = [_conv_bn(ch[j], ch[j], 3, 2) for _ in range(i - j - 1)]
                    chain.append(_conv_bn(ch[j], ch[i], 3, 2, relu=False))
                    row.append(nn.Sequential(*chain))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if len(xs) == 1:
            return xs
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = 0
            for j, layer in enumerate(row):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    # openseg (ContrastiveSeg) resizes once, bilinear with align_corners=True
                    y = y + resize(layer(xs[j]), xs[i].shape[2:], self.fuse_upsample == "openseg")
                else:
                    y = y + layer(xs[j])
            out.append(self.relu(y))
        return out


class HRNet(nn.Module):
    """Stem (two 3x3 stride-2 convs, 64 channels, fixed in mmseg), stage 1 (Bottleneck), stages 2-4.

    Args:
        stages: four dicts of num_modules / num_blocks / num_channels (one entry per branch), see ARCHS.
        fuse_upsample: "mmseg", "direct" or "openseg" upsampling in the fuse layers, see `hrnet`.
        concat_downsample: 1 returns the four branches; s > 1 returns one map: the branches concatenated
            and downsampled by a stride-s 3x3 conv + BN + ReLU (sssegmentation MCIBI), see `hrnet`.
    """

    def __init__(self, stages: list[dict[str, Any]], fuse_upsample: str = "mmseg", concat_downsample: int = 1):
        super().__init__()
        if len(stages) != 4:
            raise ValueError("HRNet needs 4 stage specs")
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        s1 = stages[0]
        self.layer1 = _make_blocks(Bottleneck, 64, s1["num_channels"][0], s1["num_blocks"][0])
        pre = [s1["num_channels"][0] * Bottleneck.expansion]
        for k, spec in enumerate(stages[1:], start=2):
            cur = list(spec["num_channels"])
            setattr(self, f"transition{k - 1}", self._transition(pre, cur))
            modules = []
            in_ch = cur
            for _ in range(spec["num_modules"]):
                m = HRModule(in_ch, spec["num_blocks"], cur, fuse_upsample)
                modules.append(m)
                in_ch = m.in_channels
            setattr(self, f"stage{k}", nn.Sequential(*modules))
            pre = in_ch
        self.out_channels = list(pre)
        # ssseg MCIBI's `downsample_backbone` (HRNet on Cityscapes/LIP): on the concatenated branches
        self.concat_downsample = concat_downsample
        if concat_downsample > 1:
            width = sum(pre)
            self.downsample = nn.Sequential(
                nn.Conv2d(width, width, 3, concat_downsample, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            self.out_channels = [width]

    @staticmethod
    def _transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
        """Existing branches: 3x3 conv+BN+ReLU where the width changes; new branches: stride-2
        3x3 convs from the LAST previous branch (all but the last keep its width)."""
        layers = nn.ModuleList()
        for i, c in enumerate(cur):
            if i < len(pre):
                layers.append(_conv_bn(pre[i], c, 3) if pre[i] != c else nn.Identity())
            else:
                steps = i + 1 - len(pre)
                layers.append(
                    nn.Sequential(*[_conv_bn(pre[-1], c if s == steps - 1 else pre[-1], 3, 2) for s in range(steps)])
                )
        return layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        for k in (2, 3, 4):
            trans = getattr(self, f"transition{k - 1}")
            # existing branches transform their own output, new branches the last one
            xs = [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(trans)]
            ys = getattr(self, f"stage{k}")(xs)
        if self.concat_downsample > 1:
            # as ssseg's HRNet output: one bilinear resize (align_corners=False) to branch 0, concat
            size = ys[0].shape[2:]
            return [self.downsample(torch.cat([ys[0]] + [resize(y, size) for y in ys[1:]], dim=1))]
        return ys


# the HRNet ImageNet classifier (timm / original HRNet-Image-Classification), not part of HRNetV2p
_HRNET_SKIP = [(r"(incre_modules|downsamp_modules|final_layer|classifier)\..+", "ImageNet classification head")]


def hrnet_key_filter(src: dict[str, torch.Tensor], module: nn.Module) -> Mapped:
    """timm / original HRNet ImageNet weights (or an mmseg checkpoint's `backbone.`) -> ctxseg HRNet (same names).
    MCIBI's `downsample` (concat_downsample > 1) has no ImageNet counterpart."""
    mapped = rename(src, [], _HRNET_SKIP, "HRNet (timm / original names)")
    mapped.kept_init[r"downsample\..+"] = "MCIBI's downsample_backbone, not in ImageNet weights"
    return mapped


def hrnet(
    *,
    arch: Literal["w18_small", "w18", "w48"] = "w18",
    stages: list[dict[str, Any]] | None = None,
    fuse_upsample: Literal["mmseg", "direct", "openseg"] = "mmseg",
    pretrained: str | None = None,
    concat_downsample: int = 1,
    pretrained_strict: bool = True,
) -> HRNet:
    """HRNetV2p backbone; recipe type "hrnet". `stages` overrides `arch`.

    fuse_upsample="mmseg" reproduces mmseg's double bilinear resize in the fuse layers (default,
    needed for mmseg checkpoints to give mmseg's outputs); "direct" resizes once to the target;
    "openseg" resizes once with align_corners=True (openseg.pytorch / ContrastiveSeg checkpoints).

    Args:
        arch: preset of the stage specs: "w18_small", "w18" or "w48".
        stages: 4 dicts of num_modules/num_blocks/num_channels that override `arch`.
        fuse_upsample: "mmseg", "direct" or "openseg" (above).
        pretrained: a local file with mmseg/HRNet key names, "timm" (ImageNet weights of timm's
            matching hrnet) or "timm:NAME.TAG"; None: random initialisation.
        concat_downsample: 1 (default) returns the four branches. s > 1 returns ONE map (out_channels
            [sum of widths]): the branches resized to branch 0 and concatenated, then `downsample` = 3x3
            stride-s conv (no bias, padding 1, width kept) + BN + ReLU, i.e. sssegmentation MCIBI's
            `downsample_backbone` (stride 2 in its HRNet-W48 Cityscapes/LIP configs: output stride 8).
            Heads then read it with in_index = 0 and no input_transform.
        pretrained_strict: False loads what fits and lists the rest instead of stopping.
    """
    if concat_downsample < 1:
        raise ValueError(f"HRNet concat_downsample must be >= 1, got {concat_downsample}")
    if stages is None:
        if arch not in ARCHS:
            raise ValueError(f"HRNet arch must be one of {sorted(ARCHS)}, got {arch}")
        stages = ARCHS[arch]
    model = HRNet(stages, fuse_upsample, concat_downsample)
    if pretrained:
        load_pretrained(model, pretrained, hrnet_key_filter, timm_name=_TIMM_NAMES.get(arch), strict=pretrained_strict)
    return model
