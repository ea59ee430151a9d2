"""`ctxseg bench`: speed, memory, parameters and FLOPs of a recipe on synthetic input."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ctxseg.cli.common import SetOption, out
from ctxseg.errors import UserError


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _fmt_count(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}"


def result_table(r: dict) -> Table:
    inp = r["input"]
    t = Table(
        title=f"{r['recipe']} at {inp['height']}x{inp['width']} on {r['device']} "
        f"(median of {r['repeats']}, {r['warmup']} warm-up)"
    )
    t.add_column("measure", no_wrap=True)
    t.add_column("value", justify="right", no_wrap=True)
    t.add_column("min-max", justify="right")
    t.add_column("peak memory", justify="right")
    t.add_column("load avg", justify="right")

    def spread(d: dict, scale: float = 1.0) -> str:
        return f"{1000 * d['min_s'] / scale:.0f}-{1000 * d['max_s'] / scale:.0f}" if "min_s" in d else ""

    def load(d: dict) -> str:
        la = d.get("loadavg") or []
        return " / ".join(f"{x[0]:.1f}" for x in la if x) if la else ""

    t.add_row("parameters", _fmt_count(r["params"]), "", "", "")
    t.add_row("FLOPs / image, inference", _fmt_count(r["flops"]["inference_per_image"], "FLOP"), "", "", "")
    if r["flops"]["train_per_image"] is not None:
        t.add_row("FLOPs / image, train fwd+bwd", _fmt_count(r["flops"]["train_per_image"], "FLOP"), "", "", "")
    if "train" in r:
        tr = r["train"]
        t.add_row(
            f"train step (batch {inp['batch']})",
            f"{1000 * tr['step_time_s']:.1f} ms",
            spread(tr),
            _fmt_bytes(tr["peak_memory_bytes"]),
            load(tr),
        )
        t.add_row("train images/s", f"{tr['images_per_s']:.2f}", "", "", "")
    if "inference_whole" in r:
        w = r["inference_whole"]
        t.add_row(
            "inference / image, whole",
            f"{1000 * w['time_per_image_s']:.1f} ms",
            spread(w),
            _fmt_bytes(w["peak_memory_bytes"]),
            load(w),
        )
    if "inference_slide" in r:
        s = r["inference_slide"]
        t.add_row(
            f"inference / image, slide ({s['windows']} windows {s['crop'][0]}x{s['crop'][1]})",
            f"{1000 * s['time_per_image_s']:.1f} ms",
            spread(s),
            _fmt_bytes(s["peak_memory_bytes"]),
            load(s),
        )
    return t


def bench_cmd(
    recipe: str = typer.Option(
        ...,
        "--recipe",
        "-r",
        help="Recipe name or .toml path; 'all' = every recipe (each at its own crop size unless --height/--width).",
    ),
    height: int | None = typer.Option(None, "--height", help="Input height (default: the recipe's crop height)."),
    width: int | None = typer.Option(None, "--width", help="Input width (default: the recipe's crop width)."),
    batch: int | None = typer.Option(None, "--batch", help="Training batch (default: the recipe's data.batch_size)."),
    repeats: int = typer.Option(5, "--repeats", help="Timed runs per measurement (the median is reported)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed runs before timing."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    phases: str | None = typer.Option(
        None,
        "--phases",
        help="Comma-separated subset of train,inference_whole,inference_slide; 'none' = parameters and FLOPs only.",
    ),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    compile: bool = typer.Option(
        False,
        "--compile/--no-compile",
        help=(
            "torch.compile the model (training forward and the fused inference copy); the warm-up runs pay the "
            "compile time, minutes on a small CPU."
        ),
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="torch intra-op threads (default: torch's choice); ref_bench.py times the official code with 2.",
    ),
    roofline: bool = typer.Option(
        False,
        "--roofline",
        help=(
            "First measure this machine's ceilings (matmul, 3x3 convolution; fp32, bf16), then report each "
            "phase's achieved GFLOP/s, its fraction of the convolution ceiling and its top operators."
        ),
    ),
    set: list[str] | None = SetOption,
):
    """Measure training step time, inference time (whole and sliding window), peak memory, parameters and FLOPs.

    Synthetic input; after warm-up, medians (and min-max) over repeats, with the load average
    while they ran. Examples:

      [cyan]ctxseg bench --recipe demo[/]

      [cyan]ctxseg bench --recipe ocrnet-hr48-cityscapes-80k --height 512 --width 1024 --batch 2 --json bench.json[/]

      [cyan]ctxseg bench --recipe all --phases none[/]   parameters and inference FLOPs of every recipe

      [cyan]ctxseg bench --recipe ocrnet-hr18-cityscapes-80k --roofline[/]   how close to this machine's limit
    """
    from ctxseg.config import load_recipe
    from ctxseg.engine.bench import PHASES, run_bench
    from ctxseg.io import write_json

    if phases == "none":  # parameters and FLOPs only
        chosen: tuple[str, ...] = ()
    else:
        chosen = tuple(p.strip() for p in phases.split(",")) if phases else PHASES
    unknown = [p for p in chosen if p not in PHASES]
    if unknown:
        raise UserError(f"--phases: unknown {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    if threads is not None:
        import torch

        if threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(threads)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available")
    ceilings = None
    if roofline:
        from ctxseg.engine.roofline import measure_ceilings

        with out.status("measuring this machine's ceilings (matmul, conv3x3; fp32, bf16)"):
            ceilings = measure_ceilings(device or _default_device())
        out.print(ceilings_table(ceilings))
    if recipe == "all":
        from ctxseg.config import list_recipes

        names = [n for n in list_recipes() if not n.startswith("_")]
    else:
        names = [recipe]
    results = []
    for name in names:
        try:
            rec = load_recipe(name, list(set or []))
        except UserError as e:
            if len(names) == 1:
                raise
            out.print(f"[red]skipped {name}:[/] {e}")  # one broken recipe must not hide the others
            results.append({"recipe": name, "error": str(e)})
            continue
        h = height or rec.data.crop_size[0]
        w = width or rec.data.crop_size[1]
        b = batch or rec.data.batch_size
        if min(h, w) < 16 or b < 1 or repeats < 1 or warmup < 0:
            raise UserError("bench needs --height/--width >= 16, --batch >= 1, --repeats >= 1 and --warmup >= 0")
        if b < 2 and "train" in chosen:
            out.print(
                "[yellow]note:[/] batch 1 with BatchNorm in training mode fails on 1x1 pooled features; using batch 2"
            )
            b = 2
        with out.status(f"benchmarking {name}") as status:
            result = run_bench(
                rec,
                h,
                w,
                b,
                repeats,
                warmup,
                device,
                chosen,
                progress=lambda p: status.update(f"benchmarking {name}: {p}"),
                compile=compile,
                profile=roofline,
            )
        result["overrides"] = list(set or [])
        result["layout"] = _layouts(device)
        results.append(result)
        if len(names) == 1 or chosen:
            out.print(result_table(result))
        if ceilings is not None:
            result["ceilings"] = ceilings
            result["roofline"] = _roofline(rec, result, ceilings)
            out.print(roofline_table(result))
    if len(names) > 1:
        out.print(summary_table(results))
    for phase, choice in _layouts(device).items():
        out.print(f"{phase} layout: [bold]{choice['layout']}[/] ({choice['reason']})")
    allocator = next((r["allocator"] for r in results if r.get("allocator")), None)
    if allocator:
        out.print(f"allocator: [bold]{allocator['name']}[/] ({allocator['reason']})")
    kinds = [r["memory_kind"] for r in results if "memory_kind" in r]
    if chosen and kinds and kinds[0].startswith("cpu"):
        note = (
            "reset before each phase; includes the process baseline"
            if kinds[0].endswith("per_phase")
            else "process high-water mark, cumulative over phases"
        )
        out.print(f"[dim]peak memory: CPU peak RSS ({note})[/]")
    if json_path:
        write_json(json_path, results[0] if len(results) == 1 else results)
        out.print(f"results: {json_path}")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _roofline(recipe, result: dict, ceilings: dict) -> list[dict]:
    import torch

    from ctxseg.engine.bench import build_segmentor_for_bench
    from ctxseg.engine.roofline import has_grouped_convs, roofline_rows

    with torch.device("meta"):
        grouped = has_grouped_convs(build_segmentor_for_bench(recipe))
    return roofline_rows(result, ceilings, grouped, recipe.train.mixed_precision)


def ceilings_table(ceilings: dict) -> Table:
    table = Table(title="this machine's ceilings (same threads)")
    for col, justify in (("case", "left"), ("GFLOP/s", "right")):
        table.add_column(col, justify=justify)
    for c in ceilings.values():
        table.add_row(c["what"], f"{c['gflops']:.0f}")
    return table


def roofline_table(result: dict) -> Table:
    table = Table(title=f"{result['recipe']}: achieved vs the conv3x3 ceiling")
    for col, justify in (("phase", "left"), ("s", "right"), ("GFLOP", "right"), ("GFLOP/s", "right")):
        table.add_column(col, justify=justify)
    table.add_column("of ceiling", justify="right")
    table.add_column("top operators (share of self time)")
    for row in result["roofline"]:
        ops = result.get(row["phase"], {}).get("top_ops", [])
        frac = row.get("of_conv_ceiling")
        table.add_row(
            row["phase"],
            f"{row['seconds']:.3f}",
            "—" if not row.get("flops") else f"{row['flops'] / 1e9:.1f}",
            "—" if "gflops" not in row else f"{row['gflops']:.0f}",
            f"{100 * frac:.0f}%" if frac is not None else ("excluded" if "excluded" in row else "—"),
            ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in ops[:4]),
        )
    notes = sorted({row["excluded"] for row in result["roofline"] if "excluded" in row})
    if notes:
        table.caption = "excluded: " + "; ".join(notes)
    return table


def _layouts(device: str | None) -> dict[str, dict]:
    """The memory layout training and inference run in on this machine, and why (ctxseg.engine.layout)."""
    import torch

    from ctxseg.engine.layout import PHASES, choose

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    picked = {phase: choose(device, phase) for phase in PHASES}
    return {p: {"layout": c.name, "reason": c.reason, "seconds": c.seconds} for p, c in picked.items()}


def summary_table(results: list[dict]) -> Table:
    t = Table(title="recipes")
    for col in ("recipe", "input", "params", "FLOPs/img inference"):
        t.add_column(col, justify="left" if col == "recipe" else "right")
    for r in results:
        if "error" in r:
            t.add_row(r["recipe"], "[red]invalid recipe[/]", "", "")
            continue
        t.add_row(
            r["recipe"],
            f"{r['input']['height']}x{r['input']['width']}",
            _fmt_count(r["params"]),
            _fmt_count(r["flops"]["inference_per_image"], "FLOP"),
        )
    return t


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
