"""glibc malloc kept (ctxseg's default on the CPU) against the C library's defaults, A/B (issue 23).

    python -m benchmarks.allocator_ab --recipe ocrnet-hr18-cityscapes-80k --height 512 --width 1024 \\
        --batch 2 --rounds 3 --threads 2 --phases train

Each (setting, round) is one `ctxseg bench` process (settings alternating, so drifting load hits
both alike) with CTXSEG_MALLOC=keep or =system. Reported per run: the bench medians of each phase,
and from the child's rusage its system CPU seconds, minor page faults and peak RSS (whole process:
start-up, warm-up and timed repeats). Prints one JSON line per run and the medians per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = ("system", "keep")


def run_once(setting: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        cmd = [
            sys.executable,
            "-m",
            "ctxseg",
            "bench",
            "--recipe",
            args.recipe,
            "--height",
            str(args.height),
            "--width",
            str(args.width),
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--phases",
            args.phases,
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
        env = {**os.environ, "CTXSEG_MALLOC": setting}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        stderr = proc.stderr.read() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"ctxseg bench failed ({setting}):\n{stderr}")
        bench = json.loads(out.read_text())
    row = {
        "setting": setting,
        "allocator": bench["allocator"],
        "sys_s": round(usage.ru_stime, 2),
        "user_s": round(usage.ru_utime, 2),
        "minor_faults": usage.ru_minflt,
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # Linux: KiB
        "loadavg": [bench["loadavg_start"], bench["loadavg_end"]],
    }
    for phase in args.phases.split(","):
        row[f"{phase}_median_s"] = bench[phase]["step_time_s" if phase == "train" else "time_per_image_s"]
        row[f"{phase}_peak_rss_mb"] = round(bench[phase]["peak_memory_bytes"] / 2**20)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="ocrnet-hr18-cityscapes-80k")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--phases", default="train")
    args = ap.parse_args(argv)
    rows = []
    for _ in range(args.rounds):
        for setting in SETTINGS:
            row = run_once(setting, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {}
    for setting in SETTINGS:
        mine = [r for r in rows if r["setting"] == setting]
        summary[setting] = {
            k: statistics.median(r[k] for r in mine) for k in mine[0] if k.endswith(("_s", "_faults", "_mb"))
        }
    for phase in args.phases.split(","):
        key = f"{phase}_median_s"
        summary[f"{phase}_speedup"] = round(summary["system"][key] / summary["keep"][key], 3)
    print(json.dumps({"summary": summary, "cpu": _cpu(), "args": vars(args)}, indent=1))
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
