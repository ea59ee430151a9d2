"""Decode-head base: input selection, dropout and the 1x1 classifier, as mmseg's BaseDecodeHead."""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.layers import resize


class DecodeHead(nn.Module):
    """Subclasses implement `features(inputs) -> Tensor` (the map fed to the classifier).

    `forward` returns {"logits": ..., "feats": ...} at feature resolution. Keeping `feats`
    separate lets context plug-ins (CAC's classifier, contrast projections) use the head's final
    representation without knowing the head.
    """

    def __init__(self, in_channels: list[int] | int, channels: int, num_classes: int, in_index: int | list[int] = -1,
                 input_transform: str | None = None, dropout_ratio: float = 0.1, align_corners: bool = False):
        super().__init__()
        self.in_index = in_index
        self.input_transform = input_transform
        self.align_corners = align_corners
        self.channels = channels
        self.num_classes = num_classes
        all_ch = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        if input_transform == "resize_concat":
            self.in_channels = sum(all_ch[i] for i in in_index)
        elif input_transform == "multiple_select":
            self.in_channels = [all_ch[i] for i in in_index]
        else:
            self.in_channels = all_ch[in_index]
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def select(self, inputs: list[torch.Tensor]):
        if self.input_transform == "resize_concat":
            xs = [inputs[i] for i in self.in_index]
            xs = [resize(x, xs[0].shape[2:], self.align_corners) for x in xs]
            return torch.cat(xs, dim=1)
        if self.input_transform == "multiple_select":
            return [inputs[i] for i in self.in_index]
        return inputs[self.in_index]

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def forward(self, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = self.features(inputs)
        return {"logits": self.cls_seg(feats), "feats": feats}
