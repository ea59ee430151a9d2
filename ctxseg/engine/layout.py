"""Memory layout per machine: NCHW or channels-last, decided from what this CPU measures.

Which layout oneDNN runs faster depends on the CPU, not on the model: on an AVX-512/AMX Xeon the
channels-last (NHWC) convolution kernels took 6-24% less time per OCRNet-HRNetV2p-W18 training step
than NCHW, on an AVX2-only AMD EPYC the same step was 9% *slower* in channels-last
(docs/benchmarks.md). So the layout is not a constant: at first use on a machine, `choose()` times a
few representative convolution blocks in both layouts (interleaved rounds, medians; ~1-3 s) for
training (forward + backward) and for inference (forward, folded BN), and caches the verdict per CPU
model, vector extensions, torch version and thread count in `$CTXSEG_HOME/layout.json`. Channels-last
is chosen only when it is clearly faster (by `MARGIN`): within noise, plain NCHW PyTorch wins.
Results are equal up to float rounding either way (tests/test_training_layout.py).

`CTXSEG_LAYOUT=nchw|channels_last` forces a layout (`auto`, the default, measures). GPUs keep NCHW
(there the choice depends on the card, the precision and cuDNN).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ctxseg.paths import home

ENV = "CTXSEG_LAYOUT"
MARGIN = 0.03  # channels-last must be at least 3% faster to be chosen (run-to-run noise is ~1-3%)
ROUNDS = 5
PHASES = ("train", "infer")
_CHOICES: dict[tuple, LayoutChoice] = {}  # per process: measured (or read) once per phase


@dataclass
class LayoutChoice:
    """The layout one phase runs in on this machine, and why.

    Args:
        channels_last: True to run 4-d weights and activations in channels-last layout.
        reason: one line for logs and `ctxseg bench` (what decided, with the measured figures).
        seconds: calibration medians per layout (empty when not measured: forced, GPU, cached elsewhere).
    """

    channels_last: bool
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "channels-last" if self.channels_last else "NCHW"


def cpu_signature() -> dict:
    """What the layout verdict depends on: CPU model and vector extensions, torch, threads."""
    model, flags = "", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and not model:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            if model and flags:
                break
    model = model or platform.processor() or platform.machine()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16") if f in flags]
    return {"cpu": model, "isa": isa, "torch": torch.__version__, "threads": torch.get_num_threads()}


def _cache_path() -> Path:
    return home() / "layout.json"


def _cache_key(sig: dict, phase: str) -> str:
    return f"{sig['cpu']}|{'+'.join(sig['isa'])}|torch {sig['torch']}|{sig['threads']} threads|{phase}"


def _read_cache() -> dict:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, choice: LayoutChoice) -> None:
    """Best effort: a read-only or full home only costs a calibration in the next process."""
    from ctxseg.io import write_json

    with contextlib.suppress(Exception):
        data = _read_cache()
        data[key] = asdict(choice)
        write_json(_cache_path(), data)


def _block(train: bool) -> nn.Module:
    """Representative of the dense models' convolutions: 3x3 residual pairs (HRNet branches,
    ResNet-D8 dilated stages) and a 1x1 bottleneck expansion, with BN + ReLU."""
    torch.manual_seed(0)
    c = 64
    layers = [
        nn.Conv2d(c, c, 3, padding=1, bias=not train),
        nn.BatchNorm2d(c) if train else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=2, dilation=2, bias=not train),
        nn.BatchNorm2d(c) if train else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(c, 4 * c, 1, bias=not train),
        nn.BatchNorm2d(4 * c) if train else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(4 * c, c, 1, bias=not train),
    ]
    return nn.Sequential(*layers).train(train)


def measure(phase: str, rounds: int = ROUNDS, size: tuple[int, int] = (64, 128)) -> dict[str, float]:
    """Median seconds of one call of the calibration block per layout, rounds interleaved
    (NCHW, channels-last, NCHW, ...) so that a change of machine load hits both alike."""
    train = phase == "train"
    block = _block(train)
    x = torch.randn(2, 64, *size, generator=torch.Generator().manual_seed(0))
    variants = {
        "nchw": (block, x),
        "channels_last": (
            _channels_last_copy(block),
            x.contiguous(memory_format=torch.channels_last),
        ),
    }

    def call(model: nn.Module, inp: torch.Tensor) -> None:
        if train:
            inp = inp.detach().requires_grad_(True)
            model(inp).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(inp)

    times: dict[str, list[float]] = {k: [] for k in variants}
    for model, inp in variants.values():  # warm-up: oneDNN primitive creation, allocator
        call(model, inp)
    for _ in range(rounds):
        for name, (model, inp) in variants.items():
            t0 = time.perf_counter()
            call(model, inp)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _channels_last_copy(block: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(block).to(memory_format=torch.channels_last)


def decide(seconds: dict[str, float], sig: dict) -> LayoutChoice:
    """The verdict from calibration medians: channels-last only when clearly faster."""
    nchw, cl = seconds["nchw"], seconds["channels_last"]
    gain = 1.0 - cl / nchw
    where = f"{sig['cpu']} ({', '.join(sig['isa']) or 'no AVX2'}), {sig['threads']} threads"
    if gain >= MARGIN:
        return LayoutChoice(True, f"channels-last {100 * gain:.0f}% faster than NCHW on {where}", seconds)
    if gain > -MARGIN:
        why = f"channels-last within {100 * MARGIN:.0f}% of NCHW ({100 * gain:+.0f}%) on {where}: plain NCHW"
    else:
        why = f"channels-last {100 * -gain:.0f}% slower than NCHW on {where}"
    return LayoutChoice(False, why, seconds)


def choose(device: torch.device | str, phase: str = "train") -> LayoutChoice:
    """The layout `phase` ("train" or "infer") runs in on `device`: forced by CTXSEG_LAYOUT, cached,
    or measured now (once per machine and phase)."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    device = torch.device(device)
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return LayoutChoice(False, f"{device.type}: NCHW (channels-last is chosen per CPU only)")
    forced = os.environ.get(ENV, "auto").strip().lower().replace("-", "_")
    if forced in ("nchw", "channels_last"):
        return LayoutChoice(forced == "channels_last", f"{ENV}={forced}")
    if forced not in ("", "auto"):
        from ctxseg.errors import UserError

        raise UserError(f"{ENV} must be auto, nchw or channels_last, got '{os.environ[ENV]}'")
    sig = cpu_signature()
    key = _cache_key(sig, phase)
    if key in _CHOICES:
        return _CHOICES[key]
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and {"channels_last", "reason"} <= set(cached):
        reason = f"{cached['reason']} (measured earlier: {_cache_path()})"
        choice = LayoutChoice(bool(cached["channels_last"]), reason, cached.get("seconds", {}))
    else:
        choice = decide(measure(phase), sig)
        _write_cache(key, choice)
    _CHOICES[key] = choice
    return choice


def to_layout(x, channels_last: bool):
    """A module or an image batch in the given layout (a module's 4-d weights; a 4-d tensor)."""
    if not channels_last:
        return x
    if isinstance(x, nn.Module):
        return x.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
