"""Small building blocks shared by heads, named like mmseg's so converters stay simple tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size, align_corners: bool = False, mode: str = "bilinear") -> torch.Tensor:
    """mmseg's `resize`: a plain interpolate to an explicit size (never a scale factor)."""
    if torch.jit.is_tracing():  # ONNX export: keep traced sizes symbolic so --dynamic graphs follow the input
        return F.interpolate(x, size=size, mode=mode, align_corners=align_corners if mode in ("bilinear", "bicubic") else None)
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners if mode in ("bilinear", "bicubic") else None)


class ConvModule(nn.Sequential):
    """conv -> BN -> ReLU with mmseg's state-dict names (`conv.weight`, `bn.*`); no conv bias before BN."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation, groups, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(out_ch)
        if act:
            self.activate = nn.ReLU(inplace=True)


class DepthwiseSeparableConvModule(nn.Sequential):
    """mmcv's depthwise-separable ConvModule: depthwise 3x3 (BN, ReLU) then pointwise 1x1 (BN, ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(in_ch, in_ch, kernel_size, padding=padding, dilation=dilation, groups=in_ch)
        self.pointwise_conv = ConvModule(in_ch, out_ch, 1)
