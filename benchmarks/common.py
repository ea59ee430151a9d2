"""The command line every `python -m benchmarks.bench_*` script and the side-by-side driver share.

A bench script defines `CASES` (case name -> () -> ctxseg.engine.bench.measure()'s dict) and `RUNS`
(its default repeats / warm-up; the case functions read them) and ends with

    def main(argv=None) -> dict:
        return run_cases_cli(__doc__, CASES, RUNS, argv)

Options: --case NAME (repeatable, comma lists; default: all), --threads, --repeats, --warmup,
--json PATH ({"machine", "argv", "results"}). An unknown case name is a usage error (exit 2).
Importing this module (or a bench script) runs nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Case = Callable[[], dict]
Summary = Callable[[str, dict], str]


def add_timing_options(ap: argparse.ArgumentParser, runs: dict, threads: int = 2) -> None:
    """--case / --threads / --repeats / --warmup, the options every timing script has. The repeat
    defaults come from the script's RUNS (None there: each case's own default)."""
    ap.add_argument("--case", action="append", default=[], help="case name (repeatable, comma list); default: all")
    ap.add_argument("--threads", type=int, default=threads, help=f"torch threads (default {threads}, as ref_bench)")
    ap.add_argument("--repeats", type=int, default=runs.get("repeats"), help="timed calls per case")
    ap.add_argument("--warmup", type=int, default=runs.get("warmup"), help="untimed calls before them")


def case_names(tokens: list[str]) -> list[str]:
    """`--case a,b --case c` -> ["a", "b", "c"] (order kept, duplicates dropped)."""
    return list(dict.fromkeys(t.strip() for item in tokens for t in item.split(",") if t.strip()))


def apply_runs(runs: Any, threads: int, repeats: int | None, warmup: int | None) -> None:
    """Set torch's thread count and a script's RUNS (the repeat counts its case functions read)."""
    import torch

    torch.set_num_threads(threads)
    if isinstance(runs, dict):
        runs.update(repeats=repeats, warmup=warmup)


def default_summary(name: str, r: dict) -> str:
    peak = r.get("peak_mb")
    return (
        f"{name:28s} median {r['median_s']:.4f} s  min {r['min_s']:.4f} s  "
        f"peak {'-' if peak is None else f'+{peak}'} MB  load {r.get('loadavg')}"
    )


def run_cases_cli(
    doc: str | None,
    cases: dict[str, Case],
    runs: dict,
    argv: list[str] | None = None,
    summary: Summary = default_summary,
) -> dict[str, dict]:
    """Parse the shared options, run the chosen cases in order, print one line each, write --json.
    Returns {case name: result}."""
    from ctxseg.engine.bench import machine
    from ctxseg.io import write_json

    ap = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None, epilog=f"cases: {', '.join(cases)}"
    )
    add_timing_options(ap, runs)
    ap.add_argument("--json", default=None, help="write {machine, argv, results} here")
    args = ap.parse_args(argv)
    names = case_names(args.case) or list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(cases)}")  # exit 2
    apply_runs(runs, args.threads, args.repeats, args.warmup)
    results = {}
    for name in names:
        results[name] = cases[name]()
        print(summary(name, results[name]), flush=True)
    if args.json:
        write_json(args.json, {"machine": machine(), "argv": sys.argv if argv is None else argv, "results": results})
    return results
