"""`ctxseg train`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ctxseg.cli.common import SetOption, out, runs_dir_option
from ctxseg.config import load_recipe
from ctxseg.engine.runs import iteration_checkpoints, latest_run
from ctxseg.errors import UserError

err = Console(stderr=True)


def _resume_path(resume: str, runs_dir: Path) -> Path:
    """`latest`/a run folder -> its newest checkpoint that has a resume state; or a .safetensors file."""
    # resolved once, here: `runs/latest` (or any symlink) may be re-pointed by a run started while
    # this one resumes, and everything this run writes is derived from the resolved folder
    p = latest_run(runs_dir) if resume == "latest" else Path(resume).resolve()
    if not p.exists():
        raise UserError(f"Nothing to resume at {resume}: no such run folder or checkpoint")
    if p.is_dir():
        ckpts = [c for c in iteration_checkpoints(p) if c.with_suffix(".state.pt").is_file()]
        if not ckpts:
            raise UserError(f"No resumable checkpoint in {p}")
        return ckpts[-1]
    if not p.with_suffix(".state.pt").is_file():
        raise UserError(
            f"{p} has no resume state ({p.with_suffix('.state.pt').name}); "
            "only checkpoints/iter_*.safetensors can be resumed"
        )
    return p


def train(
    recipe: str | None = typer.Option(
        None, "--recipe", "-r", help="Recipe name (see `ctxseg recipes list`) or a .toml path."
    ),
    set: list[str] | None = SetOption,
    resume: str | None = typer.Option(
        None,
        "--resume",
        help=(
            "Continue a run: bare [cyan]--resume[/] takes the newest checkpoint of runs/latest; or give a run "
            "folder / checkpoint."
        ),
    ),
    mixed_precision: str | None = typer.Option(
        None, "--mixed-precision", help="no | fp16 | bf16 (default: the recipe's)."
    ),
    runs_dir: Path = runs_dir_option(),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs only)."),
):
    """Train a recipe with HF Accelerate (CPU, one or many GPUs, many nodes).

    Examples:

      [cyan]ctxseg train --recipe demo[/]

      [cyan]ctxseg train --recipe demo --set train.iters=200 --set train.optimizer.lr=0.02[/]

      [cyan]ctxseg train --resume[/]

      [cyan]accelerate launch --multi_gpu --num_processes 8 -m ctxseg train --recipe ocrnet-hr48-cityscapes-80k[/]
    """
    from ctxseg.engine.trainer import Trainer, launch_warning

    if mixed_precision not in (None, "no", "fp16", "bf16"):
        raise UserError(f"--mixed-precision must be no, fp16 or bf16, got '{mixed_precision}'")
    resume_path = _resume_path(resume, runs_dir) if resume else None
    if resume_path is not None:
        from ctxseg.engine.checkpoint import read_checkpoint

        _, rec, _ = read_checkpoint(resume_path)
        if recipe or set:
            out.print("[yellow]--resume uses the run's own recipe; --recipe/--set are ignored[/]")
    elif recipe is None:
        raise UserError("Give --recipe NAME (see `ctxseg recipes list`) or --resume")
    else:
        rec = load_recipe(recipe, set)
        from ctxseg.models.backbones.pretrained import check_recipe_pretrained

        # before any data is scanned: a missing weights file stops here; the fit is checked when
        # the backbone is built, before the first step (and, for timm, before downloading)
        out.print(check_recipe_pretrained(rec.model.backbone, recipe_name=rec.name), highlight=False)
    trainer = Trainer(rec, runs_dir, resume=resume_path, mixed_precision=mixed_precision, progress=not no_progress)
    if trainer.acc.is_main_process:
        out.print(f"[bold]train[/] {trainer.describe()}", soft_wrap=True)
        warning = launch_warning(trainer.world)
        if warning:
            err.print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)
    result = trainer.train()
    if trainer.acc.is_main_process:
        best = f"{100 * result.best_miou:.2f}" if result.best_miou is not None else "—"
        out.print(
            f"[green]done[/] {result.final_step} iterations; best val mIoU {best}; run folder {result.run_dir}",
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
