"""MobileNetV2-D8, ResNeSt-101-D8 and ViT-L backbones: shapes and key sets against the official
manifests (CAC's FCN-MobileNetV2, sssegmentation's MCIBI S-101 and ViT-L), after the rename
tables in ctxseg.convert.backbone_keys. Shape level (meta device): no numerical golden exists
for these three; ViT is checked numerically against timm's own forward."""

from __future__ import annotations

import json

import pytest
import torch

from ctxseg.convert.backbone_keys import mmseg_mobilenetv2_rules, ssseg_resnest_rules, ssseg_vit_rules
from ctxseg.convert.base import KeyMap, apply_keymap
from ctxseg.models.builder import BACKBONES
from tests.conftest import golden


def _manifest(*parts) -> dict[str, list[int]]:
    d = json.loads(golden(*parts).read_text())
    return d.get("state_dict", d)


def _check(manifest: dict, keep, backbone, rules) -> int:
    src = {k: torch.empty(v, device="meta") for k, v in manifest.items() if keep(k)}
    target = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    _, report = apply_keymap(src, target, KeyMap(rules=rules))
    assert report.ok, report.problems()
    assert report.mapped == len(src) == len(target)
    return len(src)


def test_mobilenetv2_d8_matches_cac_manifest():
    m = _manifest("cac", "manifest_fcn_m-v2-d8_512x512_160k_ade20k_cac.json")
    with torch.device("meta"):
        bb = BACKBONES["mobilenetv2"]()
    assert _check(m, lambda k: k.startswith("backbone."), bb, mmseg_mobilenetv2_rules()) == 306
    # head input channels of the released config: aux in_index 2 -> 96, decode in_index 3 -> 320
    assert bb.out_channels == [24, 32, 96, 320]
    assert m["auxiliary_head.convs.0.conv.weight"][1] == 96 and m["decode_head.convs.0.conv.weight"][1] == 320


def test_mobilenetv2_d8_strides_and_dilations():
    bb = BACKBONES["mobilenetv2"]().eval()
    with torch.no_grad():
        outs = bb(torch.randn(1, 3, 45, 70))
    assert [tuple(o.shape[2:]) for o in outs] == [(12, 18), (6, 9), (6, 9), (6, 9)]
    dw = [blk.conv[-2].conv for name in ("layer4", "layer5", "layer6", "layer7") for blk in getattr(bb, name)]
    assert {(c.dilation[0], c.padding[0], c.stride[0]) for c in dw} == {(2, 2, 1), (4, 4, 1)}
    assert isinstance(bb.layer1[0].conv[0].activate, torch.nn.ReLU6) and not hasattr(bb.layer1[0].conv[1], "activate")


@pytest.mark.parametrize("dataset", ["ade20k", "cityscapes"])
def test_resnest101_d8_matches_ssseg_manifest(dataset):
    m = _manifest("ssseg-mcibi-manifests", f"mcibi_deeplabv3_resnest101os8_{dataset}.json")
    with torch.device("meta"):
        bb = BACKBONES["resnest"](depth=101)
    assert _check(m, lambda k: k.startswith("backbone_net."), bb, ssseg_resnest_rules()) == 933
    assert bb.out_channels == [256, 512, 1024, 2048]


def test_resnest_output_stride_8():
    bb = BACKBONES["resnest"](depth=50).eval()
    with torch.no_grad():
        outs = bb(torch.randn(1, 3, 45, 70))
    assert [tuple(o.shape[2:]) for o in outs] == [(12, 18), (6, 9), (6, 9), (6, 9)]
    assert isinstance(bb.net.layer3[0].downsample[0], torch.nn.Identity)


@pytest.mark.parametrize("dataset", ["ade20k", "cocostuff10k"])
def test_vit_large_matches_ssseg_manifest(dataset):
    m = _manifest("ssseg-mcibi-manifests", f"mcibi_deeplabv3_vitlarge_{dataset}.json")
    with torch.device("meta"):
        bb = BACKBONES["vit"](arch="large", img_size=512)
    n = _check(m, lambda k: k.startswith(("backbone_net.", "norm_layers.")), bb, ssseg_vit_rules())
    assert n == 292 + 8


def test_vit_matches_timm_forward_and_resizes_pos_embed():
    import timm

    bb = BACKBONES["vit"](embed_dim=32, depth=4, num_heads=4, out_indices=[1, 3], img_size=64, out_norm=False).eval()
    ref = timm.create_model(
        "vit_large_patch16_384",
        pretrained=False,
        img_size=64,
        embed_dim=32,
        depth=4,
        num_heads=4,
        num_classes=0,
        global_pool="",
    ).eval()
    missing, unexpected = ref.load_state_dict(bb.net.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"norm.weight", "norm.bias"}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = bb(x)
        theirs = ref.forward_intermediates(x, indices=[1, 3], intermediates_only=True, norm=False)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        odd = bb(torch.randn(1, 3, 48, 80))  # pos embed resized to the 3x5 grid
    assert tuple(odd[0].shape) == (1, 32, 3, 5)
