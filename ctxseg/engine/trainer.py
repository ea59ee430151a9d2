"""The training loop: plain Accelerate (CPU, one or many GPUs, many nodes, fp16/bf16).

Determinism and exact resume come from three choices: the data order and every augmentation
are functions of (seed, stream position) (TrainBatchSampler); the learning rate is a pure
function of the step; and the resume state stores optimizer, step and every RNG state per rank.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ctxseg.config import Recipe, to_toml
from ctxseg.data.check import check_data
from ctxseg.data.dataset import SegDataset, TrainBatchSampler, collate
from ctxseg.data.index import PreparedIndex
from ctxseg.engine import checkpoint as ckpt
from ctxseg.engine.evaluate import evaluate
from ctxseg.engine.offline import build_for_loading
from ctxseg.engine.runs import iteration_checkpoints, new_run_dir, set_latest
from ctxseg.engine.schedule import (  # noqa: F401 (re-exported: callers of 0.2 import them from here)
    build_optimizer,
    build_scheduler,
    iters_per_epoch,
    lr_at,
    param_groups,
    total_iters,
)
from ctxseg.engine.settings import InferenceSettings
from ctxseg.errors import UserError
from ctxseg.io import remove_stale_temp_files, write_error, write_json, write_text
from ctxseg.losses import Criterion
from ctxseg.metrics import summarize
from ctxseg.models.norm import convert_sync_batchnorm
from ctxseg.models.segmentor import build_segmentor

# tests set this to simulate a job killed (SIGKILL) right after the checkpoint of that step
_FAULT_AT_STEP = int(os.environ.get("CTXSEG_FAULT_AT_STEP", "0"))


class TrainingDiverged(UserError):
    pass


def _global_grad_norm(parameters) -> float:
    """The 2-norm of all gradients together (what clip_grad_norm_ returns, before clipping)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _plugin_state(core: nn.Module) -> dict[str, torch.Tensor]:
    """The state of the context plug-ins after a step (a copy): every buffer a plug-in names in
    `synchronised_buffers` (MCIBI's memory bank), by state-dict key (`plugins.<name>.<buffer>`)."""
    out = {}
    for name, plugin in getattr(core, "plugins", {}).items():
        for buf in getattr(plugin, "synchronised_buffers", ()):
            out[f"plugins.{name}.{buf}"] = getattr(plugin, buf).detach().cpu().clone()
    return out


def batch_notice(recipe: Recipe, world: int) -> str | None:
    """A note when a paper recipe runs at another global batch than its paper: data.batch_size is per
    process, train.processes the paper's process count (None for the project's own recipes)."""
    paper = recipe.train.processes
    if paper is None or paper == world:
        return None
    b = recipe.data.batch_size
    return (
        f"note: {recipe.name} reproduces a run of {paper} processes x {b} images (global batch {paper * b}); "
        f"this run has {world} process(es) x {b} = global batch {world * b}. For the paper's batch, launch "
        f"{paper} processes, or set data.batch_size = {paper * b // world} if it divides (and fits in memory)."
    )


def channels_last_training(device: torch.device) -> bool:
    """Train in channels-last memory layout (model and images) where this machine runs it faster:
    measured once per CPU kind by ctxseg.engine.layout (on an AVX-512 Xeon channels-last was 6-24%
    faster per OCRNet step, on an AVX2 EPYC 9% slower). Same results up to float rounding."""
    from ctxseg.engine.layout import choose

    return choose(device, "train").channels_last


def to_training_layout(x: torch.Tensor | nn.Module, device: torch.device):
    """A model or an image batch in the layout training runs in on `device` (see channels_last_training)."""
    from ctxseg.engine.layout import to_layout

    return to_layout(x, channels_last_training(device))


def rng_state() -> dict:
    """Every RNG state as tensors and plain numbers, so the resume state loads with weights_only=True."""
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def launch_warning(world: int) -> str | None:
    """Warn when the launcher asked for more processes than joined (e.g. `accelerate launch
    --num_processes 2 --cpu`, which starts one process unless --multi_cpu is given)."""
    asked = int(os.environ.get("WORLD_SIZE", "0") or 0)
    try:  # the launcher is our parent: read what it was asked for
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        argv = []
    if any("accelerate" in a or "torchrun" in a or "torch.distributed.run" in a for a in argv[:3]):
        for i, a in enumerate(argv):
            for flag in ("--num_processes", "--num-processes", "--nproc_per_node", "--nproc-per-node"):
                value = (
                    a.split("=", 1)[1]
                    if a.startswith(flag + "=")
                    else (argv[i + 1] if a == flag and i + 1 < len(argv) else None)
                )
                if value and value.isdigit():
                    asked = max(asked, int(value))
    if world == 1 and asked <= 1 and os.environ.get("MASTER_PORT") and not os.environ.get("WORLD_SIZE"):
        asked = 2  # the launcher prepared a process group (MASTER_PORT) but only this process runs
    if asked > world:
        return (
            f"the launch asked for {asked} processes but {world} {'is' if world == 1 else 'are'} running "
            f"(with `accelerate launch --cpu`, add --multi_cpu; or use `torchrun --nproc_per_node {asked}`)"
        )
    return None


@contextmanager
def _without_autocast(model: nn.Module):
    """Run `model` in full precision for a while: Accelerate's mixed precision patches the model's
    forward with autocast; periodic evaluation uses the original forward, as `ctxseg eval` does,
    so the logged val mIoU is the one `ctxseg eval` reports for the saved weights."""
    patched, original = model.__dict__.get("forward"), model.__dict__.get("_original_forward")
    if patched is None or original is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = patched


@dataclass
class TrainResult:
    """What `Trainer.run` returns.

    Args:
        run_dir: the run folder (log.jsonl, best.safetensors, checkpoints/).
        best_miou: best validation mIoU of the run (as `summary["mIoU"]`); None when it never evaluated.
        final_step: the iteration the run stopped at.
    """

    run_dir: Path
    best_miou: float | None
    final_step: int


class Trainer:
    """One training run (Accelerate: one instance per process), from a recipe or resumed from a checkpoint.

    Args:
        recipe: the resolved recipe.
        runs_dir: folder in which a new run folder is created (and TensorBoard logs go).
        resume: an iteration checkpoint (checkpoints/iter_*.safetensors with its .state.pt) to continue
            in its own run folder; None: a new run.
        mixed_precision: "no", "fp16" or "bf16", overriding train.mixed_precision; None: the recipe's
            (or, when resuming, the precision the run used).
        progress: show a progress bar (main process only).
        eval_limit: evaluate on at most this many validation images (quick runs, tests); None: all.
        init: fine-tune: a ctxseg .safetensors checkpoint (or "official", the released model of the recipe's
            paper row) whose fitting tensors start the new run (ctxseg.engine.finetune); ignored when
            resuming. The plan is in `init_plan` and the run folder's init.json.
        batches: fixed batches ({"image": float NCHW, "label": NHW int64}) instead of the recipe's data,
            for step-by-step comparisons with the official training loops (tests/golden_train):
            micro-batch j of iteration i is batches[(i * grad_accum + j) % len(batches)]; no dataset
            is opened or checked, periodic and final evaluation are skipped, and an epoch is
            len(batches) iterations. None: the recipe's data.
        record_steps: keep one record per iteration in `self.step_records` (the lr and weight decay of
            every param group, every loss term, the global gradient norm before clipping, and the
            plug-ins' state after the step: `plugin_state`, e.g. MCIBI's memory bank).
    """

    def __init__(
        self,
        recipe: Recipe,
        runs_dir: Path,
        resume: Path | None = None,
        mixed_precision: str | None = None,
        progress: bool = True,
        eval_limit: int | None = None,
        init: str | Path | None = None,
        batches: list[dict] | None = None,
        record_steps: bool = False,
    ):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.recipe = recipe
        tr = recipe.train
        # resolved once: `runs/latest` may be re-pointed by a run started meanwhile
        resume = Path(resume).resolve() if resume is not None else None
        resume_state = ckpt.load_state(resume.with_suffix(".state.pt")) if resume is not None else None
        if resume_state is not None and mixed_precision is None:
            mixed_precision = resume_state.get("mixed_precision")  # resume in the precision the run used
        log_with = ["tensorboard"] if tr.tensorboard else None
        self.acc = Accelerator(
            mixed_precision=mixed_precision or tr.mixed_precision,
            gradient_accumulation_steps=tr.grad_accum,
            cpu=not torch.cuda.is_available(),
            log_with=log_with,
            project_dir=str(runs_dir) if log_with else None,
        )
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        set_seed(tr.seed, deterministic=tr.deterministic)
        if tr.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        # fine-tuning: the source is fetched (official) and checked against the architecture before
        # the data is scanned, so an incompatible --init costs seconds
        self.init_plan = None
        if init is not None and resume is None:
            from ctxseg.engine import finetune

            error, init_path = None, None
            # `official`: one process downloads, the others then find it cached; a failure is caught
            # inside, so no process waits at the barrier for one that stopped
            with self.acc.main_process_first():
                try:
                    init_path = finetune.resolve_init(init, recipe.name)
                except UserError as e:
                    error = e
            self._agree(error)
            self.init_plan = finetune.plan_init(recipe, init_path, str(init))  # the same verdict on every process
        self.fixed_batches = list(batches) if batches is not None else None
        self.step_records: list[dict] | None = [] if record_steps else None
        if self.fixed_batches is None:
            self.index = PreparedIndex.open(recipe.data.root)
            self._check_meta()
            self.train_set = SegDataset(self.index, recipe.data.train_split, recipe.data, train=True)
            num_train = len(self.train_set)
        else:
            self.index, self.train_set = None, None
            num_train = len(self.fixed_batches) * recipe.data.batch_size * self.world * tr.grad_accum
        self.num_train = num_train
        self.total = total_iters(recipe, num_train, self.world)
        notice = batch_notice(recipe, self.world)
        if notice and self.acc.is_main_process:
            print(notice, file=sys.stderr)
        self.progress = progress and self.acc.is_main_process
        self.eval_limit = eval_limit

        # a resumed run loads all weights from its checkpoint: no pretrained fetch (ctxseg.engine.offline)
        # (nor when fine-tuning: --init overwrites the backbone)
        model = build_segmentor(recipe) if resume is None and self.init_plan is None else build_for_loading(recipe)
        if self.init_plan is not None:
            from ctxseg.engine.finetune import apply_init

            apply_init(model, self.init_plan)
        # SyncBN only where it can run: several processes on GPUs. A one-process run (where SyncBN
        # crashes) and CPU/gloo runs (torch's SyncBN is GPU-only) keep plain per-process BatchNorm.
        if recipe.model.norm == "SyncBN" and self.world > 1 and self.acc.device.type == "cuda":
            model = convert_sync_batchnorm(model)  # backbones flagged keep_plain_bn stay BN
        self.step = 0
        if resume is not None:
            weights, _, extra = ckpt.read_checkpoint(resume)
            model.load_state_dict(weights)
            self.step = int(resume_state["step"])
            self.run_dir = resume.parent.parent
            self.best = resume_state.get("best_miou")
            self._clean_resumed_run()
        else:
            self.run_dir = self._new_run(runs_dir)
            self.best = None
            if self.init_plan is not None:
                error = None
                if self.acc.is_main_process:
                    try:
                        write_json(self.run_dir / "init.json", self.init_plan.to_dict())
                    except UserError as e:
                        error = e
                self._agree(error)
        from ctxseg.engine.allocator import AllocatorChoice, keep_freed_memory
        from ctxseg.engine.layout import choose

        self.layout = choose(self.acc.device, "train")  # measured once per machine, cached
        # CPU steps re-fault their freed activations otherwise (ctxseg.engine.allocator)
        self.allocator = (
            keep_freed_memory() if self.acc.device.type == "cpu" else AllocatorChoice("system", "not a CPU run")
        )
        model = to_training_layout(model, self.acc.device)
        optimizer = build_optimizer(model, recipe)
        self.schedule = build_scheduler(optimizer, recipe, self.total)
        if resume_state is not None:
            optimizer.load_state_dict(resume_state["optimizer"])
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        if resume_state is not None and resume_state.get("scaler") is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(resume_state["scaler"])  # fp16: the loss scale and its growth tracker
        counts = self.index.meta.get("class_pixel_counts") if self.index is not None else None
        self.criterion = Criterion(recipe, counts).to(self.acc.device)
        self._resume_rng = resume_state["rng"][min(self.rank, len(resume_state["rng"]) - 1)] if resume_state else None
        if log_with:
            self.acc.init_trackers(self.run_dir.name)

    def describe(self) -> str:
        """One line for the start of a run: how many processes, on what, in which precision."""
        return (
            f"{self.world} process{'es' if self.world > 1 else ''} on {self.acc.device.type}, "
            f"mixed precision {self.acc.mixed_precision}, {self.layout.name} layout ({self.layout.reason}), "
            f"allocator {self.allocator.name} ({self.allocator.reason}), "
            f"{self.total} iterations, run folder {self.run_dir}"
        )

    # ---------------------------------------------------------------------------------------
    # faults: every process reaches the same decision, so none waits forever in a collective

    def _agree(self, error: BaseException | str | None) -> None:
        """Called by every process at the same point. If any process hit a fault, all stop with its message."""
        if self.world == 1:
            if error is None:
                return
            raise error if isinstance(error, BaseException) else UserError(error)
        flag = torch.tensor([0.0 if error is None else 1.0], device=self.acc.device)
        torch.distributed.all_reduce(flag)
        if flag.item() == 0:
            return
        mine = (
            None
            if error is None
            else (type(error).__name__ if isinstance(error, BaseException) else "UserError", str(error))
        )
        gathered: list = [None] * self.world
        torch.distributed.all_gather_object(gathered, mine)
        if isinstance(error, BaseException):
            raise error  # a process that saw a fault keeps its own exception (a bug keeps its traceback)
        if error is not None:
            raise UserError(error)
        rank, (kind, message) = next((r, g) for r, g in enumerate(gathered) if g is not None)
        cls = TrainingDiverged if kind == "TrainingDiverged" else UserError
        raise cls(f"{message} (seen by process {rank} of {self.world})")

    def _last_good(self) -> str:
        ckpts = iteration_checkpoints(self.run_dir)
        if not ckpts:
            return f"no checkpoint was written before it (run folder {self.run_dir})"
        step = int(ckpts[-1].stem.split("_")[-1])
        return f"the last good checkpoint is {ckpts[-1]} (step {step})"

    def _ensure_finite(self, step: int) -> None:
        """Weights are only ever written when every parameter and buffer is finite."""
        state = {k: t for k, t in self.acc.unwrap_model(self.model).state_dict().items() if t.is_floating_point()}
        flags = (
            torch.stack([torch.isfinite(t).all() for t in state.values()]) if state else torch.ones(1, dtype=torch.bool)
        )
        bad = [] if bool(flags.all()) else [k for k, ok in zip(state, flags.tolist()) if not ok]  # one device sync
        error = None
        if bad:
            error = TrainingDiverged(
                f"Weights became non-finite (inf/NaN) at step {step} "
                f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                f"they were not saved and training stopped: {self._last_good()}. Lower train.optimizer.lr, set "
                f"train.grad_clip, or use --mixed-precision bf16 instead of fp16."
            )
        self._agree(error)

    # ---------------------------------------------------------------------------------------
    def _check_meta(self) -> None:
        d, meta = self.recipe.data, self.index.meta
        if "num_classes" in meta and meta["num_classes"] != d.num_classes:
            raise UserError(
                f"Recipe has data.num_classes={d.num_classes} but {self.index.root} holds "
                f"{meta['num_classes']} classes (train with --data {self.index.root} to adapt the recipe to it: "
                f"classes, ignore index, crop; or --set data.num_classes={meta['num_classes']})"
            )
        # every split the run will read, checked before the first step (each process checks its share)
        error = None
        try:
            problems = check_data(
                self.index,
                [d.train_split, d.val_split],
                d,
                full=self.recipe.train.check_labels,
                rank=self.rank,
                world=self.world,
                gather=self._gather_objects,
            )
            if problems:
                listing = "\n".join(f"  {p}" for p in problems[:10])
                more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
                error = UserError(
                    f"{len(problems)} problem(s) in the data this run needs (splits "
                    f"'{d.train_split}' and '{d.val_split}' of {self.index.root}):\n{listing}{more}\n"
                    f"Fix or remove these files (`ctxseg prepare --check`); nothing was trained."
                )
        except UserError as e:
            error = e
        self._agree(error)

    def _gather_objects(self, obj):
        if self.world == 1:
            return [obj]
        gathered = [None] * self.world
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def _new_run(self, runs_dir: Path) -> Path:
        result: list = [None]
        if self.acc.is_main_process:
            try:
                run_dir = new_run_dir(self.recipe.name or "run", runs_dir)
                write_text(run_dir / "recipe.toml", to_toml(self.recipe.to_dict()) + "\n")
                set_latest(run_dir)
                result = [str(run_dir)]
            except UserError as e:
                result = [e]
        if self.world > 1:
            torch.distributed.broadcast_object_list(result, src=0)
        if isinstance(result[0], BaseException):
            raise UserError(str(result[0]))
        return Path(result[0])

    def _clean_resumed_run(self) -> None:
        """Before resuming: drop temp files a killed write left, and log lines past the resumed step
        (the killed run logged them; the resumed run logs them again)."""
        if not self.acc.is_main_process:
            return
        remove_stale_temp_files(self.run_dir)
        log = self.run_dir / "log.jsonl"
        if log.is_file():
            kept = []
            for line in log.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line the kill cut short
                if int(record.get("step", 0)) <= self.step:
                    kept.append(line)
            write_text(log, "".join(k + "\n" for k in kept))

    def _fixed_loader(self):
        """The fixed batches, cycled, from the current step on (see `batches` in the class doc)."""
        n, i = len(self.fixed_batches), self.step * self.recipe.train.grad_accum
        while True:
            yield self.fixed_batches[i % n]
            i += 1

    def _loader(self) -> DataLoader:
        d = self.recipe.data
        weights = None
        if d.sampler != "uniform":
            from ctxseg.data.sampling import sample_weights  # repeat-factor / class-balanced

            weights = sample_weights(self.index, self.train_set, d)
        sampler = TrainBatchSampler(
            len(self.train_set),
            d.batch_size,
            self.recipe.train.seed,
            self.rank,
            self.world,
            start_batch=self.step * self.recipe.train.grad_accum,
            weights=weights,
        )
        return DataLoader(
            self.train_set,
            batch_sampler=sampler,
            num_workers=d.num_workers,
            collate_fn=collate,
            persistent_workers=d.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def log(self, record: dict) -> None:
        """Every process calls this at the same points; process 0 writes."""
        error = None
        if self.acc.is_main_process:
            path = self.run_dir / "log.jsonl"
            try:
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                error = write_error(path, e)
        self._agree(error)
        if self.recipe.train.tensorboard:
            self.acc.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def _check_replicas(self, core: nn.Module) -> None:
        """In multi-process runs, confirm every replica ends with the same weights and plug-in state
        (DDP keeps parameters in sync; memories and queues must sync themselves). BatchNorm running
        statistics are per process between DDP's buffer broadcasts, so they are not compared."""
        if self.world == 1:
            return
        digest = [
            float(t.double().sum())
            for k, t in core.state_dict().items()
            if t.is_floating_point() and not k.endswith(("running_mean", "running_var"))
        ]
        gathered = self._gather_objects(digest)
        identical = all(g == gathered[0] for g in gathered)
        self.log({"step": self.step, "replicas": self.world, "replicas_identical": identical})
        if not identical:
            raise UserError("Replicas diverged: processes hold different weights/buffers at the end of training")

    def _sync_buffers_from_main(self) -> None:
        """Give every process process 0's buffers (BatchNorm running statistics differ per process
        between DDP's broadcasts), so evaluation uses exactly the weights that are saved."""
        if self.world == 1:
            return
        for buf in self.acc.unwrap_model(self.model).buffers():
            torch.distributed.broadcast(buf.data, src=0)

    # ---------------------------------------------------------------------------------------
    def save(self, step: int) -> None:
        self._ensure_finite(step)
        model = self.acc.unwrap_model(self.model)
        rngs = self._gather_objects(rng_state())
        error = None
        if self.acc.is_main_process:
            path = self.run_dir / "checkpoints" / f"iter_{step:07d}.safetensors"
            try:
                # the state file is written first: a weights file without its state is never picked for resume
                ckpt.save_state(
                    path.with_suffix(".state.pt"),
                    {
                        "step": step,
                        "optimizer": self.optimizer.state_dict(),
                        "rng": rngs,
                        "best_miou": self.best,
                        "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
                        "mixed_precision": str(self.acc.mixed_precision),
                    },
                )
                ckpt.save_weights(path, model, self.recipe, {"step": step})
                for old in iteration_checkpoints(self.run_dir)[: -self.recipe.train.keep_checkpoints]:
                    old.unlink(missing_ok=True)
                    old.with_suffix(".state.pt").unlink(missing_ok=True)
            except UserError as e:
                error = e
        self._agree(error)

    def run_eval(self, step: int) -> float:
        self._ensure_finite(step)
        self._sync_buffers_from_main()
        model = self.acc.unwrap_model(self.model)
        settings = InferenceSettings.from_recipe(self.recipe, flip_pairs=self.index.flip_pairs)
        error, cm = None, None
        try:
            with _without_autocast(model):
                cm, _ = evaluate(
                    model,
                    self.recipe,
                    self.index,
                    self.recipe.data.val_split,
                    settings,
                    self.acc.device,
                    self.rank,
                    self.world,
                    limit=self.eval_limit,
                )
        except UserError as e:
            error = e
        self._agree(error)
        mat = cm.mat.to(self.acc.device)
        if self.world > 1:
            mat = self.acc.reduce(mat, reduction="sum")
        summary = summarize(mat.cpu().numpy(), self.index.classes)
        self.model.train()
        miou = summary["mIoU"]
        # eval_weights: which weights were evaluated (process 0's, the ones written to checkpoints)
        self.log(
            {
                "step": step,
                "val/mIoU": miou,
                "val/aAcc": summary["aAcc"],
                "val/mAcc": summary["mAcc"],
                "eval_weights": "process 0 (saved)" if self.world > 1 else "saved",
                "eval_precision": "fp32",
            }
        )
        error = None
        if self.acc.is_main_process and (self.best is None or miou > self.best):
            self.best = miou
            try:
                ckpt.save_weights(self.run_dir / "best.safetensors", model, self.recipe, {"step": step, "mIoU": miou})
            except UserError as e:
                error = e
        self._agree(error)
        return miou

    def _next_batch(self, loader) -> tuple[dict | None, BaseException | None]:
        try:
            batch = next(loader)
        except UserError as e:
            return None, e
        if "error" in batch:  # a data fault inside a loader worker (see SegDataset)
            return None, UserError(batch["error"])
        return batch, None

    def train(self) -> TrainResult:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        tr = self.recipe.train
        self.model.train()
        loader = iter(self._loader()) if self.fixed_batches is None else self._fixed_loader()
        # RNG states are restored only now: creating the loader iterator draws worker seeds from the
        # global RNG, which the uninterrupted run did before its first step, not at this point
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        core = self.acc.unwrap_model(self.model)
        epoch_iters = iters_per_epoch(self.recipe, self.num_train, self.world)
        bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not self.progress,
        )
        t0, it_times = time.time(), []
        with bar:
            task = bar.add_task("train", total=self.total, completed=self.step, info="")
            while self.step < self.total:
                t_step = time.time()
                lr = self.schedule.apply(self.optimizer, self.step)
                # plug-ins that follow the schedule (MCIBI: momentum from the lr, memory loss after one epoch)
                core.before_train_step(self.step, lr, epoch_iters)
                terms_sum: dict[str, float] = {}
                grad_norm = None
                for _ in range(tr.grad_accum):
                    # two agreements per micro-batch (data, then loss) so that no process enters
                    # DDP's collectives while another has stopped
                    batch, error = self._next_batch(loader)
                    self._agree(error)
                    images = to_training_layout(batch["image"].to(self.acc.device, non_blocking=True), self.acc.device)
                    labels = batch["label"].to(self.acc.device, non_blocking=True)
                    with self.acc.accumulate(self.model), self.acc.autocast():
                        outputs = self.model(images, labels)
                        loss, terms = self.criterion(self.model, outputs, labels, self.step)
                        error = None
                        if not bool(torch.isfinite(loss)):
                            error = TrainingDiverged(
                                f"Loss became {float(loss)} at step {self.step + 1} (terms: {terms}). "
                                f"Training stopped; "
                                f"{self._last_good()}. Lower train.optimizer.lr, check labels "
                                f"(`ctxseg prepare --check`), or try --mixed-precision bf16 instead of fp16."
                            )
                        self._agree(error)
                        self.acc.backward(loss)
                        if self.step_records is not None and self.acc.sync_gradients:
                            grad_norm = _global_grad_norm(self.model.parameters())
                        if tr.grad_clip and self.acc.sync_gradients:
                            self.acc.clip_grad_norm_(self.model.parameters(), tr.grad_clip)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    core.after_train_step(outputs, labels, self.step, lr)
                    for k, v in terms.items():
                        terms_sum[k] = terms_sum.get(k, 0.0) + v / tr.grad_accum
                if self.step_records is not None:
                    self.step_records.append(
                        {
                            "step": self.step,
                            "lr": [float(g["lr"]) for g in self.optimizer.param_groups],
                            "weight_decay": [float(g.get("weight_decay", 0.0)) for g in self.optimizer.param_groups],
                            "terms": dict(terms_sum),
                            "grad_norm": grad_norm,
                            "plugin_state": _plugin_state(core),
                        }
                    )
                self.step += 1
                it_times.append(time.time() - t_step)
                loss_value = sum(v for k, v in terms_sum.items() if not k.startswith("stat_"))
                bar.update(
                    task,
                    completed=self.step,
                    info=f"loss {loss_value:.4f} lr {lr:.2e} {1 / np.mean(it_times[-20:]):.2f} it/s",
                )
                if self.step % tr.log_interval == 0 or self.step == self.total:
                    eta = np.mean(it_times[-50:]) * (self.total - self.step)
                    self.log(
                        {
                            "step": self.step,
                            "lr": lr,
                            "loss": loss_value,
                            **terms_sum,
                            "time_per_iter": float(np.mean(it_times[-tr.log_interval :])),
                            "eta_s": float(eta),
                            "elapsed_s": time.time() - t0,
                        }
                    )
                if self.fixed_batches is None and (self.step % tr.eval_interval == 0 or self.step == self.total):
                    self.run_eval(self.step)
                if self.step % tr.checkpoint_interval == 0 or self.step == self.total:
                    self.save(self.step)
                    if _FAULT_AT_STEP == self.step:  # test hook: die like a killed job, right after a checkpoint
                        os.kill(os.getpid(), signal.SIGKILL)
        self._check_replicas(core)
        self._ensure_finite(self.step)
        error = None
        if self.acc.is_main_process:
            try:
                ckpt.save_weights(self.run_dir / "final.safetensors", core, self.recipe, {"step": self.step})
            except UserError as e:
                error = e
        self._agree(error)
        self.acc.end_training()
        return TrainResult(self.run_dir, self.best, self.step)
