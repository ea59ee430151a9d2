"""Every released MCIBI checkpoint layout (ssseg-mcibi-manifests) maps completely onto the model
built from the matching ctxseg recipe: each key used, each ctxseg tensor filled, shapes equal.
Models are built on the meta device (no memory, no time)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ctxseg.config import load_recipe
from ctxseg.convert.base import apply_keymap
from ctxseg.convert.ssseg import keymap_for
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import golden

BACKBONES = {
    "resnet50os8": "r50",
    "resnet101os8": "r101",
    "resnest101os8": "s101",
    "hrnetv2w48": "hr48",
    "vitlarge": "vitl",
}
MANIFESTS = sorted(p.stem for p in golden("ssseg-mcibi-manifests").glob("*.json"))


def recipe_for(stem: str) -> str:
    _, _, bb, ds = stem.split("_")
    return f"mcibi-deeplabv3-{BACKBONES[bb]}-{ds}"


def test_every_manifest_has_a_recipe():
    assert len(MANIFESTS) == 18
    for stem in MANIFESTS:
        load_recipe(recipe_for(stem))


@pytest.mark.parametrize("stem", MANIFESTS)
def test_manifest_maps_onto_recipe_model(stem):
    manifest = json.loads(golden("ssseg-mcibi-manifests", f"{stem}.json").read_text())
    recipe = load_recipe(recipe_for(stem))
    backbone = dict(recipe.model.backbone)
    backbone.pop("pretrained", None)
    recipe.model.backbone = backbone
    with torch.device("meta"):
        model = build_segmentor(recipe)
        src = {k: torch.empty(shape) for k, shape in manifest["state_dict"].items()}
    out, report = apply_keymap(src, model.state_dict(), keymap_for(recipe, src))
    assert report.ok, report.problems()
    assert report.mapped + len(report.ignored) == len(src)
    # only training-only auxiliary heads may be left out (ViT's three auxiliary decoders)
    assert all(k.startswith("auxiliary_decoder.") for k in report.ignored)
    if stem.endswith("cocostuff10k"):  # 182 ssseg classes -> ctxseg's 171 rows
        assert manifest["state_dict"]["memory_module.memory"][0] == 182
        assert (
            out["plugins.memory.memory"].shape[0] == out["plugins.memory.decoder_stage2.conv_seg.bias"].shape[0] == 171
        )
    if "downsample_backbone.0.weight" in src:
        assert out["backbone.downsample.0.weight"].shape == (720, 720, 3, 3)


def _golden_recipe(*overrides: str):
    """The tiny ssseg-mcibi-deeplabv3 model, built from its config.json."""
    from ctxseg.config import apply_overrides, validate_recipe
    from tests.golden_cases import ssseg_mcibi_recipe

    return validate_recipe(apply_overrides(ssseg_mcibi_recipe("ssseg-mcibi-deeplabv3"), list(overrides)))


def test_coco_182_to_171_rows_land_in_the_right_target_rows():
    """The fix-up keeps ssseg row (1-based COCO-Stuff id - 1) of every used id, in ctxseg's class
    order, in every class-indexed tensor; the 11 dropped ids are reported."""
    from ctxseg.convert.ssseg import class_rows
    from ctxseg.data.prepare.cocostuff import CLASSES, UNUSED_1BASED, USED_1BASED

    recipe = _golden_recipe("data.num_classes=171")
    model = build_segmentor(recipe)
    target = model.state_dict()
    # a tiny synthetic ssseg source: class-indexed tensors with 182 rows whose values encode the row
    src = {}
    for k, v in _tiny_ssseg_source(target).items():
        src[k] = v
    rows = torch.arange(182, dtype=torch.float32)
    src["memory_module.memory"] = rows[:, None, None].expand(182, 1, target["plugins.memory.memory"].shape[2]).clone()
    for stage in (1, 2):
        c = target[f"plugins.memory.decoder_stage{stage}.conv_seg.weight"].shape[1]
        src[f"decoder_stage{stage}.4.weight"] = rows[:, None, None, None].expand(182, c, 1, 1).clone() + stage * 1000
        src[f"decoder_stage{stage}.4.bias"] = rows + stage * 1000
    c = target["auxiliary_head.conv_seg.weight"].shape[1]
    src["auxiliary_decoder.4.weight"] = rows[:, None, None, None].expand(182, c, 1, 1).clone() + 5000
    src["auxiliary_decoder.4.bias"] = rows + 5000
    out, report = apply_keymap(src, target, keymap_for(recipe, src))
    assert report.ok, report.problems()
    assert report.mapped == len(src) and not report.ignored
    expect = torch.tensor([cid - 1 for cid in USED_1BASED], dtype=torch.float32)
    assert len(expect) == len(CLASSES) == 171
    # e.g. ctxseg class 11 "stop sign" = COCO-Stuff id 13 = ssseg row 12 ("street sign", row 11, dropped)
    assert CLASSES[11] == "stop sign" and expect[11] == 12
    assert torch.equal(out["plugins.memory.memory"][:, 0, 0], expect)
    for stage in (1, 2):
        assert torch.equal(out[f"plugins.memory.decoder_stage{stage}.conv_seg.bias"], expect + stage * 1000)
        assert torch.equal(
            out[f"plugins.memory.decoder_stage{stage}.conv_seg.weight"][:, 0, 0, 0], expect + stage * 1000
        )
    assert torch.equal(out["auxiliary_head.conv_seg.bias"], expect + 5000)
    assert torch.equal(out["auxiliary_head.conv_seg.weight"][:, -1, 0, 0], expect + 5000)
    _, dropped = class_rows(recipe, src)
    assert [int(d.split()[0]) for d in dropped] == list(UNUSED_1BASED)
    assert dropped[0] == "12 street sign (row 11)"
    # a 182-class recipe takes the checkpoint as it is
    assert class_rows(_golden_recipe("data.num_classes=182"), src) is None


def _tiny_ssseg_source(target: dict) -> dict:
    """Every non-class-indexed tensor of the tiny golden checkpoint (ssseg layout)."""
    from ctxseg.convert.base import load_foreign

    src = load_foreign(golden("ssseg-mcibi-deeplabv3", "checkpoint.pth"))
    return {
        k: v
        for k, v in src.items()
        if k != "memory_module.memory" and not re.fullmatch(r"(decoder_stage[12]|auxiliary_decoder)\.4\..+", k)
    }


def test_hrnet_concat_downsample_is_ssseg_downsample_backbone():
    """concat_downsample = 2: the four branches resized to branch 0 (bilinear, align_corners=False),
    concatenated, then 3x3 stride-2 conv + BN + ReLU; the default still returns the four branches."""
    import torch.nn.functional as F

    from ctxseg.models.backbones.hrnet import hrnet

    torch.manual_seed(0)
    plain, down = hrnet(arch="w18_small").eval(), hrnet(arch="w18_small", concat_downsample=2).eval()
    assert down.out_channels == [270] and plain.out_channels == [18, 36, 72, 144]
    assert set(down.state_dict()) - set(plain.state_dict()) == {
        "downsample.0.weight",
        "downsample.1.weight",
        "downsample.1.bias",
        "downsample.1.running_mean",
        "downsample.1.running_var",
        "downsample.1.num_batches_tracked",
    }
    plain.load_state_dict(down.state_dict(), strict=False)
    with torch.no_grad():
        down.downsample[1].running_mean.uniform_(-0.1, 0.1)
        x = torch.randn(1, 3, 40, 56)
        ys = plain(x)
        assert len(ys) == 4
        cat = torch.cat(
            [F.interpolate(y, size=ys[0].shape[2:], mode="bilinear", align_corners=False) for y in ys], dim=1
        )
        conv, bn = down.downsample[0], down.downsample[1]
        ref = F.relu(
            F.batch_norm(
                F.conv2d(cat, conv.weight, stride=2, padding=1),
                bn.running_mean,
                bn.running_var,
                bn.weight,
                bn.bias,
                eps=bn.eps,
            )
        )
        (out,) = down(x)
    assert out.shape == (1, 270, 5, 7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
