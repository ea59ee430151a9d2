"""`ctxseg convert cac`: the CLI on a full (tiny) CAC checkpoint built from the golden FCN head,
the strictness errors, and complete key maps for the released models' manifests."""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file

from ctxseg.config import load_recipe
from ctxseg.convert.base import apply_keymap
from ctxseg.convert.cac import keymap_for
from ctxseg.errors import UserError
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import REPO, golden, run_cli

TINY = str(REPO / "tests" / "recipes" / "cac_fcn_tiny.toml")

# ctxseg ResNet-D8 (timm names) -> mmseg ResNetV1c names, to build an mmseg-style source file
_TO_MMSEG = [
    (r"backbone\.net\.conv1\.(\d)\.(.+)", r"backbone.stem.\1.\2"),
    (r"backbone\.net\.bn1\.(.+)", r"backbone.stem.7.\1"),
    (r"backbone\.net\.(layer\d\..+)", r"backbone.\1"),
]


def _mmseg_name(k: str) -> str:
    for pat, rep in _TO_MMSEG:
        if re.fullmatch(pat, k):
            return re.sub(pat, rep, k)
    return k


@pytest.fixture(scope="module")
def tiny_cac_pth(tmp_path_factory):
    """A full mmseg 0.x CAC container: random tiny ResNet backbone + the golden FCN-CAC head."""
    torch.manual_seed(0)
    model = build_segmentor(load_recipe(TINY))
    head = torch.load(golden("cac", "fcn-cac", "checkpoint.pth"), weights_only=True)
    state = OrderedDict((_mmseg_name(k), v) for k, v in model.state_dict().items() if k.startswith("backbone."))
    state.update(head["state_dict"])
    path = tmp_path_factory.mktemp("cac") / "fcn_cac_tiny.pth"
    torch.save({"meta": head["meta"], "state_dict": state}, path)
    return path, state


def test_cli_converts_and_reproduces_golden(tiny_cac_pth, tmp_path):
    src, state = tiny_cac_pth
    out = tmp_path / "fcn_cac.safetensors"
    proc = run_cli("convert", "cac", str(src), "--recipe", TINY, "-o", str(out), cwd=tmp_path)
    assert out.is_file(), proc.stdout
    weights = load_file(str(out))
    assert torch.equal(weights["plugins.cac.apd_proj.2.bias"], state["decode_head.apd_proj.2.bias"])
    assert torch.equal(weights["decode_head.conv_seg.weight"], state["decode_head.conv_seg.weight"])
    assert torch.equal(weights["backbone.net.conv1.0.weight"], state["backbone.stem.0.weight"])
    # the converted model's head reproduces the official test-time logits on the golden inputs
    from ctxseg.engine.checkpoint import load_model

    model, _, extra = load_model(out)
    io = load_file(str(golden("cac", "fcn-cac", "io.safetensors")))
    feats = [torch.zeros(1)] * 3 + [io["input.feat"]]
    with torch.no_grad():
        o = model.decode_head(feats)
        o.update(model.plugins["cac"](o, feats, None))
    assert torch.allclose(o["logits"], io["test.seg_logits"], atol=1e-4, rtol=1e-4)
    assert extra["converted_from"].startswith("cac:")


def test_cli_rejects_non_cac_recipe_and_missing_keys(tiny_cac_pth, tmp_path):
    src, state = tiny_cac_pth
    out = tmp_path / "x.safetensors"
    plain = load_recipe(TINY)
    plain.model.plugins = []
    with pytest.raises(UserError, match="no \\[\\[model.plugins\\]\\] type = 'cac'"):
        keymap_for(plain, state)
    broken = tmp_path / "broken.pth"
    torch.save({"state_dict": {k: v for k, v in state.items() if "proj.0" not in k}}, broken)
    proc = run_cli("convert", "cac", str(broken), "--recipe", TINY, "-o", str(out), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and not out.exists()
    assert "proj.0.weight" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------
# manifests of the six released models: every key maps, every target is filled, shapes equal

MANIFESTS = {
    "fcn_m-v2-d8_512x512_160k_ade20k_cac": "fcn-cac-mv2-ade20k-160k",
    "deeplabv3plus_r50-d8_512x512_160k_ade20k_cac": "deeplabv3plus-cac-r50-ade20k-160k",
    "ocrnet_hr18_512x512_160k_ade20k_cac": "ocrnet-cac-hr18-ade20k-160k",
    "upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_bs4_cac": (
        "upernet-cac-swin-t-ade20k-160k"
    ),
    "upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_cac": "upernet-cac-swin-b-ade20k-160k",
    "upernet_swin_large_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_cac": "upernet-cac-swin-l-ade20k-160k",
}


@pytest.mark.parametrize("manifest,recipe_name", list(MANIFESTS.items()))
def test_manifest_maps_completely(manifest, recipe_name):
    shapes = json.loads(golden("cac", f"manifest_{manifest}.json").read_text())
    shapes = shapes.get("state_dict", shapes) if isinstance(shapes, dict) else shapes
    recipe = load_recipe(recipe_name)
    bb = dict(recipe.model.backbone)
    bb.pop("pretrained", None)
    recipe.model.backbone = bb
    with torch.device("meta"):
        model = build_segmentor(recipe)
        src = {
            k: torch.empty(s, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in shapes.items()
        }
    for k, s in shapes.items():  # Swin's buffers are checked by value: give the real ones
        if k.endswith("relative_position_index"):
            from ctxseg.convert.mmseg_swin import relative_position_index

            src[k] = relative_position_index(int(round(s[0] ** 0.5)))
    target = model.state_dict()
    out, report = apply_keymap(src, target, keymap_for(recipe, src))
    assert report.ok, report.problems()
    assert not report.ignored and not report.defaulted
    assert set(out) == set(target)
    assert sum(k.startswith("plugins.cac.") for k in out) == 6
