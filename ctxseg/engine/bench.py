"""Speed and size of a recipe on synthetic input: `ctxseg bench`.

What is measured (each timing: `warmup` untimed runs, then the median of `repeats` timed runs,
with CUDA synchronised around each run):
  train            one optimizer step: forward + losses + backward + optimizer step + plug-in
                   after-step hooks, at `batch` images of HxW (the recipe's optimizer and losses)
  inference_whole  ctxseg.engine.inference.infer(mode="whole") on one image, per image
  inference_slide  infer(mode="slide") with the recipe's eval crop/stride (clipped to HxW)
  params, FLOPs    parameter count; FLOPs from torch.utils.flop_counter (1 multiply-add = 2 FLOPs)
                   of one inference forward (counted on the meta device: shapes only, instant at
                   any size) and of one training forward+backward (real tensors; only when the
                   train phase runs), per image. torch's counter overcounts the backward of
                   grouped/depthwise convolutions, so training FLOPs of MobileNetV2 / separable
                   ASPP models are overstated (docs/benchmarks.md)
Backbones are randomly initialised (`pretrained` is dropped): weights do not change timings, and
loading them could need a download. Synthetic input means data loading is not included.
Peak memory: on CUDA torch.cuda.max_memory_allocated per phase (reset before each). On CPU the peak
resident set size of the process during the phase (Linux VmHWM, reset before each phase through
/proc/self/clear_refs; it includes the Python + torch baseline, so `start_rss_bytes` is reported
beside it). Where the counter cannot be reset (non-Linux) it falls back to ru_maxrss, a process
high-water mark that only grows; `memory_kind` says which one the figures are.

This module is the project's one timing helper: `measure()` (the figures ../shared/perf/ref_bench.py
reports for the official code: median / min / max, peak memory growth of a call, process CPU time,
load average) is what `ctxseg bench`, the per-method scripts benchmarks/bench_*.py and the
side-by-side driver (python -m benchmarks.side_by_side) all use; `timed()` is its bare loop (a
list of wall times), for callers that interleave two functions call by call (bench_cac's ABBA).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from ctxseg.config import Recipe
from ctxseg.engine.offline import without_pretrained
from ctxseg.engine.settings import InferenceSettings

PHASES = ("inference_whole", "inference_slide", "train")


def machine() -> dict[str, Any]:
    """A short description of where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """`warmup` untimed calls, then the wall time of each of `repeats` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none): on a shared machine the
    timings mean little without it."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> None:
    """Return freed heap memory to the OS, so a call's peak RSS growth is its working set (glibc only)."""
    try:
        import ctypes
        import ctypes.util

        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(
    fn: Callable[[], Any],
    repeats: int = 3,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    setup: Callable[[], Any] | None = None,
    memory_call: bool = True,
) -> dict[str, Any]:
    """Time `fn` the way ref_bench.py times the official code, and add where it ran.

    `setup()` (untimed) runs before every call (re-seeding, resetting state). Returns median_s,
    min_s, max_s, times_s, cpu_s (this process's CPU time per call: on a loaded machine wall time
    also counts the waits for a core), loadavg_before/after, and peak memory: on CUDA
    max_memory_allocated growth over the call; on CPU the peak RSS growth of one extra untimed
    call made after malloc_trim (peak_rss_mb, as ref_bench's), or None where it cannot be measured.
    `loadavg` holds the same two load averages as one [before, after] pair, as ref_bench writes them."""
    import gc

    device = torch.device(device)
    load_before = load_average()
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    _sync(device)
    times, cpu = [], []
    for _ in range(repeats):
        if setup:
            setup()
        gc.collect()
        c = time.process_time()
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    peak_mb = None
    if memory_call:
        if setup:
            setup()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            _malloc_trim()
            if reset_peak_rss():
                base = rss_now()
                fn()
                peak_mb = (peak_rss() - base) / 2**20
    load_after = load_average()
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
        "warmup": warmup,
        "times_s": [round(t, 4) for t in times],
        "cpu_s": [round(c, 3) for c in cpu],
        "peak_mb": None if peak_mb is None else round(peak_mb, 1),
        "memory_kind": "cuda_max_allocated_growth" if device.type == "cuda" else "cpu_peak_rss_growth",
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "loadavg": [load_before, load_after],  # the [before, after] pair as ref_bench.py writes it
        "torch_threads": torch.get_num_threads(),
    }


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            line = next((x for x in f if x.startswith(field + ":")), None)
        return int(line.split()[1]) if line else None
    except (OSError, ValueError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where unsupported.

    Why not ru_maxrss: it is a process-wide high-water mark that never goes down, and Linux even
    carries it over fork + exec, so a fresh subprocess would report its parent's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size in bytes: VmHWM since the last reset (Linux), else ru_maxrss."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def rss_now() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


def synthetic_batch(recipe: Recipe, batch: int, height: int, width: int, device: torch.device, seed: int = 0):
    """Normalised-looking images and blocky label maps (regions, not per-pixel noise, so sampling-based
    losses such as pixel contrast see realistic class counts)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    coarse = torch.randint(
        0, recipe.data.num_classes, (batch, 1, max(height // 16, 1), max(width // 16, 1)), generator=g
    )
    labels = torch.nn.functional.interpolate(coarse.float(), size=(height, width), mode="nearest")[:, 0].long()
    return images.to(device), labels.to(device)


def _build(recipe: Recipe, device: torch.device):
    from ctxseg.models.segmentor import build_segmentor

    torch.manual_seed(0)
    return build_segmentor(recipe).to(device)


def _autocast(recipe: Recipe, device: torch.device):
    mp_ = recipe.train.mixed_precision
    if device.type != "cuda" or mp_ == "no":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast("cuda", dtype=torch.float16 if mp_ == "fp16" else torch.bfloat16)


def bench_train(
    recipe: Recipe,
    height: int,
    width: int,
    batch: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    compile: bool = False,
    profile: bool = False,
) -> dict:
    from ctxseg.engine.trainer import build_optimizer, to_training_layout
    from ctxseg.losses import Criterion

    model = to_training_layout(_build(recipe, device).train(), device)  # the trainer's layout
    optimizer = build_optimizer(model, recipe)
    criterion = Criterion(recipe).to(device)
    images, labels = synthetic_batch(recipe, batch, height, width, device)
    images = to_training_layout(images, device)
    # mid-schedule step: losses gated by a warm-up (pixel contrast) are active, as for most of training
    step = max((recipe.train.iters or 2) // 2, 1)
    lr = optimizer.param_groups[0]["lr"]
    if compile:
        from ctxseg.engine import compile_cache

        compile_cache.configure()  # compiled code persists across runs (issue 23 §4)
    forward = torch.compile(model) if compile else model

    def train_step():
        with _autocast(recipe, device):
            outputs = forward(images, labels)
            loss, _ = criterion(model, outputs, labels, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.after_train_step(outputs, labels, step, lr)

    m = measure(train_step, repeats, warmup, device, memory_call=False)
    t = m["median_s"]
    out = {
        "step_time_s": t,
        "images_per_s": batch / t,
        "min_s": m["min_s"],
        "max_s": m["max_s"],
        "times_s": m["times_s"],
        "cpu_s": m["cpu_s"],
        "loadavg": m["loadavg"],
    }
    if profile:  # after the timing: the profiler's overhead must not reach the figures
        from ctxseg.engine.roofline import top_operators

        out["top_ops"] = top_operators(train_step, device)
    return out


def bench_inference(
    recipe: Recipe,
    mode: str,
    height: int,
    width: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    profile: bool = False,
) -> dict:
    from ctxseg.engine.inference import infer

    model = _build(recipe, device).eval()
    images, _ = synthetic_batch(recipe, 1, height, width, device)
    e = recipe.eval
    crop = (min(e.crop_size[0], height), min(e.crop_size[1], width))
    stride = (min(e.stride[0], crop[0]), min(e.stride[1], crop[1]))

    # one forward pass per window or image: the mode is timed, not the recipe's scales/flip
    settings = InferenceSettings.from_recipe(recipe).with_(
        mode=mode, crop=crop, stride=stride, scales=(1.0,), flip=False
    )

    def run():
        with _autocast(recipe, device):
            infer(model, images, settings)

    m = measure(run, repeats, warmup, device, memory_call=False)
    t = m["median_s"]
    out = {
        "time_per_image_s": t,
        "images_per_s": 1 / t,
        "min_s": m["min_s"],
        "max_s": m["max_s"],
        "times_s": m["times_s"],
        "cpu_s": m["cpu_s"],
        "loadavg": m["loadavg"],
    }
    if mode == "slide":
        rows = max(height - crop[0] + stride[0] - 1, 0) // stride[0] + 1
        cols = max(width - crop[1] + stride[1] - 1, 0) // stride[1] + 1
        out.update(crop=list(crop), stride=list(stride), windows=rows * cols)
    if profile:
        from ctxseg.engine.roofline import top_operators

        out["top_ops"] = top_operators(run, device)
    return out


def _inference_flops(model, recipe: Recipe, images: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from ctxseg.engine.inference import infer, plain_inference

    # the plain model: the fused inference ops are not aten convolutions the counter knows
    with FlopCounterMode(display=False) as fc, plain_inference():
        infer(model, images, InferenceSettings(recipe.data.num_classes, align_corners=recipe.model.align_corners))
    return int(fc.get_total_flops())


def inference_flops_meta(recipe: Recipe, height: int, width: int) -> int:
    """Inference FLOPs per image counted on the meta device: shapes only, no compute, no memory,
    so full-size figures of big models take seconds on any machine."""
    with torch.device("meta"):
        model = build_segmentor_for_bench(recipe).eval()
    return _inference_flops(model, recipe, torch.empty(1, 3, height, width, device="meta"))


def build_segmentor_for_bench(recipe: Recipe):
    from ctxseg.models.segmentor import build_segmentor

    return build_segmentor(without_pretrained(recipe))


def count_flops(recipe: Recipe, height: int, width: int, device: torch.device, train: bool = True) -> dict:
    """FLOPs per image of one inference forward (whole mode) and one training forward + backward
    (None when `train` is False: it needs real tensors, i.e. a real training step's compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ctxseg.losses import Criterion

    try:  # meta device first (instant); models with data-dependent code fall back to real tensors
        inference = inference_flops_meta(recipe, height, width)
    except Exception:  # noqa: BLE001
        model = _build(recipe, device).eval()
        inference = _inference_flops(model, recipe, synthetic_batch(recipe, 1, height, width, device)[0])
    if not train:
        return {"inference_per_image": int(inference), "train_per_image": None}
    model = _build(recipe, device).train()
    images, labels = synthetic_batch(recipe, 2, height, width, device)  # 2: training-mode BN needs > 1 value
    criterion = Criterion(recipe).to(device)
    with FlopCounterMode(display=False) as fc:
        outputs = model(images, labels)
        loss, _ = criterion(model, outputs, labels, max((recipe.train.iters or 2) // 2, 1))
        loss.backward()
    return {"inference_per_image": int(inference), "train_per_image": int(fc.get_total_flops() // 2)}


def _run_phase(phase: str, recipe: Recipe, cfg: dict, device: torch.device, resettable: bool) -> dict:
    """One phase; adds its peak memory (and, on CPU, the RSS it started from)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        if resettable:
            reset_peak_rss()
        start_rss = rss_now()
    if phase == "train":
        res = bench_train(
            recipe,
            cfg["height"],
            cfg["width"],
            cfg["batch"],
            cfg["repeats"],
            cfg["warmup"],
            device,
            cfg.get("compile", False),
            cfg.get("profile", False),
        )
    else:
        mode = phase.split("_")[1]
        res = bench_inference(
            recipe, mode, cfg["height"], cfg["width"], cfg["repeats"], cfg["warmup"], device, cfg.get("profile", False)
        )
    if device.type == "cuda":
        res["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    else:
        res["peak_memory_bytes"] = peak_rss()
        res["start_rss_bytes"] = start_rss
        # growth over the RSS before the phase (so it includes building the model and inputs)
        res["peak_growth_bytes"] = max(res["peak_memory_bytes"] - start_rss, 0)
    return res


def _compile_cache_dir() -> str | None:
    from ctxseg.engine import compile_cache

    d = compile_cache.configure()
    return None if d is None else str(d)


def run_bench(
    recipe: Recipe,
    height: int,
    width: int,
    batch: int = 2,
    repeats: int = 5,
    warmup: int = 2,
    device: str | torch.device | None = None,
    phases: tuple[str, ...] = PHASES,
    progress: Callable[[str], None] | None = None,
    compile: bool = False,
    profile: bool = False,
) -> dict:
    """All measurements as one JSON-able dict (see the module docstring). compile: torch.compile
    the training forward and the inference model (the warm-up runs pay the compile time).
    profile: also list each phase's top operators (one more call under torch.profiler, untimed)."""
    from ctxseg.engine.allocator import keep_freed_memory
    from ctxseg.engine.inference import set_compile

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    allocator = keep_freed_memory() if device.type == "cpu" else None  # as `ctxseg train` runs on the CPU
    recipe = without_pretrained(recipe)
    resettable = device.type == "cpu" and reset_peak_rss()
    cfg = {
        "height": height,
        "width": width,
        "batch": batch,
        "repeats": repeats,
        "warmup": warmup,
        "compile": compile,
        "profile": profile,
    }
    try:
        with torch.device("meta"):  # counting needs shapes only
            model = build_segmentor_for_bench(recipe)
    except Exception:  # noqa: BLE001 - a constructor that computes on its tensors: build for real
        model = _build(recipe, torch.device("cpu"))
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    if progress:
        progress("flops")
    result: dict[str, Any] = {
        "recipe": recipe.name,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "machine": machine(),
        "input": {"height": height, "width": width, "batch": batch},
        "repeats": repeats,
        "warmup": warmup,
        "params": params,
        "params_trainable": trainable,
        "flops": count_flops(recipe, height, width, device, train="train" in phases),
        "memory_kind": "cuda_max_memory_allocated"
        if device.type == "cuda"
        else ("cpu_peak_rss_per_phase" if resettable else "cpu_peak_rss_process_high_water_mark"),
        "allocator": None if allocator is None else {"name": allocator.name, "reason": allocator.reason},
        "compile": compile,
        "compile_cache": _compile_cache_dir() if compile else None,
        "loadavg_start": load_average(),
    }
    set_compile(compile)
    try:
        for phase in phases:
            if progress:
                progress(phase)
            result[phase] = _run_phase(phase, recipe, cfg, device, resettable)
            if phase == "inference_slide":  # FLOPs of the windows actually run (meta device: shapes only)
                crop = result[phase]["crop"]
                result["flops"]["slide_per_image"] = result[phase]["windows"] * inference_flops_meta(recipe, *crop)
    finally:
        set_compile(False)
    result["loadavg_end"] = load_average()
    return result
