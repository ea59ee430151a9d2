"""sssegmentation's auxiliary decoders (`DefaultAuxiliaryDecoder`), one per selected backbone output.

MCIBI's ViT-L configs (mcibi_deeplabv3_vitlarge_*.py) train three of them, on the backbone's
outputs 0, 1, 2 (ViT layers 9, 14, 19 after MCIBI's output norms: ssseg feeds
`backbone_outputs[:-1][-3:]`), each with CE loss weight 0.4 (loss_aux1..3). One decoder is

    num_convs x (3x3 conv without bias -> BN -> ReLU -> nn.Upsample(scale_factor=upsample), nearest)
    -> Dropout2d(dropout_ratio) -> 1x1 conv to the classes

so two convs with x4 upsampling each take a stride-16 ViT map to stride 1. The logits are
returned as a list (`aux_logits`); ctxseg's Criterion weights each with train.loss.aux_weight, as
ssseg's loss_aux{i} (its logits are resized bilinearly to the labels first, as in ssseg).
State-dict names: `decoders.i.convs.j.{conv,bn}`, `decoders.i.conv_seg` (ssseg:
`auxiliary_decoder.i.{k*j, k*j+1}`, k = 4 with upsampling (3 without), `auxiliary_decoder.i.{k*n+1}`).
"""

from __future__ import annotations

import torch
from torch import nn

from ctxseg.models.layers import ConvModule


class AuxDecoder(nn.Module):
    """One sssegmentation auxiliary decoder: (3x3 ConvModule -> nearest upsample) x num_convs, dropout, 1x1 conv.

    Args:
        in_channels: channels of the backbone output it reads.
        channels: channels of the 3x3 convolutions.
        num_classes: number of classes of the 1x1 classifier.
        num_convs: number of conv-BN-ReLU blocks, each followed by the upsample.
        upsample: nearest-neighbour scale factor after every block (1: none).
        dropout_ratio: Dropout2d probability before the classifier.
    """

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, num_convs: int, upsample: int, dropout_ratio: float
    ):
        super().__init__()
        self.convs = nn.ModuleList(
            ConvModule(in_channels if j == 0 else channels, channels, 3, padding=1) for j in range(num_convs)
        )
        # nn.Upsample's default mode, as ssseg's `upsample: {'scale_factor': 4}`
        self.upsample = nn.Upsample(scale_factor=upsample, mode="nearest") if upsample > 1 else nn.Identity()
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels if num_convs > 0 else in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.upsample(conv(x))
        return self.conv_seg(self.dropout(x))


class SssegAuxHeads(nn.Module):
    """forward(backbone outputs) -> {"logits": [one logits map per `in_index`]}.

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: classes of each decoder's classifier (injected).
        in_index: the backbone outputs that feed one decoder each (MCIBI ViT-L: 0, 1, 2).
        channels: width of each decoder's 3x3 convolutions.
        num_convs: conv-BN-ReLU blocks per decoder, each followed by the upsample.
        upsample: nearest-neighbour scale factor after every block (ssseg's `scale_factor`).
        dropout_ratio: Dropout2d before the 1x1 classifier.
        align_corners: unused (the decoders upsample with nearest); accepted as every head.
    """

    def __init__(
        self,
        *,
        in_channels: list[int] | int,
        num_classes: int,
        in_index: list[int] = (0, 1, 2),
        channels: int = 512,
        num_convs: int = 2,
        upsample: int = 4,
        dropout_ratio: float = 0.1,
        align_corners: bool = False,
    ):
        super().__init__()
        all_ch = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        self.in_index = list(in_index)
        self.decoders = nn.ModuleList(
            AuxDecoder(all_ch[i], channels, num_classes, num_convs, upsample, dropout_ratio) for i in self.in_index
        )

    def forward(self, inputs: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {"logits": [dec(inputs[i]) for i, dec in zip(self.in_index, self.decoders)]}
