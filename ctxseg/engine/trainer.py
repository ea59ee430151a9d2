"""The training loop: plain Accelerate (CPU, one or many GPUs, many nodes, fp16/bf16).

Determinism and exact resume come from three choices: the data order and every augmentation
are functions of (seed, stream position) (TrainBatchSampler); the learning rate is a pure
function of the step; and the resume state stores optimizer, step and every RNG state per rank.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ctxseg.config import Recipe, to_toml
from ctxseg.data.check import check_labels
from ctxseg.data.dataset import SegDataset, TrainBatchSampler, collate
from ctxseg.data.index import PreparedIndex
from ctxseg.engine import checkpoint as ckpt
from ctxseg.engine.evaluate import evaluate
from ctxseg.engine.settings import InferenceSettings
from ctxseg.engine.runs import iteration_checkpoints, new_run_dir, set_latest
from ctxseg.errors import UserError
from ctxseg.io import write_text
from ctxseg.losses import Criterion
from ctxseg.metrics import summarize
from ctxseg.models.segmentor import build_segmentor


# tests set this to simulate a job killed (SIGKILL) right after the checkpoint of that step
_FAULT_AT_STEP = int(os.environ.get("CTXSEG_FAULT_AT_STEP", "0"))


class TrainingDiverged(UserError):
    pass


def total_iters(recipe: Recipe, num_train: int, world: int) -> int:
    """Iterations from `train.iters`, or from `train.epochs` x train split / global batch."""
    if recipe.train.epochs is not None:
        global_batch = recipe.data.batch_size * world * recipe.train.grad_accum
        return max(1, math.ceil(recipe.train.epochs * num_train / global_batch))
    return int(recipe.train.iters)


def lr_at(step: int, total: int, recipe: Recipe) -> float:
    """Poly (power, min_lr) with optional linear warmup, as mmseg's PolyLR + LinearLR."""
    opt, s = recipe.train.optimizer, recipe.train.schedule
    if s.policy == "constant":
        lr = opt.lr
    else:
        lr = (opt.lr - s.min_lr) * (1 - step / total) ** s.power + s.min_lr
    if s.warmup_iters and step < s.warmup_iters:
        lr *= s.warmup_ratio + (1 - s.warmup_ratio) * step / s.warmup_iters
    return lr


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """Per-parameter lr/decay multipliers: heads x head_lr_mult, no decay on norms/biases, custom keys."""
    opt = recipe.train.optimizer
    norm_types = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    no_decay = set()
    if opt.no_decay_norm_bias:
        for mod in model.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, norm_types) or name == "bias":
                    no_decay.add(id(p))
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult = 1.0 if name.startswith("backbone.") else opt.head_lr_mult
        decay_mult = 0.0 if id(p) in no_decay else 1.0
        for key, mult in opt.custom_keys.items():
            if key in name:
                lr_mult = mult.get("lr_mult", lr_mult)
                decay_mult = mult.get("decay_mult", decay_mult)
        groups.setdefault((lr_mult, decay_mult), []).append(p)
    return [{"params": ps, "lr_mult": lm, "weight_decay": opt.weight_decay * dm} for (lm, dm), ps in groups.items()]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    opt = recipe.train.optimizer
    groups = param_groups(model, recipe)
    if opt.type == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    run_dir: Path
    best_miou: float | None
    final_step: int


class Trainer:
    def __init__(self, recipe: Recipe, runs_dir: Path, resume: Path | None = None, mixed_precision: str | None = None,
                 progress: bool = True, eval_limit: int | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.recipe = recipe
        tr = recipe.train
        log_with = ["tensorboard"] if tr.tensorboard else None
        self.acc = Accelerator(mixed_precision=mixed_precision or tr.mixed_precision, gradient_accumulation_steps=tr.grad_accum,
                               cpu=not torch.cuda.is_available(), log_with=log_with,
                               project_dir=str(runs_dir) if log_with else None)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        set_seed(tr.seed, deterministic=tr.deterministic)
        if tr.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.index = PreparedIndex.open(recipe.data.root)
        self._check_meta()
        self.train_set = SegDataset(self.index, recipe.data.train_split, recipe.data, train=True)
        self.total = total_iters(recipe, len(self.train_set), self.world)
        self.progress = progress and self.acc.is_main_process
        self.eval_limit = eval_limit

        model = build_segmentor(recipe)
        # SyncBN only where it can run: several processes on GPUs. A one-process run (where SyncBN
        # crashes) and CPU/gloo runs (torch's SyncBN is GPU-only) keep plain per-process BatchNorm.
        if recipe.model.norm == "SyncBN" and self.world > 1 and self.acc.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.step = 0
        resume_state = None
        if resume is not None:
            weights, _, extra = ckpt.read_checkpoint(resume)
            model.load_state_dict(weights)
            resume_state = ckpt.load_state(resume.with_suffix(".state.pt"))
            self.step = int(resume_state["step"])
            self.run_dir = resume.parent.parent
            self.best = resume_state.get("best_miou")
        else:
            self.run_dir = self._new_run(runs_dir)
            self.best = None
        optimizer = build_optimizer(model, recipe)
        if resume_state is not None:
            optimizer.load_state_dict(resume_state["optimizer"])
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.criterion = Criterion(recipe, self.index.meta.get("class_pixel_counts")).to(self.acc.device)
        self._resume_rng = resume_state["rng"][min(self.rank, len(resume_state["rng"]) - 1)] if resume_state else None
        if log_with:
            self.acc.init_trackers(self.run_dir.name)

    # ---------------------------------------------------------------------------------------
    def _check_meta(self) -> None:
        d, meta = self.recipe.data, self.index.meta
        if "num_classes" in meta and meta["num_classes"] != d.num_classes:
            raise UserError(f"Recipe has data.num_classes={d.num_classes} but {self.index.root} holds "
                            f"{meta['num_classes']} classes (set --set data.num_classes={meta['num_classes']})")
        if self.recipe.train.check_labels and self.acc.is_main_process:
            bad = check_labels(self.index, d.train_split, d.num_classes, d.ignore_index, d.reduce_zero_label)
            if bad:
                listing = "\n".join(f"  {p}: values {v[:8]}" for p, v in bad[:10])
                raise UserError(f"{len(bad)} training label file(s) hold values outside [0, {d.num_classes}) and the "
                                f"ignore index {d.ignore_index}:\n{listing}")

    def _new_run(self, runs_dir: Path) -> Path:
        if self.acc.is_main_process:
            run_dir = new_run_dir(self.recipe.name or "run", runs_dir)
            write_text(run_dir / "recipe.toml", to_toml(self.recipe.to_dict()) + "\n")
            set_latest(run_dir)
            name = [str(run_dir)]
        else:
            name = [None]
        if self.world > 1:
            torch.distributed.broadcast_object_list(name, src=0)
        return Path(name[0])

    def _loader(self) -> DataLoader:
        d = self.recipe.data
        weights = None
        if d.sampler != "uniform":
            from ctxseg.data.sampling import sample_weights  # repeat-factor / class-balanced

            weights = sample_weights(self.index, self.train_set, d)
        sampler = TrainBatchSampler(len(self.train_set), d.batch_size, self.recipe.train.seed, self.rank, self.world,
                                    start_batch=self.step * self.recipe.train.grad_accum, weights=weights)
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=d.num_workers, collate_fn=collate,
                          persistent_workers=d.num_workers > 0, pin_memory=torch.cuda.is_available())

    def log(self, record: dict) -> None:
        if self.acc.is_main_process:
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.recipe.train.tensorboard:
            self.acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def _check_replicas(self, core: nn.Module) -> None:
        """In multi-process runs, confirm every replica ends with the same weights and plug-in state
        (DDP keeps parameters in sync; memories and queues must sync themselves). BatchNorm running
        statistics are per process between DDP's buffer broadcasts, so they are not compared."""
        if self.world == 1:
            return
        digest = [float(t.double().sum()) for k, t in core.state_dict().items()
                  if t.is_floating_point() and not k.endswith(("running_mean", "running_var"))]
        gathered = [None] * self.world
        torch.distributed.all_gather_object(gathered, digest)
        identical = all(g == gathered[0] for g in gathered)
        self.log({"step": self.step, "replicas": self.world, "replicas_identical": identical})
        if not identical:
            raise UserError("Replicas diverged: processes hold different weights/buffers at the end of training")

    # ---------------------------------------------------------------------------------------
    def save(self, step: int) -> None:
        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.model)
        rngs = [rng_state()]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.acc.is_main_process:
            path = self.run_dir / "checkpoints" / f"iter_{step:07d}.safetensors"
            # the state file is written first: a weights file without its state is never picked for resume
            ckpt.save_state(path.with_suffix(".state.pt"), {"step": step, "optimizer": self.optimizer.state_dict(),
                                                            "rng": rngs, "best_miou": self.best})
            ckpt.save_weights(path, model, self.recipe, {"step": step})
            for old in iteration_checkpoints(self.run_dir)[: -self.recipe.train.keep_checkpoints]:
                old.unlink(missing_ok=True)
                old.with_suffix(".state.pt").unlink(missing_ok=True)
        self.acc.wait_for_everyone()

    def run_eval(self, step: int) -> float:
        model = self.acc.unwrap_model(self.model)
        settings = InferenceSettings.from_recipe(self.recipe, flip_pairs=self.index.flip_pairs)
        cm, _ = evaluate(model, self.recipe, self.index, self.recipe.data.val_split, settings, self.acc.device,
                         self.rank, self.world, limit=self.eval_limit)
        mat = cm.mat.to(self.acc.device)
        if self.world > 1:
            mat = self.acc.reduce(mat, reduction="sum")
        summary = summarize(mat.cpu().numpy(), self.index.classes)
        self.model.train()
        miou = summary["mIoU"]
        self.log({"step": step, "val/mIoU": miou, "val/aAcc": summary["aAcc"], "val/mAcc": summary["mAcc"]})
        if self.acc.is_main_process and (self.best is None or miou > self.best):
            self.best = miou
            ckpt.save_weights(self.run_dir / "best.safetensors", model, self.recipe, {"step": step, "mIoU": miou})
        self.acc.wait_for_everyone()
        return miou

    def train(self) -> TrainResult:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        tr = self.recipe.train
        self.model.train()
        loader = iter(self._loader())
        # RNG states are restored only now: creating the loader iterator draws worker seeds from the
        # global RNG, which the uninterrupted run did before its first step, not at this point
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        core = self.acc.unwrap_model(self.model)
        iters_per_epoch = max(1, math.ceil(len(self.train_set) / (self.recipe.data.batch_size * self.world * tr.grad_accum)))
        bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not self.progress)
        t0, it_times = time.time(), []
        with bar:
            task = bar.add_task("train", total=self.total, completed=self.step, info="")
            while self.step < self.total:
                t_step = time.time()
                lr = lr_at(self.step, self.total, self.recipe)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_mult", 1.0)
                # plug-ins that follow the schedule (MCIBI: momentum from the lr, memory loss after one epoch)
                core.before_train_step(self.step, lr, iters_per_epoch)
                terms_sum: dict[str, float] = {}
                for _ in range(tr.grad_accum):
                    batch = next(loader)
                    images = batch["image"].to(self.acc.device, non_blocking=True)
                    labels = batch["label"].to(self.acc.device, non_blocking=True)
                    with self.acc.accumulate(self.model), self.acc.autocast():
                        outputs = self.model(images, labels)
                        loss, terms = self.criterion(self.model, outputs, labels, self.step)
                        if not torch.isfinite(loss):
                            raise TrainingDiverged(
                                f"Loss became {float(loss)} at step {self.step} (terms: {terms}). Training stopped; the last "
                                f"good checkpoint is kept in {self.run_dir}. Lower train.optimizer.lr, check labels "
                                f"(`ctxseg prepare --check`), or try --mixed-precision bf16 instead of fp16.")
                        self.acc.backward(loss)
                        if tr.grad_clip and self.acc.sync_gradients:
                            self.acc.clip_grad_norm_(self.model.parameters(), tr.grad_clip)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    core.after_train_step(outputs, labels, self.step, lr)
                    for k, v in terms.items():
                        terms_sum[k] = terms_sum.get(k, 0.0) + v / tr.grad_accum
                self.step += 1
                it_times.append(time.time() - t_step)
                loss_value = sum(v for k, v in terms_sum.items() if not k.startswith("stat_"))
                bar.update(task, completed=self.step, info=f"loss {loss_value:.4f} lr {lr:.2e} {1 / np.mean(it_times[-20:]):.2f} it/s")
                if self.step % tr.log_interval == 0 or self.step == self.total:
                    eta = np.mean(it_times[-50:]) * (self.total - self.step)
                    self.log({"step": self.step, "lr": lr, "loss": loss_value, **terms_sum,
                              "time_per_iter": float(np.mean(it_times[-tr.log_interval:])), "eta_s": float(eta),
                              "elapsed_s": time.time() - t0})
                if self.step % tr.eval_interval == 0 or self.step == self.total:
                    self.run_eval(self.step)
                if self.step % tr.checkpoint_interval == 0 or self.step == self.total:
                    self.save(self.step)
                    if _FAULT_AT_STEP == self.step:  # test hook: die like a killed job, right after a checkpoint
                        os.kill(os.getpid(), signal.SIGKILL)
        self._check_replicas(core)
        if self.acc.is_main_process:
            ckpt.save_weights(self.run_dir / "final.safetensors", core, self.recipe, {"step": self.step})
        self.acc.wait_for_everyone()
        self.acc.end_training()
        return TrainResult(self.run_dir, self.best, self.step)
