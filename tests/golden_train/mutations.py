#!/usr/bin/env python3
"""What the step-by-step goldens catch: train ctxseg on a case with deliberately wrong settings and
report, per check of tests/test_train_golden.py, whether and where it fails (not run in CI).

    PYTHONPATH=. python tests/golden_train/mutations.py --case mmseg-upernet-swin-b-ade20k-160k \\
        --set train.optimizer.custom_keys.norm.decay_mult=1.0 --set train.optimizer.betas=[0.9,0.99]

Each `--set` is one mutation (a recipe override, as `ctxseg train --set`); without any, the case's own
settings are run (the baseline: every check passes). For each it prints the first failing iteration of
the per-iteration checks (lr / weight decay / optimizer settings, losses, grad norm: the smallest
iteration at which |ours - ref| exceeds the bound), the number of final tensors over their bound, and
the largest |ours - ref| / spread of each kind of final tensor.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def first_step_failure(run) -> dict[str, str]:
    """quantity -> 'iteration N (...)' of its first failure, or 'ok'."""
    import tests.test_train_golden as T

    cfg, folder, trainer, (_, _, _, trainer64), records, _ = run
    tol = T.tolerances(folder)
    out = {"lr": "ok", "weight_decay": "ok", "optimizer": "ok", "loss": "ok", "grad_norm": "ok"}
    pairs = T._group_pairs(run)
    for g_ref, g_ours in pairs:
        for key, official in records[0].get("optimizer", [{}] * len(records[0]["lr"]))[g_ref].items():
            mine = trainer.optimizer.param_groups[g_ours].get(key)
            mine = list(mine) if isinstance(mine, tuple) else mine
            if mine != official and out["optimizer"] == "ok":
                out["optimizer"] = f"{key} {mine} vs {official}"
    env: dict[str, float] = {}

    def fail(q, msg):
        if out[q] == "ok":
            out[q] = msg

    # as the test: with a float64 run, ctxseg's own float32-to-float64 distance is added to the spread
    own = T._own_rounding(trainer, trainer64, cfg["ctxseg"]["terms"])
    for ours, ref, mine in zip(trainer.step_records, records, own):
        it = ref["iter"]
        for g_ref, g_ours in pairs:
            a, b = ours["lr"][g_ours], ref["lr"][g_ref]
            if abs(a - b) > T.LR_RTOL * abs(b):
                fail("lr", f"iteration {it} ({a:.6g} vs {b:.6g})")
            if "weight_decay" in ref and ours["weight_decay"][g_ours] != ref["weight_decay"][g_ref]:
                fail("weight_decay", f"iteration {it} ({ours['weight_decay'][g_ours]} vs {ref['weight_decay'][g_ref]})")
        for k, v in [*ref["spread"]["losses"].items(), ("grad_norm", ref["spread"]["grad_norm"])]:
            env[k] = max(env.get(k, 0.0), v + mine.get(k, 0.0))
        total = sum(v for k, v in ours["terms"].items() if not k.startswith("stat_"))
        checks = [(total, ref["losses"]["loss"], env["loss"], "loss")]
        for o, n in cfg["ctxseg"]["terms"].items():
            if (o in ref["losses"]) != (n in ours["terms"]):  # a term switched on at another iteration
                fail("loss", f"iteration {it} ({n} {'missing' if o in ref['losses'] else 'present'})")
            elif o in ref["losses"]:
                checks.append((ours["terms"][n], ref["losses"][o], env[o], n))
        for a, b, sp, name in checks:
            if not T._close(a, b, tol["loss"], sp):
                fail(
                    "loss",
                    f"iteration {it} ({name} {a:.7g} vs {b:.7g}, spread {sp:.2g})",
                )
        a, b, sp = ours["grad_norm"], ref["grad_norm"], env["grad_norm"]
        if not T._close(a, b, tol["grad_norm"], sp):
            fail("grad_norm", f"iteration {it} ({a:.6g} vs {b:.6g}, spread {sp:.2g})")
    return out


def final_summary(run) -> str:
    import tests.test_train_golden as T

    rows = T.final_diffs(run)
    over = [r for r in rows if r["err"] > r["limit"]]
    parts = [f"{len(over)}/{len(rows)} final tensors over their bound"]
    if over:
        w = max(over, key=lambda r: r["err"] / max(r["limit"], 1e-30))
        parts.append(f"worst {w['key']} {w['err']:.3g} > {w['limit']:.3g}")
    for kind in ("param", "buffer", "optim"):
        ratios = sorted(r["err"] / max(r["spread"], 1e-30) for r in rows if r["kind"] == kind and r["limit"] > 0)
        if ratios:
            parts.append(f"{kind} |d|/spread median {ratios[len(ratios) // 2]:.3g} max {ratios[-1]:.3g}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, help="case folder name under --root")
    ap.add_argument("--root", type=Path, default=HERE / "cases")
    ap.add_argument("--set", action="append", default=[], help="one mutation: a recipe override (repeatable)")
    ap.add_argument("--baseline", action="store_true", help="also run the case's own settings first")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    repo = HERE.parents[1]
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    import tests.test_train_golden as T

    mutations = ([None] if args.baseline or not args.set else []) + args.set
    for m in mutations:
        with tempfile.TemporaryDirectory() as tmp:
            run = T.train_case(args.root / args.case, Path(tmp), () if m is None else (m,))
            steps = first_step_failure(run)
            print(f"== {m or 'baseline (the case settings)'}")
            for q, v in steps.items():
                print(f"   {q}: {v}")
            print(f"   final: {final_summary(run)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
