"""OCR head (object-contextual representations) as mmseg's CascadeEncoderDecoder of
[FCNHead, OCRHead], folded into one head module.

Cascade: `region_head` (mmseg `decode_head.0`, an FCNHead) predicts coarse logits; they are the
soft object regions of the OCR stage (mmseg `decode_head.1`) and are also supervised directly
(returned as `aux_logits`, loss weight train.loss.aux_weight = 0.4; the OCR logits get
decode_weight = 1.0, as mmseg's loss_decode weights 0.4 / 1.0). They are used at inference too.

OCR stage:
  pixel_repr     = bottleneck(x)                                  3x3 ConvModule
  regions        = softmax over H*W of the RAW region logits (scale 1)
  object_repr    = regions @ pixel_repr -> (N, C, K, 1)           SpatialGatherModule
  object_context = ObjectAttentionBlock(pixel_repr, object_repr)  (q k^T * ocr_channels^-0.5)
  logits         = conv_seg(dropout(object_context))
Gather and attention are batched matrix products over all pixels and classes.

Cost notes (same values up to float rounding): the region head and the OCR bottleneck read the
same resize_concat of the backbone outputs when their input settings agree (mmseg builds it
twice); out_project's 1x1 convolution is applied to the K object values before the attention
mixes them (a 1x1 conv commutes with a convex combination over objects; with BN folded in
eval its bias too, since attention weights sum to 1), i.e. on K vectors instead of H*W pixels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ctxseg.errors import UserError
from ctxseg.models.heads.base import DecodeHead
from ctxseg.models.heads.fcn import FCNHead
from ctxseg.models.layers import ConvModule, resize


class SpatialGatherModule(nn.Module):
    """Class-weighted average of pixel features: (N, C, H, W), (N, K, H, W) -> (N, C, K, 1).

    Args:
        scale: multiplies the class scores before the softmax over pixels (mmseg's OCRHead `scale`).
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        n, k = probs.shape[:2]
        probs = (self.scale * probs.reshape(n, k, -1)).softmax(dim=2)  # over pixels, not classes
        feats = feats.reshape(n, feats.shape[1], -1).transpose(1, 2)  # N, HW, C
        return torch.bmm(probs, feats).transpose(1, 2).unsqueeze(3)  # N, C, K, 1


def _project(in_ch: int, out_ch: int, num_convs: int) -> nn.Module:
    """mmseg `_SelfAttentionBlock.build_project`: one ConvModule, or a Sequential of them."""
    if num_convs == 1:
        return ConvModule(in_ch, out_ch, 1)
    return nn.Sequential(ConvModule(in_ch, out_ch, 1), *[ConvModule(out_ch, out_ch, 1) for _ in range(num_convs - 1)])


class ObjectAttentionBlock(nn.Module):
    """Pixels (queries) attend to object representations (keys/values), then a 1x1 bottleneck
    on cat([context, pixels]) (context first).

    Args:
        in_channels: channels of the pixel features and of the object representations.
        channels: channels of the key/query/value projections (mmseg's `ocr_channels`).
        scale: max-pool kernel that downsamples the queries (1: none).
    """

    def __init__(self, in_channels: int, channels: int, scale: int = 1):
        super().__init__()
        self.channels = channels
        self.query_downsample = nn.MaxPool2d(kernel_size=scale) if scale > 1 else None
        self.key_project = _project(in_channels, channels, 2)
        self.query_project = _project(in_channels, channels, 2)
        self.value_project = _project(in_channels, channels, 1)
        self.out_project = _project(channels, in_channels, 1)
        self.bottleneck = ConvModule(in_channels * 2, in_channels, 1)

    def fuse_for_inference(self) -> None:
        """out_project's conv runs before the attention mixing, so its ReLU must not be fused into it."""
        from ctxseg.models.layers import FusedConv2d, foldable

        proj = self.out_project
        if foldable(proj.bn):
            proj.conv, proj.bn = FusedConv2d(proj.conv, proj.bn, relu=False), nn.Identity()

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        n = query_feats.shape[0]
        query = self.query_project(query_feats)
        if self.query_downsample is not None:
            query = self.query_downsample(query)
        q_hw = query.shape[2:]
        query = query.reshape(n, self.channels, -1).transpose(1, 2)  # N, HW, c
        key = self.key_project(key_feats).reshape(n, self.channels, -1)  # N, c, K
        value = self.value_project(key_feats).reshape(n, self.channels, -1).transpose(1, 2)  # N, K, c
        sim = (torch.bmm(query, key) * self.channels**-0.5).softmax(dim=-1)
        proj = self.out_project  # ConvModule: its conv runs on the K values, BN + ReLU after mixing
        k = value.shape[1]
        value = proj.conv(value.transpose(1, 2).reshape(n, self.channels, k, 1)).reshape(n, -1, k).transpose(1, 2)
        # (N, HW, C) viewed as an NCHW tensor with channels-last strides; view + permute (not
        # transpose + reshape) so that N's stride is H*W*C even when N == 1: torch.cat and the
        # convolutions only treat a tensor as channels-last when every stride says so, otherwise
        # the concat below falls back to a slow transposing copy into NCHW that the next
        # convolution re-lays out (measured: ~18% of a whole 512x1024 inference forward)
        context = torch.bmm(sim, value).view(n, *q_hw, value.shape[2]).permute(0, 3, 1, 2)
        context = proj.activate(proj.bn(context))
        if self.query_downsample is not None:
            context = resize(context, query_feats.shape[2:])
        return self.bottleneck(torch.cat([context, query_feats], dim=1))


class OCRHead(DecodeHead):
    """forward -> {"logits": OCR logits, "feats": object context, "aux_logits": region logits}.

    mmseg's two-stage cascade (decode_head.0 = FCN region head, decode_head.1 = OCRHead) in one head.

    Args:
        in_channels: channels of every backbone output (injected by the builder).
        num_classes: number of classes (injected: data.num_classes).
        channels: channels of the pixel representation (the 3x3 bottleneck) and of the object context.
        ocr_channels: channels of the object attention's key/query/value projections.
        scale: SpatialGatherModule's score scale and ObjectAttentionBlock's query downsampling.
        in_index: which backbone output(s) the head reads (HRNet: all four with "resize_concat").
        input_transform: see InputSelector.
        dropout_ratio: Dropout2d probability before the classifier.
        region_head: arguments of the FCN region head (the cascade's first stage; `type` may only be
            "fcn"); in_channels, num_classes and align_corners are this head's.
        region_second_forward: in training, run the region head a second time without gradient, as
            mmseg's CascadeEncoderDecoder (1.x and the 0.x CAC fork) does: decode_head.0 runs once for
            its loss and once more for the OCR stage's input, so its BatchNorm running statistics take
            two momentum updates per iteration (same outputs and gradients). false: one update.
        align_corners: `align_corners` of the bilinear resizes (injected: model.align_corners).
    """

    def __init__(
        self,
        *,
        in_channels,
        num_classes: int,
        channels: int = 512,
        ocr_channels: int = 256,
        scale: int = 1,
        in_index: int | list[int] = -1,
        input_transform: str | None = None,
        dropout_ratio: float = 0.1,
        region_head: dict[str, Any] | None = None,
        region_second_forward: bool = True,
        align_corners: bool = False,
    ):
        super().__init__(
            in_channels=in_channels,
            channels=channels,
            num_classes=num_classes,
            in_index=in_index,
            input_transform=input_transform,
            dropout_ratio=dropout_ratio,
            align_corners=align_corners,
        )
        # cascade stage 0 (mmseg decode_head.0): an FCNHead on the same backbone outputs
        region_cfg = dict(region_head or {})
        if region_cfg.pop("type", "fcn") != "fcn":
            raise UserError('model.head.region_head: the OCR cascade\'s first stage must be an FCN head (type = "fcn")')
        try:
            self.region_head = FCNHead(
                in_channels=in_channels, num_classes=num_classes, align_corners=align_corners, **region_cfg
            )
        except TypeError as e:
            raise UserError(f"model.head.region_head: {e}") from None
        self.ocr_channels = ocr_channels
        self.region_second_forward = region_second_forward
        self.bottleneck = ConvModule(self.in_channels, channels, 3, padding=1)
        self.spatial_gather_module = SpatialGatherModule(scale)
        self.object_context_block = ObjectAttentionBlock(channels, ocr_channels, scale)

    def _shares_input(self) -> bool:
        r = self.region_head
        return type(r) is FCNHead and (r.in_index, r.input_transform, r.align_corners) == (
            self.in_index,
            self.input_transform,
            self.align_corners,
        )

    def features(
        self,
        inputs: list[torch.Tensor],
        region_logits: torch.Tensor | None = None,
        selected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if selected is None:
            selected = self.select(inputs)
        if region_logits is None:
            region_logits = self._region_logits(inputs, selected)
        pixels = self.bottleneck(selected)
        objects = self.spatial_gather_module(pixels, region_logits)
        return self.object_context_block(pixels, objects)

    def _region_logits(self, inputs: list[torch.Tensor], selected: torch.Tensor) -> torch.Tensor:
        if self._shares_input():
            return self.region_head.cls_seg(self.region_head.features_of_selected(selected))
        return self.region_head(inputs)["logits"]

    def forward(self, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        selected = self.select(inputs)
        region_logits = self._region_logits(inputs, selected)
        if self.training and self.region_second_forward:
            with torch.no_grad():  # only its BatchNorm running statistics change (see region_second_forward)
                self._region_logits(inputs, selected)
        feats = self.features(inputs, region_logits, selected)
        return {"logits": self.cls_seg(feats), "feats": feats, "aux_logits": region_logits}
