"""`ctxseg convert onnx`: export the whole-image inference graph of a checkpoint to ONNX.

The graph is exactly what `ctxseg.engine.inference.infer(mode="whole")` computes for one scale
without flip: Segmentor eval forward -> `logits` -> bilinear resize to the input size. Its input
is the *normalised* RGB image; the normalisation is recorded in the model's metadata_props
(`ctxseg.*` keys) so a deployment knows what to feed:

    x = (image_rgb_float - mean) / std, NCHW float32     (OpenCV reads BGR: flip channels first)

We use the TorchScript exporter (dynamo=False): it needs no onnxscript and traces every model
family ctxseg has. `ctxseg.models.layers.resize` keeps sizes symbolic while tracing, so a
`--dynamic` graph follows the input size.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctxseg.errors import UserError

OPSET = 17


class InferenceGraph(nn.Module):
    """normalised images [N,3,H,W] -> class logits [N,C,H,W] (whole-image mode).

    Args:
        model: a Segmentor (in eval mode); its `logits` are upsampled to the input size.
        align_corners: `align_corners` of the bilinear upsampling (the recipe's model.align_corners).
    """

    def __init__(self, model: nn.Module, align_corners: bool):
        super().__init__()
        self.model = model
        self.align_corners = align_corners

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)["logits"]
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=self.align_corners)


def metadata(recipe, classes: list[str] | None = None, palette=None) -> dict[str, str]:
    """What a deployment needs to feed the graph and read its output (all values are strings)."""
    d = recipe.data
    order, mean, std = "RGB", list(d.mean), list(d.std)
    if d.pipeline == "openseg":  # openseg normalises (x / div - m) / s in its input_mode order (BGR: OpenCV's)
        n = d.openseg.normalize
        order = d.openseg.input_mode
        mean, std = [m * n.div_value for m in n.mean], [v * n.div_value for v in n.std]
    meta = {
        "ctxseg.recipe": recipe.name,
        "ctxseg.input": (
            f"images: float32 [N,3,H,W], {order} channel order, normalised as (pixel - mean) / std on 0..255 values"
        ),
        "ctxseg.output": "logits: float32 [N,num_classes,H,W] at the input size; argmax over dim 1 gives class ids",
        "ctxseg.channel_order": order,
        "ctxseg.note": (
            "images read with OpenCV are BGR: convert to RGB before normalising"
            if order == "RGB"
            else "images read with OpenCV are BGR: feed them in that order (the recipe trains on BGR input)"
        ),
        "ctxseg.mean": json.dumps(mean),
        "ctxseg.std": json.dumps(std),
        "ctxseg.num_classes": str(d.num_classes),
        "ctxseg.ignore_index": str(d.ignore_index),
        "ctxseg.align_corners": json.dumps(recipe.model.align_corners),
        "ctxseg.recipe_json": recipe.to_json(),
    }
    if classes:
        meta["ctxseg.classes"] = json.dumps(classes)
    if palette:
        meta["ctxseg.palette"] = json.dumps(palette)
    return meta


def export_onnx(
    model: nn.Module,
    recipe,
    output: Path,
    height: int,
    width: int,
    dynamic: bool = False,
    opset: int = OPSET,
    classes: list[str] | None = None,
    palette=None,
) -> Path:
    """Trace `model` (eval mode) at [1,3,height,width] and write `output` atomically, with metadata."""
    import onnx

    from ctxseg.io import atomic_path

    if dynamic:
        pools = [
            n
            for n, m in model.named_modules()
            if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and m.output_size not in (1, (1, 1), [1, 1])
        ]
        if pools:  # the exporter turns them into fixed-kernel pooling: wrong at any other input size
            raise UserError(
                f"--dynamic is not supported for models with adaptive pooling to sizes > 1 ({pools[0]}, e.g. "
                "PSP/UPer pyramid pooling): export at a fixed --height/--width instead"
            )
    graph = InferenceGraph(model, recipe.model.align_corners).eval()
    example = torch.zeros(1, 3, height, width)
    axes = (
        {"images": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
        if dynamic
        else None
    )
    output = Path(output)
    with atomic_path(output, ".onnx") as tmp:
        with warnings.catch_warnings():
            # the legacy exporter warns about itself and about traced shapes; neither is actionable here
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    graph,
                    (example,),
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=["images"],
                    output_names=["logits"],
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            except Exception as e:  # noqa: BLE001 - e.g. adaptive pooling whose output size does not divide the input
                raise UserError(
                    f"ONNX export failed at {height}x{width}{' (dynamic)' if dynamic else ''}: {e}. "
                    "Try a --height/--width divisible by 48, or drop --dynamic."
                ) from None
        proto = onnx.load(str(tmp))
        for k, v in metadata(recipe, classes, palette).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "ctxseg"
        onnx.save(proto, str(tmp))
    return output


def check_with_onnxruntime(
    model: nn.Module, recipe, path: Path, height: int, width: int, seed: int = 0
) -> tuple[float, float]:
    """(max |onnx - torch|, max |torch|) on a random normalised input."""
    import onnxruntime as ort

    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = InferenceGraph(model, recipe.model.align_corners).eval()(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(["logits"], {"images": x.numpy()})[0])
    return float((got - ref).abs().max()), float(ref.abs().max())
