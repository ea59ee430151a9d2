"""Full-size mmseg models: the converter maps every key of each official model (manifest of
key -> shape, mmseg 1.2.2) onto the model built from the matching shipped recipe, shapes equal.

Models are built on the meta device (no memory, no init cost); the source state dict is made
of meta tensors with the manifest's shapes. Also: every shipped recipe of this family loads.
"""

from __future__ import annotations

import json

import pytest
import torch

from ctxseg.config import list_recipes, load_recipe
from ctxseg.convert.base import convert_state_dict
from ctxseg.convert.mmseg import keymap_for
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import golden, run_cli

# manifest (mmseg config name) -> shipped recipe; the Swin/UperNet manifest is tested with Swin
MANIFESTS = {
    "ocrnet_hr18s_4xb2-80k_cityscapes-512x1024": "ocrnet-hr18s-cityscapes-80k",
    "ocrnet_hr18_4xb2-80k_cityscapes-512x1024": "ocrnet-hr18-cityscapes-80k",
    "ocrnet_hr48_4xb2-80k_cityscapes-512x1024": "ocrnet-hr48-cityscapes-80k",
    "ocrnet_r101-d8_8xb2-80k_cityscapes-512x1024": "ocrnet-r101-cityscapes-80k",
    "deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024": "deeplabv3-r50-cityscapes-80k",
    "deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024": "deeplabv3-r101-cityscapes-80k",
    "deeplabv3_r50-d8_4xb4-80k_ade20k-512x512": "deeplabv3-r50-ade20k-80k",
    "deeplabv3_r101-d8_4xb4-80k_ade20k-512x512": "deeplabv3-r101-ade20k-80k",
    "pspnet_r50-d8_4xb4-80k_ade20k-512x512": "pspnet-r50-ade20k-80k",
    "fcn_r50-d8_4xb4-80k_ade20k-512x512": "fcn-r50-ade20k-80k",
}
# the recipes of issue 4 (mmseg OCRNet + baselines)
OWN_RECIPES = (
    [
        f"ocrnet-{hr}-{ds}"
        for hr in ("hr18s", "hr18", "hr48")
        for ds in (
            "cityscapes-40k",
            "cityscapes-80k",
            "cityscapes-160k",
            "ade20k-80k",
            "ade20k-160k",
            "voc-aug-20k",
            "voc-aug-40k",
        )
    ]
    + ["ocrnet-r101-cityscapes-40k", "ocrnet-r101-cityscapes-80k"]
    + [
        f"{m}-{ds}-80k"
        for m in ("deeplabv3-r50", "deeplabv3-r101", "pspnet-r50", "fcn-r50")
        for ds in ("cityscapes", "ade20k")
    ]
)


def _meta_model(name: str):
    recipe = load_recipe(name, ['model.backbone.pretrained=""'])  # never download in tests
    with torch.device("meta"):
        return recipe, build_segmentor(recipe)


def test_every_non_swin_manifest_is_covered():
    folder = golden("mmseg-manifests")
    names = {p.stem for p in folder.glob("*.json") if "swin" not in p.stem}
    assert names == set(MANIFESTS), names ^ set(MANIFESTS)


@pytest.mark.parametrize("manifest,recipe_name", sorted(MANIFESTS.items()))
def test_converter_maps_full_size_official_model(manifest, recipe_name):
    shapes = json.loads(golden("mmseg-manifests", f"{manifest}.json").read_text())
    src = {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}
    recipe, model = _meta_model(recipe_name)
    _, report = convert_state_dict(src, model, keymap_for(recipe, src))
    assert report.ok, report.problems()
    assert report.mapped == len(shapes) == len(model.state_dict())
    assert not report.ignored and not report.defaulted


def test_all_own_recipes_load_and_build():
    shipped = list_recipes()
    missing = [n for n in OWN_RECIPES if n not in shipped]
    assert not missing, missing
    for name in OWN_RECIPES:
        recipe, model = _meta_model(name)
        assert recipe.published.miou is not None, name
        assert recipe.train.loss.aux_weight == 0.4 and recipe.train.optimizer.momentum == 0.9, name
        head = model.decode_head
        if recipe.model.head["type"] == "ocr":
            assert head.region_head.num_classes == recipe.data.num_classes
            assert model.auxiliary_head is None  # the cascade FCN is the supervised first stage
        else:
            assert model.auxiliary_head is not None


def test_recipes_show_cli():
    proc = run_cli("recipes", "show", "ocrnet-hr48-cityscapes-80k")
    assert 'arch = "w48"' in proc.stdout and "miou = 80.7" in proc.stdout


def test_hrnet_names_match_timm_imagenet_weights():
    """`pretrained = "timm"` loads timm's HRNet ImageNet weights by name: every key and shape exists there."""
    import timm

    from ctxseg.models.backbones.hrnet import hrnet

    with torch.device("meta"):
        ours = hrnet(arch="w18_small").state_dict()
        theirs = timm.create_model("hrnet_w18_small_v2", pretrained=False, num_classes=0).state_dict()
    bad = [k for k, v in ours.items() if k not in theirs or theirs[k].shape != v.shape]
    assert not bad, bad[:5]
