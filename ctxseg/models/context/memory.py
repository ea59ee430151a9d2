"""MCIBI: a dataset-level feature memory as a context plug-in (sssegmentation's MCIBI, ICCV 2021).

Structure (names follow ssseg so the converter stays a table; ssseg's `memory_module.*` pieces are
flattened into this module):

  x           = head.select(backbone feats)           layer4, or HRNet's concatenated branches
  feats_ms    = head.features(...)                    the decode head's own within-image context
                                                       (ASPP, PPM, OCR object context); "none": unused
  memory_input= bottleneck(x)                         3x3 ConvModule; with use_context_within_image
                                                       = false the head's features ARE memory_input
  stage1      = decoder_stage1(memory_input)          supervised (x 0.4)
  aggregated  = softmax_k(stage1) @ memory[:, s]      per slot s (one-hot argmax if use_hard_aggregate)
  selected    = self_attentions[s](memory_input, aggregated)   (S > 1: fuse_memory_conv(cat))
  mem_out     = memory_bottleneck(cat[memory_input, selected])
  mem_out     = bottleneck_ms(cat[self_attention_ms(memory_input, feats_ms), mem_out])
  logits      = decoder_stage2(mem_out)               the final logits (x 1.0, the decode CE)

The decode head's own classifier is removed (its `conv_seg` becomes an identity): the plug-in's
decoder_stage2 is the classifier, and a classifier that never receives a gradient would break DDP.

Training: the memory (a registered buffer, K x S x C, zeros at start) is updated inside the train
forward, after both stages were computed with the old memory and before the losses, from
memory_input upsampled to the label size; the memory loss (decoder_stage2 classifying the stored
memory) therefore sees the updated memory, as in ssseg. The update works at feature resolution
(memory_ops: bilinear upsampling is linear, so the per-class sums over upsampled pixels are
matmuls of feature-resolution maps with per-class interpolation weights); the upsampled feature
map is never materialised. In distributed runs the memory is averaged across
processes after each update (ContextPlugin.synchronise_state, Accelerate's reduce).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxseg.errors import UserError
from ctxseg.losses.cross_entropy import at_least_float32, cross_entropy
from ctxseg.models.context.base import ContextPlugin
from ctxseg.models.context.memory_ops import class_statistics
from ctxseg.models.heads.base import ClassifierSlot
from ctxseg.models.layers import ConvModule, resize


class SelfAttentionBlock(nn.Module):
    """ssseg SelfAttentionBlock as MCIBI configures it: key/query 2 x (1x1 ConvModule), value 1 x,
    out_project 1 x; logits scaled by transform_channels ** -0.5, softmax over key positions.

    Args:
        in_channels: channels of the query and key/value inputs.
        transform_channels: channels of the key/query/value projections.
        out_channels: output channels of `out_project`.
    """

    def __init__(self, in_channels: int, transform_channels: int, out_channels: int):
        super().__init__()
        self.transform_channels = transform_channels
        self.key_project = nn.Sequential(
            ConvModule(in_channels, transform_channels, 1), ConvModule(transform_channels, transform_channels, 1)
        )
        self.query_project = nn.Sequential(
            ConvModule(in_channels, transform_channels, 1), ConvModule(transform_channels, transform_channels, 1)
        )
        self.value_project = ConvModule(in_channels, transform_channels, 1)
        self.out_project = ConvModule(transform_channels, out_channels, 1)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        b, _, h, w = query_feats.shape
        query = self.query_project(query_feats).flatten(2).transpose(1, 2)  # B, hw, T
        key = self.key_project(key_feats).flatten(2)  # B, T, hw'
        value = self.value_project(key_feats).flatten(2).transpose(1, 2)  # B, hw', T
        attn = torch.softmax(torch.bmm(query, key) * self.transform_channels**-0.5, dim=-1)
        context = torch.bmm(attn, value).transpose(1, 2).reshape(b, -1, h, w)
        return self.out_project(context)


class StageDecoder(nn.Module):
    """ssseg decoder_stage1/2: 1x1 ConvModule, Dropout2d, 1x1 classifier.

    Args:
        channels: input (and bottleneck) channels.
        num_classes: number of classes of the 1x1 classifier.
        dropout: Dropout2d probability before the classifier; 0 disables it.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.bottleneck = ConvModule(channels, channels, 1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.bottleneck(x)))


# ------------------------------------------------------------------------------------------------
# the memory update


@torch.no_grad()
def update_memory(
    memory: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    momentum: float,
    strategy: str = "cosine_similarity",
    ignore_index: int = 255,
    align_corners: bool = False,
    max_elements: int = 1 << 24,
) -> torch.Tensor:
    """ssseg FeaturesMemory.update, vectorised over classes; updates `memory` (K, S, C) in place.

    `features` [B, C, h, w] may be below the label resolution: they stand for their bilinear
    upsampling to the labels' size (F.interpolate, `align_corners`), which is never materialised
    (memory_ops.class_statistics). `max_elements` bounds the temporaries (at label size: channels x
    pixels per chunk; below it: rows x pixels).

    Per present class k: if one of its slots is all zeros, the first such slot is set to the plain
    mean of the class's pixels and nothing else happens for k this step. Otherwise
      mean:              m <- (1 - momentum) m + momentum * mean_i f_i                  (S == 1)
      cosine_similarity: pixels go to the slot of highest cosine similarity; per slot
                         m <- (1 - momentum) m + momentum * sum_i w_i f_i,
                         w_i = (1 - cos(f_i, m)) / sum_j (1 - cos(f_j, m)); a slot with no pixel
                         gets (1 - momentum) m (its weighted sum is empty).
    Labels equal to `ignore_index` or outside [0, K) are skipped.
    """
    k, s, c = memory.shape
    work = torch.promote_types(memory.dtype, torch.float32)  # float32, or float64 for a float64 memory
    mem = memory.to(work)
    cosine = strategy == "cosine_similarity"
    zero_slot = (mem == 0).all(dim=-1)  # K, S
    has_zero = zero_slot.any(dim=1)
    # cosine: weighted sums only for classes that take the momentum branch, plain sums only for
    # classes whose zero slot is initialised; mean: plain sums for every class
    weighted = ~has_zero if cosine else torch.zeros_like(has_zero)
    summed = has_zero if cosine else torch.ones_like(has_zero)
    st = class_statistics(features, labels, mem, weighted, summed, ignore_index, align_corners, max_elements)
    present = st.count > 0
    init = present & has_zero
    update = present & ~has_zero
    new = mem.clone()
    if cosine:
        agg = torch.where(st.den[:, None] > 0, st.num / st.den.clamp_min(1e-30)[:, None], torch.zeros_like(st.num))
        agg = agg.view(k, s, c).to(work)
    else:
        agg = (st.sums / st.count.clamp_min(1)[:, None]).to(work).unsqueeze(1).expand(k, s, c)
    new[update] = (1 - momentum) * mem[update] + momentum * agg[update]
    first_zero = zero_slot.float().argmax(dim=1)
    rows = init.nonzero().squeeze(1)
    new[rows, first_zero[rows]] = (st.sums[rows] / st.count[rows, None]).to(work)
    memory.copy_(new.to(memory.dtype))
    return memory


# ------------------------------------------------------------------------------------------------
# the plug-in


class MCIBIMemory(ContextPlugin):
    """MCIBI dataset-level memory (recipe `[[model.plugins]] type = "mcibi"`), see the module docstring.

    The keys mirror ssseg's head cfg: feats/transform/out channels, num_feats_per_cls, update_cfg
    (strategy, momentum_cfg base_momentum/base_lr/adjust_by_learning_rate), use_hard_aggregate,
    use_loss; context_within_image comes from the decode head (ASPP, PPM, OCR) or is off (FCN).

    Args:
        head: the decode head (injected by the builder): its input selection and features are used.
        classifier: the current classifier slot (injected); emptied (an identity), since decoder_stage2
            classifies.
        num_classes: number of classes K (injected: data.num_classes).
        align_corners: `align_corners` of the resizes (injected: model.align_corners).
        ignore_index: label value skipped by the memory update and the stage-1 CE (injected:
            data.ignore_index).
        feats_channels: memory / feature channels C; must equal the decode head's `channels`.
        transform_channels: channels of the self-attention projections.
        out_channels: channels of `memory_bottleneck` (must equal feats_channels with
            use_context_within_image).
        num_feats_per_cls: memory slots S per class (> 1 needs strategy "cosine_similarity").
        use_context_within_image: fuse the decode head's own context (ASPP, PPM, OCR) with the memory
            output (`self_attention_ms`, `bottleneck_ms`); False: the head's features are the memory input.
        use_hard_aggregate: aggregate the memory with one-hot argmax of the stage-1 logits instead of
            their softmax.
        strategy: memory update: "cosine_similarity" (weighted by 1 - cosine, per slot) or "mean".
        base_momentum: momentum of the memory update at base_lr.
        base_lr: learning rate at which the momentum is base_momentum.
        adjust_by_learning_rate: momentum = base_momentum / base_lr x the step's learning rate (ssseg).
        dropout: Dropout2d probability of both stage decoders.
        stage1_weight: weight of the stage-1 CE (0.4).
        use_memory_loss: add the memory loss (decoder_stage2 classifying the stored memory).
        memory_loss_weight: weight of the memory loss.
        memory_loss_start_epochs: the memory loss starts after this many epochs (ssseg: 1).
        memory_loss_start_iters: the memory loss starts at this iteration instead; None: from epochs.
        update_max_elements: bound on the memory update's temporaries (rows x pixels).
        official_aggregation_grad: reproduce ssseg's backward of the aggregation, which sees the memory
            after this step's in-forward update; False uses the memory the forward used.
    """

    default_name = "memory"  # state-dict prefix plugins.memory.* (the ssseg converter's table)
    synchronised_buffers = ("memory",)  # ssseg all-reduces the memory after every update

    def __init__(
        self,
        *,
        head: nn.Module,
        classifier: ClassifierSlot,
        num_classes: int,
        align_corners: bool = False,
        ignore_index: int = 255,
        feats_channels: int = 512,
        transform_channels: int = 256,
        out_channels: int = 512,
        num_feats_per_cls: int = 1,
        use_context_within_image: bool = True,
        use_hard_aggregate: bool = False,
        strategy: Literal["mean", "cosine_similarity"] = "cosine_similarity",
        base_momentum: float = 0.9,
        base_lr: float = 0.01,
        adjust_by_learning_rate: bool = True,
        dropout: float = 0.1,
        stage1_weight: float = 0.4,
        use_memory_loss: bool = True,
        memory_loss_weight: float = 1.0,
        memory_loss_start_epochs: float = 1.0,
        memory_loss_start_iters: int | None = None,
        update_max_elements: int = 1 << 24,
        official_aggregation_grad: bool = True,
    ):
        super().__init__()
        where = "model.plugins (mcibi)"
        if num_feats_per_cls < 1:
            raise UserError(f"{where}: num_feats_per_cls must be at least 1")
        if num_feats_per_cls > 1 and strategy != "cosine_similarity":
            raise UserError(f'{where}: num_feats_per_cls > 1 needs strategy = "cosine_similarity" (as ssseg)')
        head_channels = getattr(head, "channels", None)
        if head_channels != feats_channels:
            role = "within-image context" if use_context_within_image else "memory input"
            raise UserError(
                f"{where}: feats_channels = {feats_channels} must equal the decode head's channels "
                f"({head_channels}): the head's features are the {role}"
            )
        if use_context_within_image and out_channels != feats_channels:
            raise UserError(
                f"{where}: out_channels must equal feats_channels when use_context_within_image (ssseg's bottleneck_ms)"
            )
        self.num_classes, self.num_feats_per_cls = num_classes, num_feats_per_cls
        self.feats_channels, self.align_corners = feats_channels, align_corners
        self.use_context_within_image, self.use_hard_aggregate = use_context_within_image, use_hard_aggregate
        self.strategy, self.base_momentum, self.base_lr = strategy, base_momentum, base_lr
        self.adjust_by_learning_rate, self.ignore_index = adjust_by_learning_rate, ignore_index
        self.stage1_weight, self.use_memory_loss, self.memory_loss_weight = (
            stage1_weight,
            use_memory_loss,
            memory_loss_weight,
        )
        self.memory_loss_start_epochs, self.memory_loss_start_iters = memory_loss_start_epochs, memory_loss_start_iters
        self.update_max_elements = update_max_elements
        self.official_aggregation_grad = official_aggregation_grad
        # schedule, set by the trainer before every step (before_train_step); defaults for other loops
        self.lr: float | None = None
        self.iters_per_epoch: int | None = None

        # the classifier slot's module (the head's conv_seg) is emptied: decoder_stage2 classifies
        # (see module docstring), and the head then returns its features as logits
        classifier.replace(nn.Identity())
        # which backbone outputs the head reads: plain data, the head keeps its single owner
        self.select = head.input_selector()

        if use_context_within_image:
            self.bottleneck = ConvModule(head.in_channels, feats_channels, 3, padding=1)
        self.decoder_stage1 = StageDecoder(feats_channels, num_classes, dropout)
        self.register_buffer("memory", torch.zeros(num_classes, num_feats_per_cls, feats_channels))
        self.self_attentions = nn.ModuleList(
            SelfAttentionBlock(feats_channels, transform_channels, feats_channels) for _ in range(num_feats_per_cls)
        )
        if num_feats_per_cls > 1:
            self.fuse_memory_conv = ConvModule(feats_channels * num_feats_per_cls, feats_channels, 1)
        self.memory_bottleneck = ConvModule(feats_channels * 2, out_channels, 3, padding=1)
        if use_context_within_image:
            self.self_attention_ms = SelfAttentionBlock(feats_channels, transform_channels, feats_channels)
            self.bottleneck_ms = ConvModule(feats_channels + out_channels, out_channels, 3, padding=1)
        self.decoder_stage2 = StageDecoder(out_channels, num_classes, dropout)

    # --------------------------------------------------------------------------------------------
    def momentum(self) -> float:
        lr = self.base_lr if self.lr is None else self.lr
        return self.base_momentum / self.base_lr * lr if self.adjust_by_learning_rate else self.base_momentum

    def before_train_step(self, step: int, lr: float, iters_per_epoch: int | None = None) -> None:
        """Trainer hook: the learning rate of this step (momentum) and the epoch length (memory loss start)."""
        self.lr = lr
        if iters_per_epoch is not None:
            self.iters_per_epoch = iters_per_epoch

    def memory_loss_start(self) -> int:
        if self.memory_loss_start_iters is not None:
            return self.memory_loss_start_iters
        if self.iters_per_epoch is None:
            return 0  # no epoch length known (a custom loop): the loss is on from the start
        return math.ceil(self.memory_loss_start_epochs * self.iters_per_epoch)

    def aggregate(self, stage1_logits: torch.Tensor, slot: int) -> torch.Tensor:
        """Class-probability weighted memory per pixel: (B, K, h, w) -> (B, C, h, w)."""
        weights = stage1_logits.softmax(dim=1)
        if self.use_hard_aggregate:
            weights = torch.zeros_like(weights).scatter_(1, weights.argmax(dim=1, keepdim=True), 1.0)
        memory = self.memory[:, slot]
        if not self.official_aggregation_grad:
            memory = memory.clone()  # backward sees the memory this forward used
        return torch.einsum("bkhw,kc->bchw", weights, memory.to(weights.dtype))

    def forward(self, outputs: dict, backbone_feats: list[torch.Tensor], targets: torch.Tensor | None = None) -> dict:
        if self.use_context_within_image:
            feats_ms = outputs["feats"]
            memory_input = self.bottleneck(self.select(backbone_feats))
        else:
            feats_ms, memory_input = None, outputs["feats"]
        stage1 = self.decoder_stage1(memory_input)
        selected = [att(memory_input, self.aggregate(stage1, s)) for s, att in enumerate(self.self_attentions)]
        selected = self.fuse_memory_conv(torch.cat(selected, dim=1)) if len(selected) > 1 else selected[0]
        mem_out = self.memory_bottleneck(torch.cat([memory_input, selected], dim=1))
        if feats_ms is not None:
            mem_out = self.bottleneck_ms(torch.cat([self.self_attention_ms(memory_input, feats_ms), mem_out], dim=1))
        # stage 2 unrolled so that `feats` is the input of the final classifier (the DecodeHead
        # contract that later classifier plug-ins such as CAC build on)
        final_feats = self.decoder_stage2.bottleneck(mem_out)
        logits = self.decoder_stage2.conv_seg(self.decoder_stage2.dropout(final_feats))
        if self.training and targets is not None:
            # ssseg order: both stages used the old memory; update before the losses are computed
            self.update(memory_input.detach(), targets)
        return {
            "logits": logits,
            "feats": final_feats,
            "memory_output": mem_out,
            "stage1_logits": stage1,
            "memory_input": memory_input,
        }

    def classifier_slot(self) -> ClassifierSlot:
        """decoder_stage2's `conv_seg` now makes the final logits from outputs["feats"]."""
        return ClassifierSlot(self.decoder_stage2, "conv_seg")

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Update from features at any resolution (upsampled to the labels band by band) and labels."""
        # through `.data`, as ssseg: the aggregation's saved view of the memory then holds the UPDATED
        # values when the backward runs (ssseg's gradient into decoder_stage1; official_aggregation_grad)
        # mixed precision: the memory stays fp32, so the update runs in fp32 outside autocast
        with torch.autocast(device_type=features.device.type, enabled=False):
            update_memory(
                self.memory.data,
                features.to(self.memory.dtype),
                labels,
                self.momentum(),
                self.strategy,
                self.ignore_index,
                self.align_corners,
                self.update_max_elements,
            )
        self.synchronise_state()

    def memory_loss(self) -> torch.Tensor:
        """decoder_stage2 classifies every stored memory entry (row k*S + s has target k); CE mean."""
        k, s, c = self.memory.shape
        logits = self.decoder_stage2(self.memory.reshape(k * s, c, 1, 1)).reshape(k * s, -1)
        target = torch.arange(k, device=logits.device).repeat_interleave(s)
        return F.cross_entropy(at_least_float32(logits), target)

    def losses(self, outputs: dict, targets: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.stage1_weight > 0 and "stage1_logits" in outputs:
            logits = at_least_float32(resize(outputs["stage1_logits"], targets.shape[-2:], self.align_corners))
            terms["loss_cls_stage1"] = self.stage1_weight * cross_entropy(
                logits, targets, self.ignore_index, avg_non_ignore=True
            )
        if self.use_memory_loss and self.memory_loss_weight > 0 and step >= self.memory_loss_start():
            terms["loss_memory"] = self.memory_loss_weight * self.memory_loss()
        return terms
