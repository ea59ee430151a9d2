"""ctxseg's side of ref_bench's 'cac' group: CAC's overhead over the plain FCN head, same inputs.

    python -m benchmarks.bench_cac [--case NAME ...] [--threads 2] [--repeats 5] [--warmup 1] [--json out.json]

Head: FCN (in 2048, 512 channels, 2 convs + concat_input, dropout 0.1, 150 classes, BN), inputs
relu(randn) [4, 2048, 64, 64], labels [4, 512, 512] (benchmarks.ref_inputs, as ref_bench).
Cases (ref_bench times the forward passes only; the training cases here add the backward):
  cac_train_fwbw / plain_train_fwbw   train mode: head (+ CAC plug-in) forward, every loss (the
                                      main CE on the logits at label size; with CAC also
                                      pre_self, pre and the class-wise KL), backward
  cac_forward_train / plain_forward_train   the same without the backward
  cac_forward_test / plain_forward          eval, no_grad: head (+ CAC's context-aware classifier)
torch.manual_seed(5) before every training call (dropout masks), as ref_bench. Each CAC case is
timed alternately with its plain counterpart (ABBA), and `overhead` is the median of the
per-pair ratios minus 1.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from benchmarks.common import run_cases_cli
from benchmarks.ref_inputs import MM_IGNORE, cac_inputs
from ctxseg.engine.bench import measure, timed
from ctxseg.losses.cross_entropy import seg_ce_term
from ctxseg.models.context.cac import ContextAwareClassifier
from ctxseg.models.heads.fcn import FCNHead
from ctxseg.models.segmentor import Segmentor

PAIRS = {
    "cac_train_fwbw": "plain_train_fwbw",
    "cac_forward_train": "plain_forward_train",
    "cac_forward_test": "plain_forward",
}
RUNS: dict = {"repeats": 5, "warmup": 1}  # set by benchmarks.side_by_side
NUM_CLASSES = 150


def build(with_cac: bool) -> tuple[Segmentor, dict]:
    torch.manual_seed(0)
    head = FCNHead(
        in_channels=[2048],
        num_classes=NUM_CLASSES,
        channels=512,
        num_convs=2,
        concat_input=True,
        in_index=0,
        dropout_ratio=0.1,
    )
    data = cac_inputs(head)
    plugins = (
        {
            "cac": ContextAwareClassifier(
                classifier=head.classifier_slot(), num_classes=NUM_CLASSES, ignore_index=MM_IGNORE
            )
        }
        if with_cac
        else {}
    )
    return Segmentor(nn.Identity(), head, None, plugins, NUM_CLASSES, False), data


def step_fn(model: Segmentor, data: dict, phase: str):
    x, y = [data["inputs"]], data["labels"]

    def train(backward: bool):
        torch.manual_seed(5)
        model.train()
        out = model(x, y)
        loss = seg_ce_term(out["logits"], y, False, ignore_index=MM_IGNORE)
        loss = loss + sum(model.plugin_losses(out, y, 0).values())
        if backward:
            model.zero_grad(set_to_none=True)
            loss.backward()

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)

    if phase == "train_fwbw":
        return lambda: train(True)
    if phase == "forward_train":
        return lambda: train(False)
    return infer


def run_pair(name: str, repeats: int, warmup: int) -> dict:
    phase = name.split("_", 1)[1] if not name.endswith("forward_test") else "forward_test"
    cac_model, data = build(True)
    plain_model, _ = build(False)
    fa, fb = step_fn(cac_model, data, phase), step_fn(plain_model, data, phase)
    ta, tb, ratios = [], [], []
    for _ in range(warmup):
        fa(), fb()
    for i in range(repeats):
        order = ((fa, ta), (fb, tb)) if i % 2 == 0 else ((fb, tb), (fa, ta))
        for f, acc in order:
            acc.extend(timed(f, 1, 0, torch.device("cpu")))
        ratios.append(ta[-1] / tb[-1])
    res = {"cac": measure(fa, 1, 0), "plain": measure(fb, 1, 0)}  # peak memory (one extra call each)
    for key, times in (("cac", ta), ("plain", tb)):
        res[key].update(median_s=statistics.median(times), min_s=min(times), times_s=[round(t, 4) for t in times])
    res["overhead"] = statistics.median(ratios) - 1
    res["ratios"] = [round(r, 4) for r in ratios]
    return res


# the side-by-side convention (benchmarks.side_by_side): case name -> () -> measurement
CASES: dict = {name: (lambda n=name: run_pair(n, RUNS["repeats"], RUNS["warmup"])) for name in PAIRS}


def summary(name: str, r: dict) -> str:
    return (
        f"{name:18s} CAC {r['cac']['median_s']:.3f} s, {PAIRS[name]} {r['plain']['median_s']:.3f} s, "
        f"overhead {100 * r['overhead']:+.1f}% (median of per-pair ratios), peak +{r['cac']['peak_mb']} / "
        f"+{r['plain']['peak_mb']} MB, load {r['cac']['loadavg']}"
    )


def main(argv=None) -> dict:
    return run_cases_cli(__doc__, CASES, RUNS, argv, summary)


if __name__ == "__main__":
    main()
