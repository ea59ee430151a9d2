"""The side-by-side benchmark tools: importing them runs nothing, their inputs are ref_bench's
(../shared/perf/ref_bench.py, the official side), and a case function returns the timing record."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest
import torch

from tests.conftest import GOLDEN

REF_BENCH = GOLDEN.parent / "perf" / "ref_bench.py"


def _ref_bench():
    if not REF_BENCH.exists():
        pytest.skip(f"{REF_BENCH} not present")
    spec = importlib.util.spec_from_file_location("ref_bench_for_tests", REF_BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines functions only (its main is behind __name__)
    return mod


@pytest.mark.parametrize("name", ["bench_contrast", "bench_mcibi", "bench_cac"])
def test_tools_do_nothing_on_import(name, capsys):
    sys.modules.pop(f"ctxseg.tools.{name}", None)
    mod = importlib.import_module(f"ctxseg.tools.{name}")
    assert capsys.readouterr().out == ""
    assert callable(mod.main) and mod.CASES


def test_generators_reproduce_ref_bench():
    from ctxseg.tools import ref_inputs

    rb = _ref_bench()
    for seed, args in ((1, (2, 40, 56, 7, 19, -1, 0.2)), (2, (1, 33, 20, 16, 150, -100, 0.08))):
        want = rb.voronoi_labels(torch, torch.Generator().manual_seed(seed), *args)
        got = ref_inputs.voronoi_labels(torch.Generator().manual_seed(seed), *args)
        assert torch.equal(got, want)
    target = ref_inputs.voronoi_labels(torch.Generator().manual_seed(3), 2, 16, 24, 5, 19, -1, 0.2)
    want = rb.blob_errors(torch, torch.Generator().manual_seed(4), target, 19, -1, 0.2, 12)
    got = ref_inputs.blob_errors(torch.Generator().manual_seed(4), target, 19, -1, 0.2, 12)
    assert torch.equal(got, want)


def test_case_function_returns_timings():
    from ctxseg.engine.bench import measure_case

    calls = []
    res = measure_case(lambda: calls.append(torch.ones(1000).sum()), repeats=3, warmup=1)
    assert len(calls) == 5  # warm-up + 3 timed + 1 for the memory figure
    assert len(res["times_s"]) == 3 and res["median_s"] >= 0 and len(res["loadavg"]) == 2
