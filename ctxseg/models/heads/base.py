"""Decode-head base: input selection, dropout and the 1x1 classifier, as mmseg's BaseDecodeHead."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ctxseg.models.layers import resize


@dataclass(frozen=True)
class InputSelector:
    """Which backbone outputs a head reads, and how (mmseg's in_index / input_transform).

    Plain data: a plug-in that needs the head's input (MCIBI's memory bottleneck) keeps a copy of
    this instead of a reference to the head.

    Args:
        in_index: index of the backbone output read (negative counts from the end), or a tuple of
            indices for the two transforms.
        input_transform: None (one output), "resize_concat" (the outputs resized to the first one's
            size and concatenated along channels) or "multiple_select" (a list of the outputs).
        align_corners: `align_corners` of the "resize_concat" resizes.
    """

    in_index: int | tuple[int, ...]
    input_transform: str | None = None
    align_corners: bool = False

    def __call__(self, inputs: list[torch.Tensor]):
        if self.input_transform == "resize_concat":
            xs = [inputs[i] for i in self.in_index]
            xs = [resize(x, xs[0].shape[2:], self.align_corners) for x in xs]
            return torch.cat(xs, dim=1)
        if self.input_transform == "multiple_select":
            return [inputs[i] for i in self.in_index]
        return inputs[self.in_index]


@dataclass(eq=False)
class ClassifierSlot:
    """The explicit classifier slot of a head (features in, logits out).

    A non-owning handle: the module lives at `owner.<attr>` (`conv_seg`, mmseg's name, so
    state-dict keys and converters do not change), applied after `owner.dropout` when the owner
    has one. A plug-in that takes the classifier over replaces the slot's module (`replace`); one
    that builds on the classifier reads it (`weight`).

    Args:
        owner: the module that holds the classifier (a decode head, or a plug-in that took it over).
        attr: attribute name of the classifier in `owner`.
    """

    owner: nn.Module
    attr: str = "conv_seg"

    @property
    def module(self) -> nn.Module:
        return getattr(self.owner, self.attr)

    @property
    def in_channels(self) -> int | None:
        return getattr(getattr(self.owner, self.attr, None), "in_channels", None)

    def is_linear(self) -> bool:
        """A 1x1 convolution: a per-pixel linear classifier with a weight matrix."""
        m = self.module
        return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)

    def weight(self) -> torch.Tensor:
        """The classifier's weight matrix [num_classes, C] (a 1x1 convolution's kernel)."""
        w = self.module.weight
        return w.reshape(w.shape[0], w.shape[1])  # not squeeze(): num_classes may be 1

    def replace(self, module: nn.Module, keep_dropout: bool = False) -> None:
        """Put `module` in the slot; the owner's dropout before it is removed unless `keep_dropout`."""
        setattr(self.owner, self.attr, module)
        if not keep_dropout and hasattr(self.owner, "dropout"):
            self.owner.dropout = None

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        dropout = getattr(self.owner, "dropout", None)
        return self.module(dropout(feats) if dropout is not None else feats)


class DecodeHead(nn.Module):
    """Subclasses implement `features(inputs) -> Tensor` (the map fed to the classifier).

    `forward` returns {"logits": ..., "feats": ...} at feature resolution. Keeping `feats`
    separate lets context plug-ins (CAC's classifier, contrast projections) use the head's final
    representation without knowing the head.

    Args:
        in_channels: channels of every backbone output (injected by the builder), or of the one output.
        channels: channels of the head's final feature map (the classifier's input).
        num_classes: number of classes of the 1x1 classifier `conv_seg`.
        in_index: which backbone output(s) the head reads (see InputSelector).
        input_transform: None, "resize_concat" or "multiple_select" (see InputSelector).
        dropout_ratio: Dropout2d probability before the classifier; 0 disables it.
        align_corners: `align_corners` of the head's bilinear resizes.
    """

    def __init__(
        self,
        *,
        in_channels: list[int] | int,
        channels: int,
        num_classes: int,
        in_index: int | list[int] = -1,
        input_transform: str | None = None,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ):
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

    def input_selector(self) -> InputSelector:
        index = tuple(self.in_index) if isinstance(self.in_index, (list, tuple)) else self.in_index
        return InputSelector(index, self.input_transform, self.align_corners)

    def select(self, inputs: list[torch.Tensor]):
        return self.input_selector()(inputs)

    def classifier_slot(self) -> ClassifierSlot:
        """The slot holding this head's final classifier (`conv_seg`), see ClassifierSlot."""
        return ClassifierSlot(self, "conv_seg")

    def features(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def forward(self, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = self.features(inputs)
        return {"logits": self.cls_seg(feats), "feats": feats}
