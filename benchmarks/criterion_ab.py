"""Criterion's fused decode / auxiliary CE against the label-size path (issue 23 §3), A/B.

    python -m benchmarks.criterion_ab --rounds 3 --batch 1 --height 512 --width 1024 --threads 2

Each (variant, round) runs in a fresh process, variants alternating, so every peak RSS is one
process's high-water mark: a training step of OCRNet-HR18 (random init, the trainer's layout,
SGD), 1 warm-up + --steps timed steps, and the Criterion alone (forward + backward of the
decode and auxiliary CE on the model's logits). Prints one JSON line per run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

RECIPE = "ocrnet-hr18-cityscapes-80k"


def worker(fused: bool, batch: int, height: int, width: int, steps: int, threads: int) -> dict:
    import torch

    import ctxseg.losses as losses
    from benchmarks.ref_inputs import mmseg_normalize, seg_batch
    from ctxseg.config import load_recipe
    from ctxseg.engine.offline import without_pretrained
    from ctxseg.engine.trainer import build_optimizer, to_training_layout
    from ctxseg.models.segmentor import build_segmentor

    torch.set_num_threads(threads)
    losses.FUSED_CE["enabled"] = fused
    recipe = without_pretrained(load_recipe(RECIPE))
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = to_training_layout(build_segmentor(recipe).train(), cpu)
    optimizer = build_optimizer(model, recipe)
    criterion = losses.Criterion(recipe)
    images_u8, labels = seg_batch(torch.Generator().manual_seed(2024), batch, height, width)
    images = to_training_layout(mmseg_normalize(images_u8), cpu)

    def step():
        outputs = model(images, labels)
        loss, _ = criterion(model, outputs, labels, 1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return outputs

    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        outputs = step()
        if i:
            times.append(time.perf_counter() - t)
    rss_step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # the loss alone on the step's logits (detached leaves, so only the CE's own work is timed)
    leaves = {k: outputs[k].detach().requires_grad_() for k in ("logits", "aux_logits") if k in outputs}
    loss_times = []
    for _ in range(3):
        t = time.perf_counter()
        total = criterion.ce(leaves["logits"], labels, True) + 0.4 * criterion.ce(leaves["aux_logits"], labels, True)
        total.backward()
        loss_times.append(time.perf_counter() - t)
    return {
        "fused": fused,
        "step_s": statistics.median(times),
        "peak_rss_mb": round(rss_step),
        "loss_fwbw_s": statistics.median(loss_times),
        "logits": list(outputs["logits"].shape),
        "loss": float(total),
        "load": os.getloadavg()[0],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=["fused", "label"], default=None)
    args = ap.parse_args(argv)
    shape = (args.batch, args.height, args.width, args.steps, args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker == "fused", *shape)))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    runs: dict[str, list[dict]] = {"fused": [], "label": []}
    for r in range(args.rounds):
        order = ("label", "fused") if r % 2 == 0 else ("fused", "label")
        for v in order:
            cmd = [sys.executable, "-m", "benchmarks.criterion_ab", "--worker", v, "--batch", str(args.batch)]
            cmd += ["--height", str(args.height), "--width", str(args.width), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
            rec = json.loads(out.strip().splitlines()[-1])
            runs[v].append(rec)
            print(json.dumps(rec), flush=True)
    for v, recs in runs.items():
        med = {k: statistics.median(x[k] for x in recs) for k in ("step_s", "peak_rss_mb", "loss_fwbw_s", "load")}
        print(v, json.dumps(med))


if __name__ == "__main__":
    main()
