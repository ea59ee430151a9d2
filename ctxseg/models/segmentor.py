"""Segmentor = backbone + decode head + optional auxiliary head + context plug-ins.

forward(images, targets=None) returns a dict (DESIGN.md):
  logits      decode-head logits at feature resolution (what inference upsamples)
  feats       the decode head's final feature map (input of its classifier)
  aux_logits  auxiliary-head logits (training, or when `with_aux=True`)
  ...         plug-in outputs (e.g. `embed` from a contrast projection, memory-stage logits)
Losses are computed from this dict by ctxseg.losses, so a context method is a plug-in (module +
loss terms + after-step hook), never a fork of the trainer.

Plug-in protocol (all optional methods on a plug-in module):
  forward(outputs, backbone_feats, targets) -> dict    adds/replaces outputs
  losses(outputs, targets, step) -> dict[str, Tensor]  extra weighted loss terms
  after_train_step(outputs, targets, step, lr, dist)   stateful updates (memory, queues)
Plug-in state lives in registered buffers, so it is checkpointed and exported with the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ctxseg.config import Recipe
from ctxseg.models.builder import build_component

PLUGIN_ORDER = ("memory", "cac", "contrast")


class Segmentor(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None,
                 plugins: dict[str, nn.Module] | None = None, num_classes: int = 0, align_corners: bool = False):
        super().__init__()
        self.backbone = backbone
        self.decode_head = head
        self.auxiliary_head = aux_head
        self.plugins = nn.ModuleDict(plugins or {})
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.with_aux = False  # force auxiliary logits in eval (tests, golden checks)

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feats = self.backbone(images)
        out = dict(self.decode_head(feats, **({"targets": targets} if getattr(self.decode_head, "wants_targets", False) else {})))
        if self.auxiliary_head is not None and (self.training or self.with_aux):
            out["aux_logits"] = self.auxiliary_head(feats)["logits"]
        for plugin in self.plugins.values():
            out.update(plugin(out, feats, targets))
        return out

    def plugin_losses(self, outputs: dict, targets: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for module in self.modules():
            if module is not self and hasattr(module, "losses") and callable(module.losses):
                terms.update(module.losses(outputs, targets, step))
        return terms

    @torch.no_grad()
    def after_train_step(self, outputs: dict, targets: torch.Tensor, step: int, lr: float, dist: Any = None) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "after_train_step"):
                module.after_train_step(outputs, targets, step, lr, dist)


def build_segmentor(recipe: Recipe) -> Segmentor:
    m = recipe.model
    num_classes = recipe.data.num_classes
    backbone = build_component("backbone", m.backbone)
    channels = backbone.out_channels
    common = dict(in_channels=channels, num_classes=num_classes, align_corners=m.align_corners)
    head = build_component("head", m.head, **common)
    aux = build_component("aux_head", m.aux_head, **common) if m.aux_head else None
    plugins = {}
    # each plug-in sees the module that currently owns the final classifier (`conv_seg`, fed by
    # outputs["feats"]): the decode head, or a plug-in that replaced it (MCIBI's stage-2 decoder),
    # so MCIBI -> CAC -> contrast compose without knowing each other
    classifier_owner = head
    for name in PLUGIN_ORDER:
        cfg = getattr(m, name)
        if cfg is not None:
            plugin = build_component(name, cfg, head=classifier_owner, num_classes=num_classes, align_corners=m.align_corners)
            plugins[name] = plugin
            classifier_owner = getattr(plugin, "classifier_owner", classifier_owner)
    return Segmentor(backbone, head, aux, plugins, num_classes, m.align_corners)
