"""The one inference function: whole image or sliding window, optional scales + flip.

Returns class scores at the input size. Single scale without flip returns the logits; with
several scales/flips the softmax probabilities are averaged (mmseg's aug_test). Sliding windows
are batched `window_batch` at a time on accelerators and run one at a time on the CPU (where a
batch of windows is no faster, only larger in memory).

Fast path (default; same results up to float rounding, checked by the golden tests and
tests/test_inference.py): an eval-mode model runs through a cached copy of itself with every
BatchNorm folded into the convolution before it and ReLU / residual adds fused into the
convolution call (ctxseg.models.layers.fuse_for_inference), in the memory layout this machine runs
fastest (channels-last or NCHW, measured once per CPU kind: ctxseg.engine.layout).
The copy shares every tensor it does not fold and is rebuilt when the model's weights change
(any in-place update bumps a tensor's version counter). `plain_inference()` switches it off
(FLOP counting, debugging); `set_compile(True)` additionally wraps the copy in torch.compile
(`--compile` of the CLI: faster again once compiled, but compiling takes minutes on a CPU).
"""

from __future__ import annotations

import contextlib
import copy
import weakref

import torch

from ctxseg.engine.settings import InferenceSettings
from ctxseg.models.layers import fuse_for_inference, resize

_FAST = {"enabled": True, "compile": False}
_PREPARED: weakref.WeakKeyDictionary[torch.nn.Module, tuple] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def plain_inference():
    """Run infer() on the model exactly as given (no folded/fused copy, no layout change)."""
    old = _FAST["enabled"]
    _FAST["enabled"] = False
    try:
        yield
    finally:
        _FAST["enabled"] = old


def set_compile(enabled: bool) -> None:
    """Also torch.compile the inference copy (inductor; compile time is paid on the first call
    at each input size). Off by default: on a 2-core CPU compiling HRNet takes minutes."""
    _FAST["compile"] = bool(enabled)
    _PREPARED.clear()


def _fingerprint(model: torch.nn.Module) -> tuple:
    tensors = list(model.parameters()) + list(model.buffers())
    return (
        tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors),
        _FAST["compile"],
        tuple(m.training for m in model.modules()),
        getattr(model, "with_aux", None),
    )


def _dispatch_mode_active() -> bool:
    """True under a TorchDispatchMode (FlopCounterMode, fake/meta tracing): such tools see aten
    convolutions, not the fused oneDNN ops, so they get the plain model."""
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        return _get_current_dispatch_mode() is not None
    except ImportError:  # pragma: no cover - private API moved
        return False


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model to run for inference: a cached, folded/fused copy (in this CPU's layout) of an eval-mode
    model; the model itself when it is training, when the fast path is off, or while tracing."""
    if (
        not _FAST["enabled"]
        or model.training
        or torch.jit.is_tracing()
        or not isinstance(model, torch.nn.Module)
        or _dispatch_mode_active()
    ):
        return model
    key = _fingerprint(model)
    hit = _PREPARED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    try:
        fast = fuse_for_inference(copy.deepcopy(model, memo=shared))  # shares every tensor it does not fold
    except (TypeError, RuntimeError, copy.Error):  # a wrapper that cannot be copied: run it as it is
        return model
    from ctxseg.engine.layout import choose

    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    fast._ctxseg_channels_last = choose(device, "infer").channels_last  # measured once per machine
    if fast._ctxseg_channels_last:
        _to_channels_last(fast)
    if _FAST["compile"]:
        from ctxseg.engine import compile_cache

        compile_cache.configure()  # compiled code persists across runs (issue 23 §4)
        fast = torch.compile(fast)
    _PREPARED[model] = (key, fast)
    return fast


def _to_channels_last(fast: torch.nn.Module) -> None:
    """Give the copy channels-last 4-d weights WITHOUT touching the tensors it shares with the
    model: Module.to(memory_format=...) would assign `param.data` of the shared Parameters, i.e.
    change the model's own weights (their data_ptr, hence the cache key: one rebuild per call) and,
    during training, switch the training weights to channels-last after the first periodic eval (other
    oneDNN kernels: the demo drifted by float rounding from then on)."""
    fmt = torch.channels_last
    for module in fast.modules():
        for store in (module._parameters, module._buffers):
            for name, t in list(store.items()):
                if t is None or t.dim() != 4 or t.is_contiguous(memory_format=fmt):
                    continue
                cl = t.detach().contiguous(memory_format=fmt)
                store[name] = torch.nn.Parameter(cl, requires_grad=False) if isinstance(t, torch.nn.Parameter) else cl


def _input_layout(model, images: torch.Tensor) -> torch.Tensor:
    """Images in the layout of the model that runs them (the prepared copy's; the plain model's NCHW)."""
    if images.dim() != 4 or not getattr(model, "_ctxseg_channels_last", False):
        return images
    return images.contiguous(memory_format=torch.channels_last)


def _forward_logits(model, images: torch.Tensor, align_corners: bool) -> torch.Tensor:
    return resize(model(images)["logits"], images.shape[-2:], align_corners)


def slide_logits(
    model,
    images: torch.Tensor,
    num_classes: int,
    crop: tuple[int, int],
    stride: tuple[int, int],
    window_batch: int = 4,
    align_corners: bool = False,
) -> torch.Tensor:
    """mmseg slide_inference: overlapping windows, edge windows shifted inside, logits averaged."""
    n, _, h, w = images.shape
    ch, cw = crop
    sh, sw = stride
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            boxes.append((y1, y2, x1, x2))
    out = images.new_zeros((n, num_classes, h, w))
    count = images.new_zeros((1, 1, h, w))
    # every window has the same size (min(crop, image)), so windows of all images batch together;
    # on the CPU one at a time: a batch of windows runs no faster there and multiplies the memory
    batch = 1 if images.device.type == "cpu" else max(window_batch, 1)
    for start in range(0, len(boxes), batch):
        chunk = boxes[start : start + batch]
        crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
        logits = _forward_logits(model, _input_layout(model, crops), align_corners)
        for k, (y1, y2, x1, x2) in enumerate(chunk):
            out[:, :, y1:y2, x1:x2] += logits[k * n : (k + 1) * n]
            count[:, :, y1:y2, x1:x2] += 1
        del logits, crops
    return out.div_(count)  # in place: no second full-size score map


def flip_scores(scores: torch.Tensor, flip_pairs) -> torch.Tensor:
    """Undo a horizontal flip on class scores, swapping left/right class channels (LIP)."""
    scores = scores.flip(-1)
    if flip_pairs:
        perm = list(range(scores.shape[1]))
        for a, b in flip_pairs:
            perm[a], perm[b] = b, a
        scores = scores[:, perm]
    return scores


def returns_logits(settings: InferenceSettings) -> bool:
    """True when `infer` returns logits (one scale 1.0, no flip); else it returns averaged probabilities."""
    scales = list(settings.scales) or [1.0]
    return len(scales) == 1 and scales[0] == 1.0 and not settings.flip


@torch.no_grad()
def infer(
    model, images: torch.Tensor, settings: InferenceSettings, out_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Scores [N, C, H, W] at `out_size` (default: the input size) for normalised images."""
    num_classes, mode, crop, stride = settings.num_classes, settings.mode, settings.crop, settings.stride
    scales, flip, flip_pairs = settings.scales, settings.flip, settings.flip_pairs
    window_batch, align_corners = settings.window_batch, settings.align_corners
    h, w = images.shape[-2:]
    out_size = out_size or (h, w)
    model = inference_model(model)

    def run(x):
        if mode == "slide":
            s = slide_logits(model, x, num_classes, crop, stride, window_batch, align_corners)
        else:
            s = _forward_logits(model, _input_layout(model, x), align_corners)
        return resize(s, out_size, align_corners)

    scales = list(scales) or [1.0]
    if returns_logits(settings):
        return run(images)
    total = None
    for s in scales:
        x = images if s == 1.0 else resize(images, (int(h * s + 0.5), int(w * s + 0.5)), align_corners)
        probs = run(x).softmax(1)
        if flip:
            probs = probs + flip_scores(run(x.flip(-1)), flip_pairs).softmax(1)
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))
