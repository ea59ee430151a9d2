"""How close a model runs to this machine's limit: `ctxseg bench --roofline`.

"Faster than the reference" does not say how much is left; the machine's own ceiling does. First
the ceilings are measured with the same threads: a dense fp32 / bf16 matmul and 3x3 convolutions of
representative shapes (forward, the faster of NCHW and channels-last), the best achieved GFLOP/s
of each. Then every measured phase of `ctxseg bench` is reported as achieved GFLOP/s (FLOPs from
torch.utils.flop_counter, 1 multiply-add = 2 FLOPs, divided by the phase's median time) and as a
fraction of the convolution ceiling of its precision, with the operators that took the most time
(torch.profiler, self CPU/CUDA time of one call).

FLOPs of grouped / depthwise convolutions: torch's counter charges their backward as if they were
dense, so the training FLOPs of MobileNetV2 and separable-ASPP models are overstated; such phases are
reported without a fraction (`excluded`), and the reason is printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# (name, what) of each ceiling; shapes chosen to be compute-bound and like the dense models' layers
CEILINGS = {
    "matmul_fp32": "fp32 matmul 2048x2048x2048",
    "matmul_bf16": "bf16 matmul 2048x2048x2048",
    "conv3x3_fp32": "fp32 conv3x3 256->256 on [2, 256, 64, 128], forward",
    "conv3x3_bf16": "bf16 conv3x3 256->256 on [2, 256, 64, 128], forward",
}


def _best_seconds(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)  # a ceiling: the best the machine did, not the typical


def measure_ceilings(device: torch.device | str = "cpu", repeats: int = 3, scale: float = 1.0) -> dict[str, dict]:
    """GFLOP/s of each CEILINGS case on `device` with the current threads. `scale` < 1 shrinks the
    shapes (tests); the figures are then not ceilings of the machine."""
    device = torch.device(device)
    out: dict[str, dict] = {}
    n = max(int(2048 * scale), 16)
    c, h, w = max(int(256 * scale), 8), max(int(64 * scale), 8), max(int(128 * scale), 8)
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        seconds = _best_seconds(lambda a=a, b=b: torch.mm(a, b), repeats, device)
        out[f"matmul_{tag}"] = {"gflops": 2 * n**3 / seconds / 1e9, "seconds": seconds}
        conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype).eval()
        x = torch.randn(2, c, h, w, device=device).to(dtype)
        flops = 2 * 2 * c * c * 9 * h * w
        best = None
        for fmt in (torch.contiguous_format, torch.channels_last):
            m = conv.to(memory_format=fmt)
            xi = x.contiguous(memory_format=fmt)
            with torch.no_grad():
                s = _best_seconds(lambda m=m, xi=xi: m(xi), repeats, device)
            best = s if best is None else min(best, s)
        out[f"conv3x3_{tag}"] = {"gflops": flops / best / 1e9, "seconds": best}
    for k in out:
        out[k]["what"] = CEILINGS[k] if scale == 1.0 else CEILINGS[k] + f" (shapes x{scale:g}: not a ceiling)"
    return out


def has_grouped_convs(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def phase_flops(result: dict, phase: str) -> float | None:
    """FLOPs of one call of `phase` in a `run_bench` result (a training step: batch images)."""
    flops = result.get("flops", {})
    if phase == "train":
        per = flops.get("train_per_image")
        return None if per is None else per * result["input"]["batch"]
    if phase == "inference_whole":
        return flops.get("inference_per_image")
    if phase == "inference_slide":
        return flops.get("slide_per_image")
    return None


def top_operators(fn: Callable[[], Any], device: torch.device, n: int = 6) -> list[dict]:
    """The operators that took the most self time in one call of `fn` (after one warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"op": e.key, "share": getattr(e, key) / total, "calls": e.count} for e in events[:n]]


def roofline_rows(result: dict, ceilings: dict[str, dict], grouped: bool, precision: str = "fp32") -> list[dict]:
    """One row per measured phase: seconds, FLOPs, achieved GFLOP/s, fraction of the conv ceiling."""
    conv = ceilings[f"conv3x3_{'bf16' if precision in ('bf16', 'fp16') else 'fp32'}"]["gflops"]
    rows = []
    for phase in ("train", "inference_whole", "inference_slide"):
        res = result.get(phase)
        if not isinstance(res, dict):
            continue
        seconds = res.get("step_time_s") or res.get("time_per_image_s")
        flops = phase_flops(result, phase)
        row: dict[str, Any] = {"phase": phase, "seconds": seconds, "flops": flops}
        if flops and seconds:
            row["gflops"] = flops / seconds / 1e9
            if grouped and phase == "train":
                row["excluded"] = "grouped/depthwise convolutions: torch's FLOP counter overcounts their backward"
            else:
                row["of_conv_ceiling"] = row["gflops"] / conv
        rows.append(row)
    return rows
