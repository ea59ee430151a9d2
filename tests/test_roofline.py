"""`ctxseg bench --roofline`: this machine's ceilings, then each phase's achieved GFLOP/s and its
fraction of the convolution ceiling, with the top operators. Figures are not asserted (no timed
tests); their consistency is: FLOPs / seconds, the windows of a slide, the exclusion of models whose
FLOPs the counter overstates."""

from __future__ import annotations

import json

import pytest
import torch

from ctxseg.engine import roofline


def test_ceilings_measure_every_case():
    c = roofline.measure_ceilings("cpu", repeats=1, scale=0.05)
    assert set(c) == set(roofline.CEILINGS)
    for case in c.values():
        assert case["gflops"] > 0 and case["seconds"] > 0 and "not a ceiling" in case["what"]


def _result(batch=2):
    return {
        "input": {"batch": batch},
        "flops": {"train_per_image": 3e9, "inference_per_image": 1e9, "slide_per_image": 4e9},
        "train": {"step_time_s": 0.5},
        "inference_whole": {"time_per_image_s": 0.1},
        "inference_slide": {"time_per_image_s": 0.8},
    }


def test_rows_are_flops_over_time_against_the_conv_ceiling():
    ceilings = {k: {"gflops": 100.0} for k in roofline.CEILINGS}
    ceilings["conv3x3_bf16"] = {"gflops": 400.0}
    rows = {r["phase"]: r for r in roofline.roofline_rows(_result(), ceilings, grouped=False)}
    assert rows["train"]["flops"] == 6e9 and rows["train"]["gflops"] == pytest.approx(12.0)
    assert rows["train"]["of_conv_ceiling"] == pytest.approx(0.12)
    assert rows["inference_whole"]["of_conv_ceiling"] == pytest.approx(0.10)
    assert rows["inference_slide"]["gflops"] == pytest.approx(5.0)
    bf16 = {r["phase"]: r for r in roofline.roofline_rows(_result(), ceilings, False, precision="bf16")}
    assert bf16["train"]["of_conv_ceiling"] == pytest.approx(0.03)  # against the bf16 convolution
    grouped = {r["phase"]: r for r in roofline.roofline_rows(_result(), ceilings, grouped=True)}
    assert "of_conv_ceiling" not in grouped["train"] and "overcounts" in grouped["train"]["excluded"]
    assert grouped["inference_whole"]["of_conv_ceiling"] == pytest.approx(0.10)  # forward counts are right


def test_grouped_convolutions_are_detected():
    assert roofline.has_grouped_convs(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8)))
    assert not roofline.has_grouped_convs(torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3)))


def test_top_operators_of_a_call():
    conv = torch.nn.Conv2d(4, 4, 3)
    x = torch.randn(1, 4, 32, 32)
    ops = roofline.top_operators(lambda: conv(x).sum().backward(), torch.device("cpu"))
    assert ops and all(0 <= o["share"] <= 1 for o in ops) and sum(o["share"] for o in ops) <= 1 + 1e-9
    assert any("conv" in o["op"] for o in ops)


def test_bench_roofline_writes_rows_and_top_operators(tmp_path, monkeypatch):
    from ctxseg.cli.bench import bench_cmd

    fast = roofline.measure_ceilings  # full-size ceilings take seconds; the shapes do not matter here
    monkeypatch.setattr(roofline, "measure_ceilings", lambda device, **k: fast(device, repeats=1, scale=0.05))
    out = tmp_path / "bench.json"
    bench_cmd(
        recipe="demo",
        height=32,
        width=32,
        batch=2,
        repeats=1,
        warmup=0,
        device="cpu",
        phases=None,
        json_path=out,
        compile=False,
        threads=None,
        roofline=True,
        set=["eval.crop_size=[24,24]", "eval.stride=[16,16]"],
    )
    r = json.loads(out.read_text())
    assert set(r["ceilings"]) == set(roofline.CEILINGS)
    rows = {row["phase"]: row for row in r["roofline"]}
    assert set(rows) == {"train", "inference_whole", "inference_slide"}
    assert rows["train"]["gflops"] == pytest.approx(r["flops"]["train_per_image"] * 2 / r["train"]["step_time_s"] / 1e9)
    # the slide runs 4 windows of 24x24: its FLOPs are 4 x a 24x24 whole-image forward
    from ctxseg.config import load_recipe
    from ctxseg.engine.bench import inference_flops_meta

    assert r["flops"]["slide_per_image"] == 4 * inference_flops_meta(load_recipe("demo"), 24, 24)
    for phase in rows:
        assert r[phase]["top_ops"] and 0 < rows[phase]["of_conv_ceiling"]
