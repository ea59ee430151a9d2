"""ctxseg's side of ref_bench.py's `mmseg` group: OCRNet HRNetV2p-W18 on exactly its inputs.

    python -m benchmarks.bench_ocr [--case NAME ...] [--threads 2] [--repeats 3] [--warmup 1] [--json out.json]

Cases (names as in ref_bench.py; `CASES` maps each to a function returning engine.bench.measure's dict):
  ocrnet_train_step        recipe ocrnet-hr18-cityscapes-80k, random init, batch 2, 512x1024: forward,
                           decode + region (0.4) CE losses, backward, SGD step, zero_grad
  ocrnet_whole_inference   1 image 512x1024: normalise + infer(mode="whole") + argmax
  ocrnet_slide_inference   1 image 1024x2048: normalise + infer(mode="slide", crop 512x1024,
                           stride 341x341: 3x5 = 15 windows, as ref_bench sets mmseg's test_cfg) + argmax
Inputs: benchmarks.ref_inputs (ref_bench's generators and seeds: 2024 for the train batch, 2025 for
the inference images, the 512x1024 one drawn first). mmseg's test_step includes its preprocessing
and the argmax, so ctxseg's side includes normalisation and argmax too. Threads: 2 (as ref_bench).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

RECIPE = "ocrnet-hr18-cityscapes-80k"
RUNS = {"repeats": 3, "warmup": 1}


def _recipe():
    from ctxseg.config import load_recipe
    from ctxseg.engine.offline import without_pretrained

    return without_pretrained(load_recipe(RECIPE))


def _model(train: bool):
    from ctxseg.models.segmentor import build_segmentor

    torch.manual_seed(0)
    return build_segmentor(_recipe()).train(train)


def ocrnet_train_step() -> dict[str, Any]:
    from benchmarks.ref_inputs import mmseg_normalize, seg_batch
    from ctxseg.engine.bench import measure
    from ctxseg.engine.trainer import build_optimizer, to_training_layout
    from ctxseg.losses import Criterion

    recipe = _recipe()
    model = to_training_layout(_model(True), torch.device("cpu"))  # as the trainer lays it out
    optimizer = build_optimizer(model, recipe)
    criterion = Criterion(recipe)
    images_u8, labels = seg_batch(torch.Generator().manual_seed(2024), 2, 512, 1024)

    def step():
        # mmseg's train_step preprocesses inside the timed call too
        images = to_training_layout(mmseg_normalize(images_u8), torch.device("cpu"))
        outputs = model(images, labels)
        loss, _ = criterion(model, outputs, labels, 1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    res = measure(step, RUNS["repeats"], RUNS["warmup"], setup=lambda: torch.manual_seed(7))
    res["settings"] = dict(recipe=RECIPE, batch=2, size=[512, 1024], init="random")
    return res


def _inference(height: int, width: int, mode: str) -> dict[str, Any]:
    from benchmarks.ref_inputs import mmseg_normalize, seg_batch
    from ctxseg.engine.bench import measure
    from ctxseg.engine.inference import infer
    from ctxseg.engine.settings import InferenceSettings

    model = _model(False)
    gen = torch.Generator().manual_seed(2025)
    images_u8, _ = seg_batch(gen, 1, 512, 1024)  # ref_bench draws the whole-inference image first
    if (height, width) != (512, 1024):
        images_u8, _ = seg_batch(gen, 1, height, width)
    crop, stride = (512, 1024), (341, 341)

    def run():
        scores = infer(
            model, mmseg_normalize(images_u8), InferenceSettings(num_classes=19, mode=mode, crop=crop, stride=stride)
        )
        return scores.argmax(1)

    res = measure(run, RUNS["repeats"], RUNS["warmup"])
    res["settings"] = dict(
        recipe=RECIPE,
        size=[height, width],
        mode=mode,
        init="random",
        **({"crop": list(crop), "stride": list(stride), "windows": 15} if mode == "slide" else {}),
    )
    return res


def ocrnet_whole_inference() -> dict[str, Any]:
    return _inference(512, 1024, "whole")


def ocrnet_slide_inference() -> dict[str, Any]:
    return _inference(1024, 2048, "slide")


CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "ocrnet_train_step": ocrnet_train_step,
    "ocrnet_whole_inference": ocrnet_whole_inference,
    "ocrnet_slide_inference": ocrnet_slide_inference,
}


def main(argv=None) -> dict:
    from benchmarks.common import run_cases_cli

    return run_cases_cli(__doc__, CASES, RUNS, argv)


if __name__ == "__main__":
    main()
