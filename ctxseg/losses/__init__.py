"""Loss = decode-head CE (+OHEM) + auxiliary CE x aux_weight + every plug-in's loss terms."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from ctxseg.losses.cross_entropy import at_least_float32, cross_entropy, ohem_weights, seg_ce_term
from ctxseg.losses.upsampled_ce import upsampled_ce_weighted
from ctxseg.models.layers import resize

if TYPE_CHECKING:  # losses sit below the recipe layer (models import them)
    from ctxseg.config import Recipe


# the decode / auxiliary CE through the fused upsample + CE (False: always the label-size path; a
# switch for A/B measurements and debugging)
FUSED_CE = {"enabled": False}  # off: slower than the label-size path on the AVX2 EPYC (docs/benchmarks.md)


def inverse_log_frequency(counts: list[int]) -> list[float]:
    """openseg-style class weights from pixel frequencies: 1 / log(1.02 + freq), normalised to mean 1."""
    total = max(sum(counts), 1)
    w = [1.0 / math.log(1.02 + c / total) for c in counts]
    mean = sum(w) / len(w)
    return [x / mean for x in w]


class Criterion(nn.Module):
    """The training loss: decode-head CE (+OHEM) + auxiliary CE x aux_weight + every plug-in's loss terms.

    forward(model, outputs, target, step) returns (total, {term: value}); `stat_*` terms are logged,
    never summed.

    Args:
        recipe: the recipe; train.loss (weights, class weights, OHEM), data.ignore_index and
            model.align_corners (the logits' resize to the label size) are read.
        class_pixel_counts: per-class pixel counts of the train split (meta.json), for
            class_weight = "inverse_log_freq"; None: uniform counts.
    """

    def __init__(self, recipe: Recipe, class_pixel_counts: list[int] | None = None):
        super().__init__()
        lc = recipe.train.loss
        self.cfg = lc
        self.ignore_index = recipe.data.ignore_index
        self.align_corners = recipe.model.align_corners
        weight = lc.class_weight
        if weight == "inverse_log_freq":
            weight = inverse_log_frequency(class_pixel_counts or [1] * recipe.data.num_classes)
        self.register_buffer(
            "class_weight", torch.tensor(weight, dtype=torch.float32) if weight else None, persistent=False
        )

    def ce(self, logits: torch.Tensor, target: torch.Tensor, ohem: bool = False) -> torch.Tensor:
        """CE of `logits` resized to the label size. Feature-resolution logits take the fused path
        (ctxseg.losses.upsampled_ce: no label-size logit map, same values up to float rounding);
        labels already at the logits' size, FUSED_CE off, or labels out of range (torch's error)
        the label-size path."""
        use_ohem = ohem and self.cfg.ohem is not None
        if FUSED_CE["enabled"] and tuple(logits.shape[-2:]) != tuple(target.shape[-2:]) and not torch.jit.is_tracing():
            return self._fused_ce(logits, target, use_ohem)
        return self.label_size_ce(logits, target, ohem)

    def _fused_ce(self, logits: torch.Tensor, target: torch.Tensor, use_ohem: bool) -> torch.Tensor | None:
        if target.dim() == 4:
            target = target.squeeze(1)
        valid = target != self.ignore_index
        n = logits.shape[1]
        if bool((valid & ((target < 0) | (target >= n))).any()):  # torch's own error from the label-size path
            return self.label_size_ce(logits, target, use_ohem)
        cw = self.class_weight
        ohem = (self.cfg.ohem.thresh, self.cfg.ohem.min_kept) if use_ohem and self.cfg.ohem is not None else None
        total, weight_sum = upsampled_ce_weighted(
            logits if logits.dtype in (torch.float32, torch.float64) else logits.float(),
            target,
            self.align_corners,
            self.ignore_index,
            cw,
            ohem,
        )
        if cw is not None and self.cfg.class_weight_norm == "weights":
            return total / weight_sum.clamp(min=1e-12)
        if self.cfg.avg_non_ignore:
            return total / valid.sum().clamp(min=1)
        return total / target.numel()

    def label_size_ce(self, logits: torch.Tensor, target: torch.Tensor, ohem: bool = False) -> torch.Tensor:
        """The straightforward CE: logits upsampled to the label size, then mmseg's CrossEntropyLoss."""
        logits = at_least_float32(resize(logits, target.shape[-2:], self.align_corners))
        pw = None
        if ohem and self.cfg.ohem is not None:
            pw = ohem_weights(logits, target, self.cfg.ohem.thresh, self.cfg.ohem.min_kept, self.ignore_index)
        return cross_entropy(
            logits,
            target,
            self.ignore_index,
            self.class_weight,
            self.cfg.avg_non_ignore,
            pw,
            self.cfg.class_weight_norm,
        )

    def forward(self, model: nn.Module, outputs: dict, target: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        terms = {"loss_ce": self.cfg.decode_weight * self.ce(outputs["logits"], target, ohem=True)}
        if "aux_logits" in outputs and self.cfg.aux_weight > 0:
            aux = outputs["aux_logits"]
            if isinstance(aux, (list, tuple)):  # several auxiliary decoders (ssseg_aux): one term each
                for i, logits in enumerate(aux):
                    terms[f"loss_aux{i + 1}"] = self.cfg.aux_weight * self.ce(logits, target, ohem=True)
            else:
                terms["loss_aux"] = self.cfg.aux_weight * self.ce(aux, target, ohem=True)
        core = model.module if hasattr(model, "module") else model
        terms.update(core.plugin_losses(outputs, target, step))
        # `stat_*` terms are statistics (e.g. contrast steps skipped): logged, never summed
        total = sum(v for k, v in terms.items() if not k.startswith("stat_"))
        return total, {k: float(v.detach()) for k, v in terms.items()}


__all__ = ["Criterion", "cross_entropy", "ohem_weights", "seg_ce_term", "inverse_log_frequency"]
