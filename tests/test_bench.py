"""`ctxseg bench`: runs on the demo recipe at a tiny size and writes every documented field.

Timings are not asserted (benchmarks are not timed tests); their presence and sanity are."""

from __future__ import annotations

import json

from tests.conftest import run_cli


def test_bench_demo_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--recipe", "demo", "--height", "32", "--width", "32", "--batch", "2", "--repeats", "1",
                   "--warmup", "0", "--set", "eval.crop_size=[24,24]", "--set", "eval.stride=[16,16]", "--json", str(out),
                   cwd=tmp_path)
    assert "train step" in proc.stdout and "inference / image, slide" in proc.stdout
    r = json.loads(out.read_text())
    assert r["recipe"] == "demo" and r["input"] == {"height": 32, "width": 32, "batch": 2}
    assert r["params"] == r["params_trainable"] > 1_000_000  # ResNet-18 half width + ASPP: ~3.5 M
    assert r["flops"]["train_per_image"] > r["flops"]["inference_per_image"] > 0
    assert r["memory_kind"] in ("cpu_peak_rss_per_phase", "cpu_peak_rss_process_high_water_mark", "cuda_max_memory_allocated")
    assert {"cpu", "cpus", "torch"} <= set(r["machine"])
    tr = r["train"]
    assert tr["step_time_s"] > 0 and abs(tr["images_per_s"] - 2 / tr["step_time_s"]) < 1e-6 and len(tr["times_s"]) == 1
    for phase in ("inference_whole", "inference_slide"):
        assert r[phase]["time_per_image_s"] > 0 and r[phase]["peak_memory_bytes"] > 0
    assert r["inference_slide"]["windows"] == 4 and r["inference_slide"]["crop"] == [24, 24]
    assert tr["peak_memory_bytes"] >= tr.get("start_rss_bytes", 0) > 0 or r["memory_kind"].startswith("cuda")
    assert r["overrides"] == ["eval.crop_size=[24,24]", "eval.stride=[16,16]"]


def test_bench_rejects_bad_phase():
    import pytest

    from ctxseg.cli.bench import bench_cmd
    from ctxseg.errors import UserError

    with pytest.raises(UserError, match="unknown nope"):
        bench_cmd(recipe="demo", height=None, width=None, batch=None, repeats=1, warmup=0, device=None,
                  phases="train,nope", json_path=None, set=None)


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
