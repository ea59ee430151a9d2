"""The context plug-in contract: one base class with documented no-op hooks.

A context method (MCIBI's memory, pixel contrast, CAC's classifier, or your own) is a
`ContextPlugin` registered under a recipe `type` (`ctxseg.models.builder.register_plugin`) and
listed in the recipe as `[[model.plugins]]`. The Segmentor calls the hooks below on its
`plugins` only, in recipe order; the trainer calls the train-step hooks on the Segmentor.

Hooks (all optional; the defaults do nothing):

  forward(outputs, backbone_feats, targets) -> dict
      Add or replace entries of the outputs dict (`logits`, `feats`, `embed`, ...). Runs in
      training AND inference: whatever it returns at eval time is what predict/eval/ONNX see.
  losses(outputs, targets, step) -> dict[str, Tensor]
      Extra, already weighted, loss terms. Names starting with `stat_` are logged, never summed.
  before_train_step(step, lr, iters_per_epoch)
      Called once per optimizer step, before its forward passes (schedules: MCIBI's momentum).
  after_train_step(outputs, targets, step, lr)
      Called after each forward/backward under no_grad (stateful updates: contrast queues).
  synchronise_state()
      Make process-replicated state equal on every process. The default averages the buffers
      named in `synchronised_buffers`; a plug-in calls it right after it changes that state.

Constructor: keyword-only arguments. Those named in `ctxseg.models.builder.INJECTED` (data facts
such as `num_classes`, `ignore_index`, `align_corners`, and build context such as `head`,
`classifier`, `in_channels`) are filled by the builder from one place (the recipe's `data` and
`model` sections); every other argument is a recipe key, validated against the signature.

State (memories, queues) lives in registered buffers, so it is checkpointed, resumed and
exported with the weights. Gathers and reductions across processes use Accelerate's utilities
(`gather_across_processes`, `mean_across_processes`), which are identities in one process.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _check_accelerate_state() -> None:
    """Accelerate's collectives do nothing unless its state knows the process group: say so loudly."""
    from accelerate import PartialState

    world = torch.distributed.get_world_size()
    if PartialState().num_processes != world:
        raise RuntimeError(
            f"torch.distributed runs {world} processes but Accelerate sees {PartialState().num_processes}: "
            "launch with `accelerate launch` or `torchrun` (RANK / WORLD_SIZE set) so plug-in state is synchronised"
        )


def gather_across_processes(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every process along dim 0 (Accelerate's `gather`); `t` in one process."""
    if not _distributed():
        return t
    from accelerate.utils import gather

    _check_accelerate_state()
    return gather(t.contiguous())


def mean_across_processes(t: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of `t` over every process (Accelerate's `reduce`); `t` in one process."""
    if not _distributed():
        return t
    from accelerate.utils import reduce

    _check_accelerate_state()
    return reduce(t, reduction="mean")


class ContextPlugin(nn.Module):
    """Base class of context plug-ins; see the module docstring for the contract.

    Class attributes:
        default_name: the plug-in's key in `Segmentor.plugins` (hence the state-dict prefix
            `plugins.<name>.`) when the recipe entry gives no `name`; None uses the recipe type.
        synchronised_buffers: buffers averaged over processes by `synchronise_state()`.
    """

    default_name: ClassVar[str | None] = None
    synchronised_buffers: ClassVar[tuple[str, ...]] = ()

    def forward(
        self, outputs: dict[str, torch.Tensor], backbone_feats: list[torch.Tensor], targets: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return {}

    def losses(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        return {}

    def before_train_step(self, step: int, lr: float, iters_per_epoch: int | None = None) -> None:
        return None

    def after_train_step(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor, step: int, lr: float) -> None:
        return None

    @torch.no_grad()
    def synchronise_state(self) -> None:
        for name in self.synchronised_buffers:
            buf = getattr(self, name)
            buf.data.copy_(mean_across_processes(buf.data))

    def classifier_slot(self):
        """The slot that makes the final logits from outputs["feats"] after this plug-in, when the
        plug-in took that role over (MCIBI's stage-2 decoder); None keeps the previous one."""
        return None
