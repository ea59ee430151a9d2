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


@pytest.mark.parametrize("name", ["bench_contrast", "bench_mcibi", "bench_cac", "bench_ocr", "side_by_side", "common"])
def test_tools_do_nothing_on_import(name, capsys):
    sys.modules.pop(f"benchmarks.{name}", None)
    mod = importlib.import_module(f"benchmarks.{name}")
    assert capsys.readouterr().out == ""
    assert callable(mod.main if name != "common" else mod.run_cases_cli)
    assert name in ("side_by_side", "common") or mod.CASES


def test_generators_reproduce_ref_bench():
    from benchmarks import ref_inputs

    rb = _ref_bench()
    for seed, args in ((1, (2, 40, 56, 7, 19, -1, 0.2)), (2, (1, 33, 20, 16, 150, -100, 0.08))):
        want = rb.voronoi_labels(torch, torch.Generator().manual_seed(seed), *args)
        got = ref_inputs.voronoi_labels(torch.Generator().manual_seed(seed), *args)
        assert torch.equal(got, want)
    target = ref_inputs.voronoi_labels(torch.Generator().manual_seed(3), 2, 16, 24, 5, 19, -1, 0.2)
    want = rb.blob_errors(torch, torch.Generator().manual_seed(4), target, 19, -1, 0.2, 12)
    got = ref_inputs.blob_errors(torch.Generator().manual_seed(4), target, 19, -1, 0.2, 12)
    assert torch.equal(got, want)


def test_measure_returns_the_side_by_side_record():
    from ctxseg.engine.bench import measure

    calls = []
    res = measure(lambda: calls.append(torch.ones(1000).sum()), repeats=3, warmup=1)
    assert len(calls) == 5  # warm-up + 3 timed + 1 for the memory figure
    assert len(res["times_s"]) == 3 and res["median_s"] >= 0
    assert res["loadavg"] == [res["loadavg_before"], res["loadavg_after"]]  # ref_bench's [before, after] pair


# ------------------------------------------------------------------------------------------------
# one command line for every bench script (benchmarks.common)

BENCH_MODULES = ["bench_contrast", "bench_mcibi", "bench_cac", "bench_ocr"]


def _fake_case(calls: list, runs: dict):
    from ctxseg.engine.bench import measure

    def case():
        calls.append((runs.get("repeats"), runs.get("warmup"), torch.get_num_threads()))
        res = measure(lambda: sum(range(100)), 1, 0, memory_call=False)
        res.update(
            memory_sum_after=0.0, cac=dict(res), plain=dict(res), overhead=0.0
        )  # what each script's summary prints
        return res

    return case


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_every_bench_script_uses_the_shared_command_line(name, tmp_path, monkeypatch, capsys):
    """--case (comma lists), --repeats / --warmup into RUNS, --threads, --json {machine, argv, results}."""
    import json

    mod = importlib.import_module(f"benchmarks.{name}")
    calls: list = []
    monkeypatch.setattr(mod, "RUNS", dict(mod.RUNS))  # main() hands the script's RUNS to the runner
    monkeypatch.setattr(mod, "CASES", {k: _fake_case(calls, mod.RUNS) for k in "abc"})
    if hasattr(mod, "PAIRS"):  # bench_cac's summary names each case's plain counterpart
        monkeypatch.setattr(mod, "PAIRS", {k: f"plain_{k}" for k in "abc"})
    threads = torch.get_num_threads()
    out = tmp_path / "r.json"
    try:
        res = mod.main(["--case", "c,a", "--repeats", "4", "--warmup", "0", "--threads", "1", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert list(res) == ["c", "a"] and calls == [(4, 0, 1), (4, 0, 1)]
    written = json.loads(out.read_text())
    assert set(written) == {"machine", "argv", "results"} and list(written["results"]) == ["c", "a"]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["c", "a"]


@pytest.mark.parametrize("name", BENCH_MODULES)
def test_unknown_case_is_a_usage_error(name, capsys):
    mod = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as e:
        mod.main(["--case", "no_such_case"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_case" in err and next(iter(mod.CASES)) in err  # names the bad case and the valid ones


def test_tool_commands_from_the_docs(tmp_path):
    """`side_by_side --list` and a bench script's bad --case, as a user types them."""
    import os
    import subprocess

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = lambda *a: subprocess.run([sys.executable, "-m", *a], capture_output=True, text=True, env=env, timeout=300)  # noqa: E731
    listed = run("benchmarks.side_by_side", "--list")
    assert listed.returncode == 0
    for case, module in (
        ("ocrnet_whole_inference", "bench_ocr"),
        ("contrast_mem", "bench_contrast"),
        ("mcibi_update", "bench_mcibi"),
        ("cac_forward_test", "bench_cac"),
    ):
        assert any(line.split() == [case, f"benchmarks.{module}"] for line in listed.stdout.splitlines()), listed.stdout
    bad = run("benchmarks.bench_ocr", "--case", "nope", "--json", str(tmp_path / "x.json"))
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.json").exists()
