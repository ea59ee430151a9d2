"""ctxseg's side of ref_bench's 'contrast' group: the pixel contrast loss on exactly its inputs.

    python -m benchmarks.bench_contrast [--case NAME ...] [--threads 2] [--repeats N] [--warmup N] [--json out.json]

Cases (names as ref_bench's; inputs from benchmarks.ref_inputs, settings of the official
configs H_48_D_4.json / H_48_D_4_MEM.json):
  contrast_nomem       pixel_contrast_loss forward under no_grad (labels at 512x1024, embed 128x256)
  contrast_nomem_fwbw  forward + backward to the embedding (a leaf; its .grad is dropped before a call)
  contrast_mem         with the pixel + segment queues [19, 2 x 5000, 256]
  contrast_mem_fwbw    same, forward + backward
torch.manual_seed(99) before every call, as ref_bench (the sampler's random draws).
"""

from __future__ import annotations

import torch

from benchmarks.common import run_cases_cli
from benchmarks.ref_inputs import CONTRAST_IGNORE, CONTRAST_SETTINGS, contrast_inputs
from ctxseg.engine.bench import measure
from ctxseg.losses.contrast import pixel_contrast_loss

# (warm-up, repeats) per case, as ref_bench's defaults
DEFAULT_RUNS = {
    "contrast_nomem": (2, 7),
    "contrast_nomem_fwbw": (1, 5),
    "contrast_mem": (2, 7),
    "contrast_mem_fwbw": (1, 5),
}
RUNS: dict = {"repeats": None, "warmup": None}  # set by benchmarks.side_by_side; None: DEFAULT_RUNS


def _loss(data: dict, embed: torch.Tensor, with_queue: bool) -> torch.Tensor:
    torch.manual_seed(99)
    res = pixel_contrast_loss(
        embed,
        data["labels"],
        data["predict"],
        ignore_index=CONTRAST_IGNORE,
        queue=data["queue"] if with_queue else None,
        **CONTRAST_SETTINGS[with_queue],
    )
    return res.loss


def case_forward(data: dict, with_queue: bool, repeats: int, warmup: int) -> dict:
    def run():
        with torch.no_grad():
            _loss(data, data["embed"], with_queue)

    return measure(run, repeats, warmup)


def case_forward_backward(data: dict, with_queue: bool, repeats: int, warmup: int) -> dict:
    leaf = data["embed"].detach().clone().requires_grad_(True)

    def run():
        leaf.grad = None
        _loss(data, leaf, with_queue).backward()

    return measure(run, repeats, warmup)


def run_cases(names, repeats: int | None = None, warmup: int | None = None) -> dict:
    results = {}
    for with_queue in (False, True):
        wanted = [n for n in names if (n.startswith("contrast_mem")) == with_queue]
        if not wanted:
            continue
        data = contrast_inputs(with_queue)
        for name in wanted:
            w, r = DEFAULT_RUNS[name]
            w, r = warmup if warmup is not None else w, repeats if repeats is not None else r
            fn = case_forward_backward if name.endswith("_fwbw") else case_forward
            results[name] = fn(data, with_queue, r, w)
        del data
    return results


# the side-by-side convention (benchmarks.side_by_side): case name -> () -> measurement
CASES: dict = {name: (lambda n=name: run_cases([n], RUNS["repeats"], RUNS["warmup"])[n]) for name in DEFAULT_RUNS}


def main(argv=None) -> dict:
    return run_cases_cli(__doc__, CASES, RUNS, argv)


if __name__ == "__main__":
    main()
