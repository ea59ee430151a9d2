"""openseg.pytorch's HRNet segmentation head (HRNet_W48_CONTRAST / HRNet_W48 in ContrastiveSeg).

Differs from mmseg's FCN-on-HRNet: the four branches are upsampled bilinear with
align_corners=True (the recipe's `model.align_corners`) and concatenated; the classifier is a
3x3 conv WITH bias, BN, ReLU, Dropout2d(0.1) and a 1x1 conv WITHOUT bias. `feats` is the
concatenation (720 channels for W48), which is what the official projection head reads.
"""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.layers import resize


class OpensegHRNetHead(DecodeHead):
    """openseg.pytorch's HRNet head: the four branches upsampled and concatenated, see the module docstring.

    Args:
        in_channels: channels of the four HRNet branches (injected by the builder); their sum is the
            head's `channels` (720 for W48).
        num_classes: number of classes (injected: data.num_classes).
        dropout_ratio: Dropout2d probability before the 1x1 classifier.
        align_corners: `align_corners` of the branches' upsampling (openseg: True; injected:
            model.align_corners).
    """

    def __init__(self, *, in_channels, num_classes: int, dropout_ratio: float = 0.1, align_corners: bool = True):
        in_index = list(range(len(in_channels)))
        channels = sum(in_channels)
        super().__init__(
            in_channels=in_channels,
            channels=channels,
            num_classes=num_classes,
            in_index=in_index,
            input_transform="resize_concat",
            dropout_ratio=dropout_ratio,
            align_corners=align_corners,
        )
        self.pre_cls = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=True), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )
        self.conv_seg = nn.Conv2d(channels, num_classes, 1, bias=False)

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        xs = [inputs[i] for i in self.in_index]
        return torch.cat([xs[0]] + [resize(x, xs[0].shape[2:], self.align_corners) for x in xs[1:]], dim=1)

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        return super().cls_seg(self.pre_cls(feat))
