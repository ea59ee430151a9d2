"""Segmentor = backbone + decode head + optional auxiliary head + context plug-ins.

forward(images, targets=None) returns a dict (DESIGN.md):
  logits      decode-head logits at feature resolution (what inference upsamples)
  feats       the decode head's final feature map (input of its classifier)
  aux_logits  auxiliary-head logits (training, or when `with_aux=True`)
  ...         plug-in outputs (e.g. `embed` from a contrast projection, memory-stage logits)
Losses are computed from this dict by ctxseg.losses, so a context method is a plug-in (module +
loss terms + train-step hooks), never a fork of the trainer. The plug-in contract is
ctxseg.models.context.base.ContextPlugin; the hooks are called on `self.plugins` only, in the
recipe's order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ctxseg.models.builder import DataFacts, build_component, plugin_name

if TYPE_CHECKING:
    from ctxseg.config import Recipe


class Segmentor(nn.Module):
    """Backbone + decode head + optional auxiliary head + context plug-ins (see the module docstring).

    Build one from a recipe with `build_segmentor`.

    Args:
        backbone: maps images [N, 3, H, W] to a list of feature maps (`out_channels` lists their channels).
        head: the decode head; returns a dict with `logits` (and `feats`) at feature resolution.
        aux_head: auxiliary head on the same features, run in training (or with `with_aux`); None: none.
        plugins: context plug-ins (ContextPlugin) by name, applied and hooked in this order.
        num_classes: number of classes of the logits.
        align_corners: `align_corners` of the bilinear resizes (kept for inference and export).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        plugins: dict[str, nn.Module] | None = None,
        num_classes: int = 0,
        align_corners: bool = False,
    ):
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
        out = dict(self.decode_head(feats))
        if self.auxiliary_head is not None and (self.training or self.with_aux):
            out["aux_logits"] = self.auxiliary_head(feats)["logits"]
        for plugin in self.plugins.values():
            out.update(plugin(out, feats, targets))
        return out

    def plugin_losses(self, outputs: dict, targets: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for plugin in self.plugins.values():
            terms.update(plugin.losses(outputs, targets, step))
        return terms

    def before_train_step(self, step: int, lr: float, iters_per_epoch: int | None = None) -> None:
        for plugin in self.plugins.values():
            plugin.before_train_step(step, lr, iters_per_epoch)

    @torch.no_grad()
    def after_train_step(self, outputs: dict, targets: torch.Tensor, step: int, lr: float) -> None:
        for plugin in self.plugins.values():
            plugin.after_train_step(outputs, targets, step, lr)


def data_facts(recipe: Recipe) -> DataFacts:
    """The one place data facts are read from a recipe for every component."""
    return DataFacts(
        num_classes=recipe.data.num_classes,
        ignore_index=recipe.data.ignore_index,
        align_corners=recipe.model.align_corners,
    )


def build_segmentor(recipe: Recipe) -> Segmentor:
    m = recipe.model
    facts = data_facts(recipe)
    common = dict(num_classes=facts.num_classes, ignore_index=facts.ignore_index, align_corners=facts.align_corners)
    backbone_cfg = dict(m.backbone)
    if backbone_cfg.get("pretrained") == "official":  # the recipe's own official init (registry lookup)
        from ctxseg.models.backbones.pretrained import resolve_official

        backbone_cfg["pretrained"] = resolve_official("official", recipe.name)
    backbone = build_component("backbone", backbone_cfg)
    channels = backbone.out_channels
    head = build_component("head", m.head, in_channels=channels, **common)
    aux = build_component("aux_head", m.aux_head, in_channels=channels, **common) if m.aux_head else None
    # plug-ins compose in recipe order; each sees the classifier slot that currently makes the final
    # logits from outputs["feats"]: the decode head's, or one a plug-in before took over (MCIBI's
    # stage-2 decoder), so MCIBI -> CAC -> contrast compose without knowing each other
    plugins: dict[str, nn.Module] = {}
    classifier = head.classifier_slot()
    for cfg in m.plugins:
        plugin = build_component("plugin", cfg, in_channels=channels, head=head, classifier=classifier, **common)
        plugins[plugin_name(cfg)] = plugin
        classifier = plugin.classifier_slot() or classifier
    return Segmentor(backbone, head, aux, plugins, facts.num_classes, facts.align_corners)
