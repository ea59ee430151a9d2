"""Optimizer and learning-rate schedule of a run, built from the recipe as the official code bases build them.

`build_optimizer(model, recipe)` groups the parameters (head lr multiplier, mmseg-style `custom_keys`
with mmengine's matching rule: the longest key contained in the full parameter name wins, alone) and
`build_scheduler(optimizer, recipe, total)` gives the lr of every param group at every iteration.
The Trainer uses exactly these two functions; tests/test_schedule_golden.py checks them, for every
bundled recipe, against the official optimizer constructors and schedulers over the full budget.

Two forms of the same poly schedule (`train.schedule.form`), differing in float rounding and in
where the decay starts after a warm-up:

* "mmengine" (mmsegmentation 1.x): LinearLR(start_factor=warmup_ratio, begin=0, end=warmup_iters)
  then PolyLR(eta_min=min_lr, power, begin=warmup_iters, end=total), both in mmengine's chainable
  form (each step multiplies the previous lr), so the decay runs over total - warmup_iters iterations
  and reaches min_lr at the last iteration.
* "mmcv" (mmcv 1.x hooks: the CAC fork; the same closed form as ContrastiveSeg's lambda_poly):
  lr = (lr0 - min_lr) * (1 - step / total) ** power + min_lr, times the linear warm-up factor
  1 - (1 - step / warmup_iters) * (1 - warmup_ratio) while step < warmup_iters. `min_lr` is absolute:
  a group with lr multiplier 0.1 still ends at min_lr.
* "ssseg" (sssegmentation's PolyScheduler.updatelr): the "mmcv" curve of the *base* lr, then each
  group's lr = its lr_multiplier x that value, so a x0.1 group ends at 0.1 x min_lr (e.g. MCIBI ViT-L's
  backbone: 1e-5, not 1e-4). Equal to "mmcv" for a run whose groups all have multiplier 1.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from ctxseg.config import Recipe


def iters_per_epoch(recipe: Recipe, num_train: int, world: int) -> int:
    """Iterations of one epoch, as sssegmentation's train loader counts them: every process reads
    ceil(num_train / world) samples (DistributedSampler) in full batches (drop_last=True).

    Args:
        recipe: the resolved recipe (data.batch_size per process, train.grad_accum).
        num_train: images in the train split.
        world: processes.
    """
    per_process = math.ceil(num_train / world)
    return max(1, per_process // (recipe.data.batch_size * recipe.train.grad_accum))


def total_iters(recipe: Recipe, num_train: int, world: int) -> int:
    """Iterations from `train.iters`, or `train.epochs` x iters_per_epoch (sssegmentation's max_iters).

    Args:
        recipe: the resolved recipe.
        num_train: images in the train split.
        world: processes.
    """
    if recipe.train.epochs is not None:
        return max(1, math.ceil(recipe.train.epochs * iters_per_epoch(recipe, num_train, world)))
    return int(recipe.train.iters)


def _custom_keys_in_match_order(custom_keys: dict) -> list[str]:
    # mmengine DefaultOptimWrapperConstructor / mmcv DefaultOptimizerConstructor: longest first, then alphabetical
    return sorted(sorted(custom_keys), key=len, reverse=True)


def param_multipliers(model: nn.Module, recipe: Recipe) -> dict[str, tuple[float, float]]:
    """Trainable parameter name -> (lr multiplier, weight-decay multiplier), as `build_optimizer` groups them.

    Args:
        model: the segmentor.
        recipe: the resolved recipe (train.optimizer: head_lr_mult, no_decay_norm_bias, custom_keys).
    """
    opt = recipe.train.optimizer
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    no_decay = set()
    if opt.no_decay_norm_bias:
        for mod in model.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, norm_types) or name == "bias":
                    no_decay.add(id(p))
    keys = _custom_keys_in_match_order(opt.custom_keys)
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult = 1.0 if name.startswith("backbone.") else opt.head_lr_mult
        decay_mult = 0.0 if id(p) in no_decay else 1.0
        for key in keys:  # the first (longest) matching key decides, alone
            if key in name:
                mult = opt.custom_keys[key]
                lr_mult = mult.get("lr_mult", lr_mult)
                decay_mult = mult.get("decay_mult", decay_mult)
                break
        out[name] = (lr_mult, decay_mult)
    return out


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """Parameter groups for torch.optim: one per distinct (lr multiplier, weight-decay multiplier).

    Args:
        model: the segmentor.
        recipe: the resolved recipe.
    """
    opt = recipe.train.optimizer
    named = dict(model.named_parameters())
    groups: dict[tuple[float, float], list] = {}
    for name, mults in param_multipliers(model, recipe).items():
        groups.setdefault(mults, []).append(named[name])
    return [
        {"params": ps, "lr": opt.lr * lm, "lr_mult": lm, "weight_decay": opt.weight_decay * dm, "decay_mult": dm}
        for (lm, dm), ps in groups.items()
    ]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The run's optimizer (SGD with momentum, or AdamW) over `param_groups(model, recipe)`.

    Args:
        model: the segmentor.
        recipe: the resolved recipe.
    """
    opt = recipe.train.optimizer
    groups = param_groups(model, recipe)
    if opt.type == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


@lru_cache(maxsize=64)
def _mmengine_curve(
    lr0: float, total: int, policy: str, power: float, min_lr: float, warmup: int, ratio: float, decay_end: int = 0
) -> tuple[float, ...]:
    """mmengine's chainable LinearLR + PolyLR, stepped once per iteration (ParamSchedulerHook);
    PolyLR ends at `decay_end` (0: the run's end), the lr staying where it got after that."""
    scheds = []  # (kind, begin, end)
    if warmup > 0:
        scheds.append(("linear", 0, min(warmup, total)))
    end = decay_end or total
    if policy == "poly" and warmup < end:
        scheds.append(("poly", warmup, end))
    out, lr = [], lr0
    for g in range(total):
        for kind, begin, end in scheds:
            if not begin <= g < end:
                continue
            last = g - begin
            n = end - begin - 1  # mmengine: total_iters = end - begin - 1
            if kind == "linear":
                if last == 0:
                    lr = lr * ratio
                else:
                    lr = lr * (1.0 + (1.0 - ratio) / (n * ratio + (last - 1) * (1.0 - ratio)))
            elif last != 0:
                lr = (lr - min_lr) * (1 - 1 / (n - last + 1)) ** power + min_lr
        out.append(lr)
    return tuple(out)


class LrSchedule:
    """The lr of every param group at every iteration: a pure function of the step (exact resume).

    Args:
        recipe: the resolved recipe (train.optimizer.lr, train.schedule).
        total: iterations of the run.
        initial_lrs: each param group's initial lr (base lr x the group's lr multiplier).
    """

    def __init__(self, recipe: Recipe, total: int, initial_lrs: list[float]):
        self.recipe, self.total = recipe, int(total)
        self.initial_lrs = list(initial_lrs)
        self.base = recipe.train.optimizer.lr

    def lr(self, step: int, lr0: float | None = None) -> float:
        """The lr at `step` of a group starting at lr0 (default: the recipe's base lr).

        Args:
            step: iteration (0-based).
            lr0: the group's initial lr.
        """
        s = self.recipe.train.schedule
        lr0 = self.base if lr0 is None else lr0
        if s.form == "mmengine":
            curve = _mmengine_curve(
                lr0, self.total, s.policy, s.power, s.min_lr, s.warmup_iters, s.warmup_ratio, s.decay_end
            )
            return curve[min(step, self.total - 1)]
        start = self.base if s.form == "ssseg" else lr0
        end = s.decay_end or self.total
        decay = (1 - min(step, end) / end) ** s.power
        lr = start if s.policy == "constant" else (start - s.min_lr) * decay + s.min_lr
        if s.warmup_iters and step < s.warmup_iters:
            k = (1 - step / s.warmup_iters) * (1 - s.warmup_ratio)
            lr = lr * (1 - k)
        return lr * (lr0 / self.base) if s.form == "ssseg" and self.base else lr  # the group's multiplier

    def group_lrs(self, step: int) -> list[float]:
        """The lr of each param group at `step`.

        Args:
            step: iteration (0-based).
        """
        return [self.lr(step, lr0) for lr0 in self.initial_lrs]

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for `step`; returns the base lr's value (what plug-ins follow).

        Args:
            optimizer: the optimizer built by `build_optimizer` (same group order).
            step: iteration (0-based).
        """
        for g, lr in zip(optimizer.param_groups, self.group_lrs(step), strict=True):
            g["lr"] = lr
        return self.lr(step)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total: int) -> LrSchedule:
    """The run's lr schedule over the optimizer's groups (initial lr = base lr x group lr_mult).

    Args:
        optimizer: the optimizer from `build_optimizer`.
        recipe: the resolved recipe.
        total: iterations of the run.
    """
    base = recipe.train.optimizer.lr
    return LrSchedule(recipe, total, [base * g.get("lr_mult", 1.0) for g in optimizer.param_groups])


def lr_at(step: int, total: int, recipe: Recipe) -> float:
    """The base lr's schedule at `step` (kept for callers of 0.2).

    Args:
        step: iteration (0-based).
        total: iterations of the run.
        recipe: the resolved recipe.
    """
    return LrSchedule(recipe, total, []).lr(step)
