"""CAC: context-aware classifier (Tian et al., "Learning Context-aware Classifier for Semantic
Segmentation", AAAI 2023; official code tianzhuotao/CAC, an mmseg 0.x fork).

A classifier plug-in for any DecodeHead that returns {"logits", "feats"} and owns `conv_seg`:

  test and train (the refined logits replace `logits`; the plain ones stay as `vanilla_logits`)
    p        = softmax_classes(vanilla logits)                       [B, n, HW]
    centres  = sum_hw p * feat / (sum_hw p + 1e-12)                  per image [B, n, C]
    proto    = proj(cat[centres, conv_seg.weight])                   Linear(2C,C/2,no bias)-ReLU-Linear(C/2,C)
    logits   = scale * cos(feat, proto)                              no bias, scale 15
  train only (the "oracle" / adaptive perspective from the ground truth)
    labels   = legacy-nearest resize of the labels to feature size
    rows     = batch-wide mean feat of each present class, conv_seg.weight.detach() for absent ones
    apd      = scale * cos(feat, apd_proj(cat[rows, conv_seg.weight]))
  losses (the main CE on the refined logits is the Criterion's decode term, weight decode_weight)
    pre_self = CE(vanilla logits)            bilinear align_corners=True to label size, mean over valid
    pre      = CE(apd)                       same
    kl       = class-wise, entropy-weighted soft CE of the refined logits against
               0.5 * softmax(apd.detach()) + 0.5 * onehot(labels), at feature resolution

The reference loops over classes in Python; here every per-class quantity is a one-hot matmul or
sum, so the cost does not grow with a Python loop and the eval path has no data-dependent control
flow (ONNX-exportable). Where the reference divides by zero (all pixels ignored, empty class list,
zero feature vectors in its OCR/DeepLabV3+ heads) this module stays finite; see docs/cac.md.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxseg.errors import UserError
from ctxseg.losses.upsampled_ce import upsampled_ce_sum
from ctxseg.models.context.base import ContextPlugin
from ctxseg.models.heads.base import ClassifierSlot

EPS = 1e-12  # every epsilon of the reference (centre denominators, L2, entropy log, class means)


def _mlp(channels: int) -> nn.Sequential:
    """proj / apd_proj of the reference (state-dict names .0.weight, .2.weight, .2.bias)."""
    return nn.Sequential(
        nn.Linear(channels * 2, channels // 2, bias=False), nn.ReLU(inplace=True), nn.Linear(channels // 2, channels)
    )


def l2_normalize(x: torch.Tensor, dim: int, mode: str = "eps") -> torch.Tensor:
    """'eps': x / (|x| + 1e-12) (reference FCN/UPer heads); 'bare': x / |x| (reference OCR and
    DeepLabV3+ heads, NaN on a zero vector); 'clamp': F.normalize, x / max(|x|, 1e-12)."""
    if mode == "clamp":
        return F.normalize(x, p=2.0, dim=dim, eps=EPS)
    norm = torch.linalg.vector_norm(x, ord=2, dim=dim, keepdim=True)
    return x / (norm + EPS) if mode == "eps" else x / norm


def _at_least_f32(x: torch.Tensor) -> torch.Tensor:
    """Losses in float32 under mixed precision (keeps float64 for checks)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class ContextAwareClassifier(ContextPlugin):
    """Recipe `[[model.plugins]] type = "cac"`: CAC's context-aware classifier (tianzhuotao/CAC).

    The classifier it builds on is the current classifier slot (the decode head's conv_seg, or
    MCIBI's decoder_stage2.conv_seg when MCIBI is listed before it): read, never owned, so its
    weights keep their state-dict keys. The main CE on the refined logits is
    train.loss.decode_weight (reference loss_weight 1.0).

    Args:
        classifier: the current classifier slot (injected by the builder); must be a 1x1 convolution.
        num_classes: number of classes (injected: data.num_classes).
        align_corners: `align_corners` of the model's resizes (injected: model.align_corners).
        ignore_index: label value ignored everywhere (injected: data.ignore_index).
        logit_scale: cosine-similarity scale of the refined logits (15).
        smoothness: weight of softmax(apd) in the KL target (0.5; the one-hot gets 1 - smoothness).
        label_eps: extra label smoothing of the KL target (reference `eps`; 0 = off).
        pre_self_weight: weight of the CE on the vanilla logits (1).
        pre_weight: weight of the CE on the adaptive-perspective logits (1).
        kl_weight: weight of the class-wise KL term (1).
        l2_mode: normalisation in the refined logits: "eps" (default; FCN/UPer reference, and finite
            everywhere), "bare" (literal OCR/DeepLabV3+ reference) or "clamp".
        label_resize: labels -> feature size: "nearest" (reference, legacy floor index) or
            "nearest-exact".
        pre_align_corners: `align_corners` of the bilinear upsampling in the pre_self / pre losses
            (reference: True).
    """

    default_name = "cac"  # state-dict prefix plugins.cac.* (the CAC converter's table)

    def __init__(
        self,
        *,
        classifier: ClassifierSlot,
        num_classes: int,
        align_corners: bool = False,
        ignore_index: int = 255,
        logit_scale: float = 15.0,
        smoothness: float = 0.5,
        label_eps: float = 0.0,
        pre_self_weight: float = 1.0,
        pre_weight: float = 1.0,
        kl_weight: float = 1.0,
        l2_mode: Literal["eps", "bare", "clamp"] = "eps",
        label_resize: Literal["nearest", "nearest-exact"] = "nearest",
        pre_align_corners: bool = True,
    ):
        super().__init__()
        if not classifier.is_linear():
            raise UserError(
                f"model.plugins (cac): CAC needs a 1x1 convolution in the classifier slot; "
                f"{type(classifier.owner).__name__}."
                f"{classifier.attr} is a {type(classifier.module).__name__}"
            )
        # a non-owning slot, not a submodule: the classifier's weights keep their keys (decode_head.*)
        self.classifier = classifier
        channels = classifier.in_channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.logit_scale = logit_scale
        self.smoothness = smoothness
        self.label_eps = label_eps
        self.weights = {"pre_self": pre_self_weight, "pre": pre_weight, "kl": kl_weight}
        self.l2_mode = l2_mode
        self.label_resize = label_resize
        self.pre_align_corners = pre_align_corners
        self.ignore_index = ignore_index
        self.proj = _mlp(channels)
        self.apd_proj = _mlp(channels)

    # ---------------------------------------------------------------------------------------
    # context-aware classifier (train and test)

    def classifier_weight(self) -> torch.Tensor:
        return self.classifier.weight()  # [n, C]

    def class_centres(self, feat: torch.Tensor, vanilla: torch.Tensor) -> torch.Tensor:
        """Per-image softmax-weighted class centres [B, n, C]."""
        b, c = feat.shape[:2]
        p = vanilla.reshape(b, vanilla.shape[1], -1).softmax(dim=1)  # over classes
        x = feat.reshape(b, c, -1).transpose(1, 2)  # B, HW, C
        return torch.bmm(p, x) / (p.sum(dim=-1, keepdim=True) + EPS)

    def context_prototypes(self, centres: torch.Tensor) -> torch.Tensor:
        w = self.classifier_weight()
        return self.proj(torch.cat([centres, w.unsqueeze(0).expand(centres.shape[0], -1, -1)], dim=-1))

    def cosine_logits(self, feat: torch.Tensor, proto: torch.Tensor) -> torch.Tensor:
        """scale * cos(feat, per-image proto [B, n, C]) -> [B, n, H, W]."""
        b, c, h, w = feat.shape
        p = l2_normalize(proto, -1, self.l2_mode)
        # cos = (p . x) / |x|: divide the [B, n, HW] scores by the pixel norms instead of
        # normalising the (larger) [B, C, HW] feature map; same value, one pass less over feat
        norm = torch.linalg.vector_norm(feat, ord=2, dim=1).reshape(b, 1, h * w)
        if self.l2_mode == "eps":
            norm = norm + EPS
        elif self.l2_mode == "clamp":
            norm = norm.clamp_min(EPS)
        scores = torch.bmm(p, feat.reshape(b, c, h * w)) / norm
        return (scores * self.logit_scale).reshape(b, -1, h, w)

    def refine(self, feat: torch.Tensor, vanilla: torch.Tensor) -> dict[str, torch.Tensor]:
        centres = self.class_centres(feat, vanilla)
        proto = self.context_prototypes(centres)
        return {"class_centres": centres, "proto": proto, "logits": self.cosine_logits(feat, proto)}

    # ---------------------------------------------------------------------------------------
    # adaptive perspective (training only; needs labels)

    def labels_down(self, targets: torch.Tensor, size) -> torch.Tensor:
        """Labels [B, H, W] (or [B, 1, H, W]) -> [B, h, w] int64 with the reference's resize."""
        y = targets if targets.dim() == 4 else targets.unsqueeze(1)
        return F.interpolate(y.float(), size=tuple(size), mode=self.label_resize).squeeze(1).long()

    def class_masks(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(valid [B,h,w] bool, one-hot of the valid pixels [B,h,w,n] float; ignore rows are zero)."""
        n = self.num_classes
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < n)
        onehot = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), n) * valid.unsqueeze(-1)
        return valid, onehot

    def apd_class_rows(self, feat: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-wide mean feature of each present class; absent classes keep conv_seg.weight.detach()."""
        c = feat.shape[1]
        oh = onehot.reshape(-1, onehot.shape[-1]).to(feat.dtype)  # BHW, n
        x = feat.permute(0, 2, 3, 1).reshape(-1, c)  # BHW, C
        counts = oh.sum(dim=0)
        means = (oh.t() @ x) / (counts.unsqueeze(1) + EPS)
        present = counts > 0
        rows = torch.where(present.unsqueeze(1), means, self.classifier_weight().detach().to(means.dtype))
        return rows, present

    def adaptive_perspective(self, feat: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        _, onehot = self.class_masks(labels)
        rows, present = self.apd_class_rows(feat, onehot)
        proto = self.apd_proj(torch.cat([rows, self.classifier_weight().to(rows.dtype)], dim=-1))
        weight = F.normalize(proto, p=2.0, dim=1, eps=EPS)[:, :, None, None]
        logits = F.conv2d(F.normalize(feat, p=2.0, dim=1, eps=EPS), weight.to(feat.dtype)) * self.logit_scale
        return {"class_rows": rows, "present": present, "proto": proto, "logits": logits}

    # ---------------------------------------------------------------------------------------
    # losses

    def kl_terms(self, refined: torch.Tensor, apd: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Entropy-aware class-wise distillation (reference get_distill_loss), vectorised."""
        refined, soft = _at_least_f32(refined), _at_least_f32(apd.detach())
        n = soft.shape[1]
        valid, onehot = self.class_masks(labels)
        onehot = onehot.to(refined.dtype)
        # ignore pixels get a one-hot on class 0 in the target (weight 0 below), as the reference
        target_onehot = onehot.clone()
        target_onehot[..., 0] += (~valid).to(refined.dtype)
        sm = soft.softmax(dim=1)
        smoothed = self.smoothness * sm + (1 - self.smoothness) * target_onehot.permute(0, 3, 1, 2)
        if self.label_eps > 0:
            smoothed = smoothed * (1 - self.label_eps) + (1 - smoothed) * self.label_eps / (n - 1)
        pixel = -(F.log_softmax(refined, dim=1) * smoothed).sum(dim=1)  # B, h, w
        entropy = -(sm * torch.log(sm + EPS)).sum(dim=1) * valid.to(refined.dtype)
        num = torch.einsum("bhw,bhwn->n", pixel * entropy, onehot)
        den = torch.einsum("bhw,bhwn->n", entropy, onehot)
        present = onehot.sum(dim=(0, 1, 2)) > 0
        per_class = num / (den + EPS)
        loss = (per_class * present).sum() / (present.sum() + EPS)
        return {
            "smoothed_label": smoothed,
            "entropy_mask": entropy,
            "per_class": per_class,
            "present": present,
            "loss": loss,
        }

    def pre_ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """torch CrossEntropyLoss(ignore_index) mean after align_corners=True upsampling; 0 when
        every pixel is ignored (torch would return NaN). The upsampled [B, n, H, W] map is never
        materialised (ctxseg.losses.upsampled_ce: same values up to float rounding)."""
        y = targets.squeeze(1) if targets.dim() == 4 else targets
        total = upsampled_ce_sum(_at_least_f32(logits), y, self.pre_align_corners, self.ignore_index)
        return total / (y != self.ignore_index).sum().clamp(min=1)

    # ---------------------------------------------------------------------------------------
    # plug-in protocol

    def forward(
        self, outputs: dict, backbone_feats=None, targets: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        feat, vanilla = outputs["feats"], outputs["logits"]
        out = {"logits": self.refine(feat, vanilla)["logits"], "vanilla_logits": vanilla}
        if self.training and targets is not None:
            labels = self.labels_down(targets, feat.shape[-2:])
            out["cac_labels"] = labels
            out["cac_apd_logits"] = self.adaptive_perspective(feat, labels)["logits"]
        return out

    def losses(self, outputs: dict, targets: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        if "cac_apd_logits" not in outputs:
            return {}
        apd = outputs["cac_apd_logits"]
        w = self.weights
        return {
            "loss_cac_pre_self": w["pre_self"] * self.pre_ce(outputs["vanilla_logits"], targets),
            "loss_cac_pre": w["pre"] * self.pre_ce(apd, targets),
            "loss_cac_kl": w["kl"] * self.kl_terms(outputs["logits"], apd, outputs["cac_labels"])["loss"],
        }
