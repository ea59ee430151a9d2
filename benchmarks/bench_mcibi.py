"""ctxseg's side of ref_bench's 'mcibi' group: the MCIBI memory update on exactly its inputs.

    python -m benchmarks.bench_mcibi [--case NAME ...] [--threads 2] [--repeats 5] [--warmup 1] [--json out.json]

Cases (names as ref_bench's; inputs from benchmarks.ref_inputs; cosine_similarity strategy,
150 classes, 1 slot, momentum 0.9 / 0.01 x lr 0.005, ignore -100; the memory is reset to the
same all-initialised state before every call, as ref_bench does outside its timing):
  mcibi_update                update_memory with features given at label size [2, 512, 512, 512]
  mcibi_update_with_upsample  what the segmentor's training step does: update_memory from the
                              memory input [2, 512, 64, 64]; ctxseg's update takes the bilinear
                              upsampling into account without materialising it (ref_bench times
                              F.interpolate to 512x512 + the official update)
"""

from __future__ import annotations

from benchmarks.common import default_summary, run_cases_cli
from benchmarks.ref_inputs import MCIBI_MOMENTUM, SSSEG_IGNORE, mcibi_inputs
from ctxseg.engine.bench import measure
from ctxseg.models.context.memory import update_memory

CASE_NAMES = ("mcibi_update", "mcibi_update_with_upsample")
RUNS: dict = {"repeats": 5, "warmup": 1}  # set by benchmarks.side_by_side


def case_update(data: dict, key: str, repeats: int, warmup: int) -> dict:
    memory = data["memory"].clone()

    def run():
        memory.copy_(data["memory"])
        update_memory(memory, data[key], data["segmentation"], MCIBI_MOMENTUM, "cosine_similarity", SSSEG_IGNORE)

    res = measure(run, repeats, warmup)
    res["memory_sum_after"] = float(memory.double().sum())  # same state as ref_bench's output check
    return res


def run_cases(names, repeats: int = 5, warmup: int = 1) -> dict:
    data = mcibi_inputs()
    keys = {"mcibi_update": "features", "mcibi_update_with_upsample": "memory_input"}
    return {name: case_update(data, keys[name], repeats, warmup) for name in names}


# the side-by-side convention (benchmarks.side_by_side): case name -> () -> measurement
CASES: dict = {name: (lambda n=name: run_cases([n], RUNS["repeats"], RUNS["warmup"])[n]) for name in CASE_NAMES}


def summary(name: str, r: dict) -> str:
    return f"{default_summary(name, r)}  memory sum {r['memory_sum_after']:.4f}"


def main(argv=None) -> dict:
    return run_cases_cli(__doc__, CASES, RUNS, argv, summary)


if __name__ == "__main__":
    main()
