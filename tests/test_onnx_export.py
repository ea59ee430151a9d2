"""ONNX export: every model family in ctxseg.models.builder exports and matches PyTorch in onnxruntime.

The cases are discovered from the builder dicts; each registered type needs a small config in the
tables below. A newly registered type without one makes `test_every_registered_type_has_a_config`
fail, so no family can silently go untested.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ctxseg.config import validate_recipe
from ctxseg.convert.onnx import InferenceGraph, export_onnx
from ctxseg.models import builder
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import run_cli

SIZE = (96, 96)  # OS8 -> 12x12 features: divisible by the PSP/UPer pool scales (1, 2, 3, 6)
TOL = 1e-4  # max |onnx - torch| relative to max |torch logits|
NUM_CLASSES = 5

SMALL_RESNET = {"type": "resnet", "depth": 18, "stem_channels": 16, "base_channels": 16}

# backbone type -> small config (each is run with an FCN head)
BACKBONE_CONFIGS = {
    "resnet": SMALL_RESNET,
    "hrnet": {
        "type": "hrnet",
        "stages": [
            {"num_modules": 1, "num_blocks": [1], "num_channels": [16]},
            {"num_modules": 1, "num_blocks": [1, 1], "num_channels": [8, 16]},
            {"num_modules": 1, "num_blocks": [1, 1, 1], "num_channels": [8, 16, 24]},
            {"num_modules": 1, "num_blocks": [1, 1, 1, 1], "num_channels": [8, 16, 24, 32]},
        ],
    },
    "mobilenetv2": {"type": "mobilenetv2", "widen_factor": 0.5},
    "resnest": {"type": "resnest", "depth": 50},  # the smallest ResNeSt
    "vit": {
        "type": "vit",
        "arch": "base",
        "img_size": 96,
        "embed_dim": 32,
        "depth": 4,
        "num_heads": 2,
        "out_indices": [0, 1, 2, 3],
    },
    "swin": {
        "type": "swin",
        "embed_dims": 16,
        "depths": [2, 2, 2, 2],
        "num_heads": [1, 2, 2, 4],
        "window_size": 7,
        "drop_path_rate": 0.0,
    },
}


def _fcn(out_channels):
    return {"type": "fcn", "channels": 16, "num_convs": 1}


# head type -> small config, given the backbone's out_channels (run on SMALL_RESNET)
HEAD_CONFIGS = {
    "fcn": _fcn,
    "psp": lambda ch: {"type": "psp", "channels": 16},
    "aspp": lambda ch: {"type": "aspp", "channels": 16, "dilations": [1, 2, 3, 4]},
    "sep_aspp": lambda ch: {
        "type": "sep_aspp",
        "channels": 16,
        "dilations": [1, 2, 3, 4],
        "c1_in_channels": ch[0],
        "c1_channels": 8,
    },
    "ocr": lambda ch: {
        "type": "ocr",
        "channels": 16,
        "ocr_channels": 8,
        "region_head": {"channels": 16, "num_convs": 1},
    },
    "uper": lambda ch: {"type": "uper", "channels": 16},
    "openseg_hrnet": lambda ch: {"type": "openseg_hrnet"},
    "openseg_deeplab": lambda ch: {"type": "openseg_deeplab", "channels": 16, "dilations": [1, 2, 3]},
    "openseg_dsn": lambda ch: {"type": "openseg_dsn", "channels": 16},
}

# plug-in type -> small config (run on SMALL_RESNET + the head named by PLUGIN_HEADS, default FCN)
PLUGIN_CONFIGS = {
    "mcibi": {"type": "mcibi", "feats_channels": 16, "transform_channels": 8, "out_channels": 16},
    "pixel_contrast": {"type": "pixel_contrast", "proj_dim": 16, "use_queue": True, "memory_size": 8},
    "cac": {"type": "cac"},
}
PLUGIN_HEADS = {"mcibi": "aspp"}  # MCIBI's within-image context comes from a context head


def _builtin(table: dict) -> list[str]:
    """Types registered by ctxseg itself (other test files register toy plug-ins)."""
    return [n for n, ctor in table.items() if ctor.__module__.startswith("ctxseg.")]


def _cases():
    cases = []
    for name in builder.HEADS:
        if name in HEAD_CONFIGS:
            cases.append(pytest.param(SMALL_RESNET, name, {}, id=f"head-{name}"))
    for name in builder.BACKBONES:
        if name in BACKBONE_CONFIGS and name != "resnet":
            cases.append(pytest.param(BACKBONE_CONFIGS[name], "fcn", {}, id=f"backbone-{name}"))
    for name in _builtin(builder.PLUGINS):
        if name in PLUGIN_CONFIGS:
            cases.append(
                pytest.param(
                    SMALL_RESNET,
                    PLUGIN_HEADS.get(name, "fcn"),
                    {"plugins": [PLUGIN_CONFIGS[name]]},
                    id=f"plugin-{name}",
                )
            )
    return cases


def test_every_registered_type_has_a_config():
    missing = [f"backbone {n}" for n in builder.BACKBONES if n not in BACKBONE_CONFIGS]
    missing += [f"head {n}" for n in builder.HEADS if n not in HEAD_CONFIGS]
    missing += [f"plugin {n}" for n in _builtin(builder.PLUGINS) if n not in PLUGIN_CONFIGS]
    assert not missing, f"registered model types with no ONNX export test config (add one in {__file__}): {missing}"


def _randomize_norm_stats(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN running statistics, so the check covers how normalisation is exported."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _build(backbone: dict, head_name: str, plugins: dict):
    channels = builder.build_component("backbone", backbone).out_channels
    raw = {
        "name": f"onnx-{head_name}",
        "data": {"num_classes": NUM_CLASSES, "root": "does/not/exist"},
        "model": {"backbone": backbone, "head": HEAD_CONFIGS[head_name](channels), **plugins},
    }
    recipe = validate_recipe(raw)
    torch.manual_seed(0)
    model = build_segmentor(recipe).eval()
    _randomize_norm_stats(model)
    return model, recipe


def _run(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"images": x.numpy()})[0]


@pytest.mark.parametrize("backbone,head,plugins", _cases())
def test_export_matches_pytorch(tmp_path, backbone, head, plugins):
    model, recipe = _build(backbone, head, plugins)
    path = export_onnx(model, recipe, tmp_path / "model.onnx", *SIZE)
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = InferenceGraph(model, recipe.model.align_corners).eval()(x).numpy()
    got = _run(path, x)
    assert got.shape == (1, NUM_CLASSES, *SIZE)
    scale = np.abs(ref).max()
    assert scale > 0
    assert np.abs(got - ref).max() <= TOL * scale, (np.abs(got - ref).max(), scale)


def test_dynamic_axes_follow_the_input(tmp_path):
    model, recipe = _build(SMALL_RESNET, "aspp", {})
    path = export_onnx(model, recipe, tmp_path / "dyn.onnx", 64, 64, dynamic=True)
    x = torch.randn(2, 3, 72, 104, generator=torch.Generator().manual_seed(2))  # another batch and size
    with torch.no_grad():
        ref = InferenceGraph(model, recipe.model.align_corners).eval()(x).numpy()
    got = _run(path, x)
    assert got.shape == (2, NUM_CLASSES, 72, 104)
    assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()


def test_dynamic_export_refuses_pyramid_pooling(tmp_path):
    from ctxseg.errors import UserError

    model, recipe = _build(SMALL_RESNET, "psp", {})
    with pytest.raises(UserError, match="adaptive pooling"):
        export_onnx(model, recipe, tmp_path / "psp.onnx", 96, 96, dynamic=True)
    assert not (tmp_path / "psp.onnx").exists()


def test_cli_export_records_normalisation(tmp_path, synthetic_small):
    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import save_weights
    from ctxseg.engine.inference import infer
    from ctxseg.engine.settings import InferenceSettings

    recipe = load_recipe("demo", [f"data.root='{synthetic_small}'"])
    torch.manual_seed(0)
    model = build_segmentor(recipe).eval()
    ckpt = save_weights(tmp_path / "m.safetensors", model, recipe)
    out = tmp_path / "m.onnx"
    proc = run_cli(
        "convert", "onnx", "--checkpoint", str(ckpt), "-o", str(out), "--height", "64", "--width", "80", cwd=tmp_path
    )
    assert "onnxruntime check" in proc.stdout and str(out.name) in proc.stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["ctxseg.mean"]) == list(recipe.data.mean)
    assert json.loads(meta["ctxseg.std"]) == list(recipe.data.std)
    assert meta["ctxseg.channel_order"] == "RGB"
    assert json.loads(meta["ctxseg.classes"])[:1] and int(meta["ctxseg.num_classes"]) == recipe.data.num_classes
    # the graph equals the one inference function (whole mode) on a normalised image
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    ref = infer(model, x, InferenceSettings(recipe.data.num_classes, align_corners=recipe.model.align_corners)).numpy()
    got = _run(out, x)
    assert np.abs(got - ref).max() <= TOL * np.abs(ref).max()
