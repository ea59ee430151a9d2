"""Official code vs ctxseg, side by side on the same inputs: `python -m benchmarks.side_by_side`.

    python -m benchmarks.side_by_side --case mmseg --rounds 1 \\
        --ref-bench ../shared/perf/ref_bench.py --ref-python /work/refenv/venv/bin/python \\
        --out docs/benchmarks/side_by_side.json --markdown docs/benchmarks/side_by_side.md

Cases are discovered by convention: every module benchmarks/bench_*.py that defines
`CASES: dict[str, Callable[[], dict]]` contributes its cases; a case's name is the ref_bench.py
case it mirrors, and its function runs ctxseg's side on ref_bench's inputs and returns
ctxseg.engine.bench.measure()'s dict (median_s, min_s, max_s, peak_mb, loadavg...). `--case`
takes case names or ref_bench group names (ceiling, contrast, mcibi, cac, mmseg); `--list`
prints what was found.

Each round runs the official side (ref_bench.py, in its own interpreter, one subprocess per
group as ref_bench does) and ctxseg's side (one subprocess per case, so every case starts
from a fresh process as the official groups do), alternating which goes first, and records the
load average around each run. The figures of a case are medians over rounds. Without
--ref-bench only ctxseg's side runs; --official-json reuses an earlier ref_bench output instead.
Ratio = official median / ctxseg median (> 1: ctxseg is faster).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

# ref_bench.py's groups (its CASES table), so `--case mmseg` works without importing it
GROUPS = {
    "contrast": ["contrast_nomem", "contrast_nomem_fwbw", "contrast_mem", "contrast_mem_fwbw"],
    "mcibi": ["mcibi_update", "mcibi_update_with_upsample", "mcibi_forward"],
    "cac": ["cac_forward_train", "cac_vanilla_forward_train", "cac_forward_test", "cac_vanilla_forward"],
    "mmseg": ["ocrnet_train_step", "ocrnet_whole_inference", "ocrnet_slide_inference"],
    "mmseg_extra": ["deeplabv3_train_step"],
}


def discover() -> dict[str, str]:
    """case name -> module defining it (benchmarks.bench_*: modules with a CASES dict)."""
    import benchmarks as tools

    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(tools.__path__):
        if not info.name.startswith("bench_"):
            continue
        path = os.path.join(info.module_finder.path, info.name + ".py")
        try:  # only modules that define CASES are imported (older scripts run work at import time)
            with open(path, encoding="utf-8") as f:
                if "CASES" not in f.read():
                    continue
            mod = importlib.import_module(f"benchmarks.{info.name}")
        except (Exception, SystemExit) as e:  # noqa: BLE001 - one broken script must not hide the others
            print(f"[side_by_side] skipped benchmarks.{info.name}: {e!r}", file=sys.stderr)
            continue
        cases = getattr(mod, "CASES", None)
        if isinstance(cases, dict):
            for name, fn in cases.items():
                if callable(fn):
                    found[name] = mod.__name__
    return found


def resolve(tokens: list[str], known: dict[str, str]) -> list[str]:
    from benchmarks.common import case_names

    names: list[str] = []
    for tok in case_names(tokens):
        if tok in GROUPS:
            names += [n for n in GROUPS[tok] if n in known]
        elif tok in known:
            names.append(tok)
        else:
            print(f"unknown case {tok!r}; --list shows the cases found", file=sys.stderr)
            raise SystemExit(2)  # a usage error, as argparse's
    return list(dict.fromkeys(names)) or list(known)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_ctxseg_case(name: str, module: str, repeats: int, warmup: int, threads: int) -> tuple[dict, str]:
    """One case in a fresh interpreter; returns (its measure() dict, the command line)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.side_by_side",
        "--worker",
        name,
        "--worker-module",
        module,
        "--worker-out",
        path,
        "--repeats",
        str(repeats),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
    ]
    try:
        # the worker imports `benchmarks` (the repository root, not an installed package)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        pp = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + pp if pp else "")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout)[-2000:]}, shlex.join(cmd)
        with open(path) as f:
            return json.load(f), shlex.join(cmd)
    finally:
        os.unlink(path)


def run_official(
    names: list[str], ref_bench: str, python: str, repeats: int, warmup: int, threads: int, extra: list[str]
) -> tuple[dict, str]:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [
        python,
        ref_bench,
        "--case",
        ",".join(names),
        "--out",
        path,
        "--fresh",
        "--repeats",
        str(repeats),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
        "--max-retries",
        "0",
        *extra,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = {}
        if proc.returncode != 0 and not res:
            res = {"_error": proc.stderr[-2000:]}
        return res, shlex.join(cmd)
    finally:
        os.unlink(path)


def _official_row(r: dict) -> dict:
    return {
        "median_s": r.get("median_s"),
        "min_s": r.get("min_s"),
        "max_s": r.get("max_s"),
        "peak_mb": r.get("peak_rss_mb"),
    }


def combine(rounds: list[dict], names: list[str]) -> dict[str, dict]:
    """Per case: medians over rounds of each side's median, ratio, peak memory, load averages."""
    table: dict[str, dict] = {}
    for name in names:
        ctx = [r["ctxseg"][name] for r in rounds if "median_s" in r["ctxseg"].get(name, {})]
        off = [r["official"][name] for r in rounds if r.get("official", {}).get(name, {}).get("median_s") is not None]
        row: dict[str, Any] = {"rounds": len(rounds)}
        if ctx:
            row["ctxseg_s"] = statistics.median(c["median_s"] for c in ctx)
            row["ctxseg_min_s"] = min(c["min_s"] for c in ctx)
            row["ctxseg_max_s"] = max(c["max_s"] for c in ctx)
            peaks = [c["peak_mb"] for c in ctx if c.get("peak_mb") is not None]
            row["ctxseg_peak_mb"] = max(peaks) if peaks else None
        if off:
            row["official_s"] = statistics.median(o["median_s"] for o in off)
            row["official_min_s"] = min(o["min_s"] for o in off)
            row["official_max_s"] = max(o["max_s"] for o in off)
            peaks = [o["peak_mb"] for o in off if o.get("peak_mb") is not None]
            row["official_peak_mb"] = max(peaks) if peaks else None
        if ctx and off:
            row["ratio"] = row["official_s"] / row["ctxseg_s"]
        loads = [x for r in rounds for x in (r.get("load", {}).get(name) or [])]
        row["loadavg_1min"] = [min(loads), max(loads)] if loads else None
        table[name] = row
    return table


def markdown(table: dict[str, dict], commands: list[str], meta: dict) -> str:
    def s(v):
        return "–" if v is None else (f"{v:.3g}" if v < 10 else f"{v:.1f}")

    def mb(v):
        return "–" if v is None else f"{v:.0f}"

    lines = [
        f"Measured {meta['date']} on {meta['machine']}, torch threads {meta['threads']}, "
        f"{meta['rounds']} round(s); times: medians (s), in brackets min-max; memory: peak growth of a call (MiB).",
        "",
        "| case | official s | ctxseg s | ratio | official peak MiB | ctxseg peak MiB | load avg (1 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        off = (
            f"{s(r.get('official_s'))} ({s(r.get('official_min_s'))}–{s(r.get('official_max_s'))})"
            if "official_s" in r
            else "–"
        )
        ctx = (
            f"{s(r.get('ctxseg_s'))} ({s(r.get('ctxseg_min_s'))}–{s(r.get('ctxseg_max_s'))})"
            if "ctxseg_s" in r
            else "–"
        )
        ratio = f"{r['ratio']:.2f}×" if "ratio" in r else "–"
        la = r.get("loadavg_1min")
        load = f"{la[0]:.1f}–{la[1]:.1f}" if la else "–"
        peaks = f"{mb(r.get('official_peak_mb'))} | {mb(r.get('ctxseg_peak_mb'))}"
        lines.append(f"| {name} | {off} | {ctx} | {ratio} | {peaks} | {load} |")
    lines += ["", "Commands:", ""] + [f"    {c}" for c in commands]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def worker(args) -> None:
    from benchmarks.common import apply_runs

    mod = importlib.import_module(args.worker_module)
    apply_runs(
        getattr(mod, "RUNS", None), args.threads, args.repeats, args.warmup
    )  # modules read their counts from RUNS
    res = mod.CASES[args.worker]()
    from ctxseg.io import write_json

    write_json(args.worker_out, res)


def main(argv=None) -> dict | None:
    from benchmarks.common import add_timing_options

    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_timing_options(ap, {"repeats": 3, "warmup": 1})  # --case also takes ref_bench group names here
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--ref-bench", default=os.environ.get("CTXSEG_REF_BENCH"), help="path of ref_bench.py (official side)"
    )
    ap.add_argument(
        "--ref-python",
        default=os.environ.get("CTXSEG_REF_PYTHON", sys.executable),
        help="interpreter with the official packages (mmsegmentation, ...)",
    )
    ap.add_argument(
        "--ref-arg",
        action="append",
        default=[],
        help="extra ref_bench.py argument (repeatable, e.g. --ref-arg=--contrast-mirror=DIR)",
    )
    ap.add_argument("--official-json", default=None, help="use this earlier ref_bench.py output instead of running it")
    ap.add_argument("--out", default="side_by_side.json")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-module", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return None
    known = discover()
    if args.list:
        for name, mod in known.items():
            print(f"{name:32s} {mod}")
        return None
    names = resolve(args.case, known)
    rounds, commands = [], []
    for i in range(args.rounds):
        rnd: dict[str, Any] = {"ctxseg": {}, "official": {}, "load": {}}
        sides = ["official", "ctxseg"] if i % 2 == 0 else ["ctxseg", "official"]
        for side in sides:
            if side == "official" and args.official_json:
                with open(args.official_json) as f:
                    off = json.load(f)
                rnd["official"] = {n: _official_row(off[n]) for n in names if n in off}
                commands.append(f"(official figures from {args.official_json})")
            elif side == "official" and args.ref_bench:
                before = _load()
                off, cmd = run_official(
                    names, args.ref_bench, args.ref_python, args.repeats, args.warmup, args.threads, args.ref_arg
                )
                after = _load()
                rnd["official"] = {n: _official_row(off[n]) for n in names if n in off}
                rnd["official_meta"] = off.get("_meta", {})
                for n in names:
                    rnd["load"].setdefault(n, []).extend(x[0] for x in (before, after) if x)
                commands.append(cmd)
                print(
                    f"[side_by_side] round {i + 1} official done: "
                    f"{', '.join(rnd['official']) or off.get('_error', '')}",
                    file=sys.stderr,
                    flush=True,
                )
            elif side == "ctxseg":
                for n in names:
                    res, cmd = run_ctxseg_case(n, known[n], args.repeats, args.warmup, args.threads)
                    rnd["ctxseg"][n] = res
                    rnd["load"].setdefault(n, []).extend(
                        x[0] for x in (res.get("loadavg_before"), res.get("loadavg_after")) if x
                    )
                    commands.append(cmd)
                    print(
                        f"[side_by_side] round {i + 1} ctxseg {n}: {res.get('median_s', res.get('error'))}",
                        file=sys.stderr,
                        flush=True,
                    )
        rounds.append(rnd)
    table = combine(rounds, names)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": _machine(),
        "threads": args.threads,
        "rounds": args.rounds,
    }
    from ctxseg.io import write_json, write_text

    result = {"meta": meta, "cases": table, "rounds": rounds, "commands": list(dict.fromkeys(commands))}
    write_json(args.out, result)
    md = markdown(table, list(dict.fromkeys(commands)), meta)
    if args.markdown:
        write_text(args.markdown, md)
    print(md)
    return result


if __name__ == "__main__":
    main()
