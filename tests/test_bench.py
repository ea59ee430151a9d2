"""`ctxseg bench`: runs on the demo recipe at a tiny size and writes every documented field.

Timings are not asserted (benchmarks are not timed tests); their presence and sanity are."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_bench_demo_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "bench",
        "--recipe",
        "demo",
        "--height",
        "32",
        "--width",
        "32",
        "--batch",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--set",
        "eval.crop_size=[24,24]",
        "--set",
        "eval.stride=[16,16]",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert "train step" in proc.stdout and "inference / image, slide" in proc.stdout
    r = json.loads(out.read_text())
    assert r["recipe"] == "demo" and r["input"] == {"height": 32, "width": 32, "batch": 2}
    assert r["params"] == r["params_trainable"] > 1_000_000  # ResNet-18 half width + ASPP: ~3.5 M
    assert r["flops"]["train_per_image"] > r["flops"]["inference_per_image"] > 0
    assert r["memory_kind"] in (
        "cpu_peak_rss_per_phase",
        "cpu_peak_rss_process_high_water_mark",
        "cuda_max_memory_allocated",
    )
    assert {"cpu", "cpus", "torch"} <= set(r["machine"])
    tr = r["train"]
    assert tr["step_time_s"] > 0 and abs(tr["images_per_s"] - 2 / tr["step_time_s"]) < 1e-6 and len(tr["times_s"]) == 1
    for phase in ("inference_whole", "inference_slide"):
        assert r[phase]["time_per_image_s"] > 0 and r[phase]["peak_memory_bytes"] > 0
    assert r["inference_slide"]["windows"] == 4 and r["inference_slide"]["crop"] == [24, 24]
    assert tr["peak_memory_bytes"] >= tr.get("start_rss_bytes", 0) > 0 or r["memory_kind"].startswith("cuda")
    assert r["overrides"] == ["eval.crop_size=[24,24]", "eval.stride=[16,16]"]
    # the figures the side-by-side tables report: spread and load average with every timing
    for phase in ("train", "inference_whole", "inference_slide"):
        p = r[phase]
        assert p["min_s"] <= p["max_s"] and len(p["cpu_s"]) == 1 and len(p["loadavg"]) == 2
    assert len(r["loadavg_start"]) == 3 and r["compile"] is False


def test_bench_rejects_bad_phase():
    import pytest

    from ctxseg.cli.bench import bench_cmd
    from ctxseg.errors import UserError

    with pytest.raises(UserError, match="unknown nope"):
        bench_cmd(
            recipe="demo",
            height=None,
            width=None,
            batch=None,
            repeats=1,
            warmup=0,
            device=None,
            phases="train,nope",
            json_path=None,
            compile=False,
            threads=None,
            roofline=False,
            set=None,
        )


def test_meta_device_flops_equal_a_real_count_and_flops_only_mode():
    """Inference FLOPs are counted on the meta device (instant at full size); they must equal the
    count over real tensors. With no timed phases only parameters and inference FLOPs are reported."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ctxseg.config import load_recipe
    from ctxseg.engine import bench
    from ctxseg.engine.inference import infer
    from ctxseg.engine.settings import InferenceSettings
    from ctxseg.models.segmentor import build_segmentor

    recipe = load_recipe("demo")
    model = build_segmentor(recipe).eval()
    with FlopCounterMode(display=False) as fc:
        infer(model, torch.zeros(1, 3, 48, 64), InferenceSettings(recipe.data.num_classes))
    assert bench.inference_flops_meta(recipe, 48, 64) == fc.get_total_flops() > 0
    r = bench.run_bench(recipe, 48, 64, phases=())
    assert r["flops"] == {"inference_per_image": fc.get_total_flops(), "train_per_image": None}
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert not {"train", "inference_whole", "inference_slide"} & set(r)


# ------------------------------------------------------------------------------------------
# the one timing helper, ref_bench's inputs, the side-by-side driver
# ------------------------------------------------------------------------------------------


def test_timed_and_measure():
    import torch

    from ctxseg.engine.bench import measure, timed

    calls = []
    times = timed(lambda: calls.append(1), 3, 2, torch.device("cpu"))  # signature used by the bench_* scripts
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    setups = []
    big = []

    def grow():  # ~64 MiB touched: the peak RSS growth must see it
        big.append(torch.ones(16 * 2**20))
        big.clear()

    m = measure(grow, repeats=2, warmup=1, setup=lambda: setups.append(1))
    assert len(setups) == 4  # warm-up + 2 timed + the memory call
    assert m["min_s"] <= m["median_s"] <= m["max_s"] and len(m["times_s"]) == len(m["cpu_s"]) == 2
    assert m["memory_kind"] == "cpu_peak_rss_growth" and len(m["loadavg_before"]) == 3
    assert m["peak_mb"] is None or m["peak_mb"] > 50


def test_ref_inputs_are_ref_bench_inputs():
    """ctxseg's side sees exactly the tensors ref_bench.py gives the official code."""
    import importlib.util
    import sys

    import pytest
    import torch

    from benchmarks import ref_inputs
    from tests.conftest import GOLDEN

    path = GOLDEN.parent / "perf" / "ref_bench.py"  # ../shared/perf next to ../shared/golden
    if not path.exists():
        pytest.skip("../shared/perf/ref_bench.py not present")
    spec = importlib.util.spec_from_file_location("ref_bench_for_test", path)
    rb = importlib.util.module_from_spec(spec)
    sys.modules["ref_bench_for_test"] = rb
    spec.loader.exec_module(rb)
    g1, g2 = torch.Generator().manual_seed(2025), torch.Generator().manual_seed(2025)
    img_ref = rb.smooth_image_u8(torch, g1, (1, 3, 64, 96))
    lab_ref = rb.voronoi_labels(torch, g1, 1, 64, 96, n_cells=32, num_classes=19, ignore_value=255, ignore_prob=0.08)
    img, lab = ref_inputs.seg_batch(g2, 1, 64, 96)
    assert torch.equal(img, img_ref) and torch.equal(lab, lab_ref)


def test_side_by_side_discovers_cases_and_writes_tables(tmp_path, monkeypatch):
    import json

    from benchmarks import side_by_side as sbs

    known = sbs.discover()
    assert {"ocrnet_train_step", "ocrnet_whole_inference", "ocrnet_slide_inference"} <= set(known)
    assert sbs.resolve(["mmseg"], known) == ["ocrnet_train_step", "ocrnet_whole_inference", "ocrnet_slide_inference"]
    official = tmp_path / "ref.json"
    official.write_text(
        json.dumps(
            {"_meta": {}, "ocrnet_whole_inference": {"median_s": 2.0, "min_s": 1.8, "max_s": 2.5, "peak_rss_mb": 900.0}}
        )
    )

    def fake_case(name, module, repeats, warmup, threads):
        assert module == "benchmarks.bench_ocr" and (repeats, warmup, threads) == (2, 0, 2)
        return {
            "median_s": 1.0,
            "min_s": 0.9,
            "max_s": 1.2,
            "peak_mb": 500.0,
            "loadavg_before": [1.5, 1, 1],
            "loadavg_after": [2.5, 1, 1],
        }, f"python -m x {name}"

    monkeypatch.setattr(sbs, "run_ctxseg_case", fake_case)
    out, md = tmp_path / "sbs.json", tmp_path / "sbs.md"
    sbs.main(
        [
            "--case",
            "ocrnet_whole_inference",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--official-json",
            str(official),
            "--out",
            str(out),
            "--markdown",
            str(md),
        ]
    )
    row = json.loads(out.read_text())["cases"]["ocrnet_whole_inference"]
    assert row["ratio"] == 2.0 and row["official_peak_mb"] == 900.0 and row["ctxseg_peak_mb"] == 500.0
    assert row["loadavg_1min"] == [1.5, 2.5]
    text = md.read_text()
    assert "| ocrnet_whole_inference | 2 (1.8–2.5) | 1 (0.9–1.2) | 2.00× | 900 | 500 | 1.5–2.5 |" in text
    assert "python -m x ocrnet_whole_inference" in text


def test_side_by_side_worker_runs_a_case_in_a_fresh_process(tmp_path, monkeypatch):
    """The real subprocess path, on a fast case module that follows the CASES convention."""
    import json
    import sys

    from benchmarks import side_by_side as sbs
    from tests.conftest import REPO

    pkg = tmp_path / "fakecases"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bench_fake.py").write_text(
        "from ctxseg.engine.bench import measure\n"
        "RUNS = {'repeats': 1, 'warmup': 0}\n"
        "def tiny():\n"
        "    return measure(lambda: sum(range(1000)), RUNS['repeats'], RUNS['warmup'])\n"
        "CASES = {'tiny': tiny}\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{__import__('os').pathsep}{tmp_path}")
    res, cmd = sbs.run_ctxseg_case("tiny", "fakecases.bench_fake", 2, 1, 1)
    assert res["repeats"] == 2 and res["warmup"] == 1 and res["torch_threads"] == 1, res
    assert "--worker tiny" in cmd and sys.executable in cmd
    assert json.dumps(res)
