"""Pretrained backbone weights (issue 11, items 2, 6, 7, 12): official key layouts load strictly,
with a printed report; what cannot fit stops with a UserError before training (and, for timm,
before any download). No network: sources are generated in the official layouts (from the
golden manifests of the official models) and downloads are made to raise."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ctxseg.config import load_recipe
from ctxseg.errors import UserError
from ctxseg.models.builder import BACKBONES
from ctxseg.provenance import load_weights
from tests.conftest import golden


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch weights raises (timm, torch.hub, raw sockets)."""
    import socket

    import timm

    def refuse(*args, **kwargs):
        raise AssertionError("download attempted")

    real_create = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained:
            refuse()
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: (torch.randint(0, 100, s, generator=g) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g))
        for k, s in shapes.items()
    }


def _backbone_cfg(recipe_name: str, **over) -> dict:
    cfg = dict(load_recipe(recipe_name).model.backbone)
    cfg.update(over)
    return cfg


def _build(cfg: dict) -> nn.Module:
    cfg = dict(cfg)
    return BACKBONES[cfg.pop("type")](**cfg)


# ---------------------------------------------------------------------------------------------
# item 2: openseg deep-base ResNet-101 (64-64-128 stem)


def _openseg_imagenet_layout(depth: int = 50) -> dict[str, list[int]]:
    """resnet101-imagenet.pth's layout, from the official ContrastiveSeg DeepLabV3 model's backbone
    (openseg names it `resinit.{conv1..bn3}`; the ImageNet file has the same stem without `resinit.`
    (openseg's ModuleHelper.load_model adds it) and the 1000-class `fc`). depth=50 keeps the first
    6 blocks of layer3 (the same layout, a smaller test)."""
    manifest = json.loads(golden("contrastiveseg", "manifest_deeplab_v3_contrast_r101.json").read_text())
    prefix = "module.backbone."
    shapes = {k[len(prefix) :].replace("resinit.", ""): s for k, s in manifest.items() if k.startswith(prefix)}
    if depth == 50:
        shapes = {k: s for k, s in shapes.items() if not (k.startswith("layer3.") and int(k.split(".")[1]) >= 6)}
    shapes.update({"fc.weight": [1000, 2048], "fc.bias": [1000]})
    return shapes


def test_deepbase_recipes_name_openseg_weights_and_pool(tmp_path):
    for name in ("ce-deeplabv3-r101-cityscapes", "contrast-deeplabv3-r101-cityscapes"):
        bb = _backbone_cfg(name)
        assert bb["stem_channels"] == 128 and bb["stem_pool_ceil"] is True
        assert bb["pretrained"] == "official:init-openseg-resnet101-deepbase"
        assert "resnet101-imagenet.pth" in load_weights()["init-openseg-resnet101-deepbase"]["official_name"]


def test_openseg_deepbase_imagenet_file_loads_strictly(tmp_path, no_downloads, capsys):
    src = _random_state(_openseg_imagenet_layout())
    path = tmp_path / "resnet101-imagenet.pth"
    torch.save(src, path)
    bb = _build(_backbone_cfg("ce-deeplabv3-r101-cityscapes", pretrained=str(path), depth=50))
    net = bb.net.state_dict()
    stem = {
        "conv1": "conv1.0",
        "bn1": "conv1.1",
        "conv2": "conv1.3",
        "bn2": "conv1.4",
        "conv3": "conv1.6",
        "bn3": "bn1",
    }
    for k, v in src.items():
        if k.startswith("fc."):
            continue
        head, _, rest = k.partition(".")
        ours = f"{stem[head]}.{rest}" if head in stem else k
        assert torch.equal(net[ours], v), k
    report = capsys.readouterr().out
    assert "openseg deep-base" in report and "skipped 2 source tensors (ImageNet classifier)" in report
    # openseg's stem max-pool rounds up: 64x64 input -> 32x32 stem -> 17x17 (16x16 with floor)
    with torch.no_grad():
        out = bb.eval()(torch.randn(1, 3, 64, 64))
    assert out[0].shape[-2:] == (17, 17)


def test_openseg_file_in_openseg_naming_also_loads(tmp_path, no_downloads):
    """A backbone saved by openseg itself (`resinit.` stem, `backbone.` prefix, other parts around it)."""
    shapes = {
        f"backbone.{'resinit.' if k.split('.')[0] in ('conv1', 'conv2', 'conv3', 'bn1', 'bn2', 'bn3') else ''}{k}": s
        for k, s in _openseg_imagenet_layout().items()
        if not k.startswith("fc.")
    }
    shapes["decoder.refine.2.weight"] = [19, 256, 1, 1]
    src = _random_state(shapes, seed=1)
    path = tmp_path / "openseg.pth"
    torch.save({"state_dict": src}, path)
    from ctxseg.models.backbones.pretrained import load_pretrained
    from ctxseg.models.backbones.resnet import resnet, resnet_key_filter

    bb = resnet(depth=50, stem_channels=128)
    report = load_pretrained(bb.net, str(path), resnet_key_filter)
    assert report.ok and "decoder.refine.2.weight" in report.skipped
    assert torch.equal(bb.net.bn1.running_var, src["backbone.resinit.bn3.running_var"])


def test_timm_weights_on_a_64_64_128_stem_refused_before_download(no_downloads):
    """Today's recipe setting (timm resnet101c, 32-32-64 stem) on openseg's stem: a clear error, no download."""
    with pytest.raises(UserError) as e:
        _build(_backbone_cfg("ce-deeplabv3-r101-cityscapes", pretrained="timm"))
    msg = str(e.value)
    assert "conv1.0.weight" in msg and "[32, 3, 3, 3]" in msg and "resnet101-imagenet.pth" in msg


def test_train_stops_before_training_when_the_weights_file_is_missing(tmp_path, monkeypatch, capsys):
    """`ctxseg train` (the CLI entry point, in-process) exits 2 with the reason, before touching any data."""
    import sys

    from ctxseg.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys, "argv", ["ctxseg", "train", "--recipe", "ce-deeplabv3-r101-cityscapes", "--runs-dir", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "resnet101-imagenet.pth" in text and "deep-base" in text and "ctxseg weights add" in text
    assert not list(tmp_path.iterdir())  # no run folder


# ---------------------------------------------------------------------------------------------
# item 6: MCIBI ViT-L, three auxiliary decoders and the jx_vit_large_p16_384 weights

VIT_MANIFESTS = ["mcibi_deeplabv3_vitlarge_ade20k", "mcibi_deeplabv3_vitlarge_cocostuff10k"]


@pytest.mark.parametrize("stem", VIT_MANIFESTS)
def test_vit_recipes_have_sssegs_three_aux_decoders(stem):
    from ctxseg.convert.base import apply_keymap
    from ctxseg.convert.ssseg import keymap_for
    from ctxseg.engine.offline import build_for_loading

    manifest = json.loads(golden("ssseg-mcibi-manifests", f"{stem}.json").read_text())
    recipe = load_recipe(f"mcibi-deeplabv3-vitl-{stem.rsplit('_', 1)[1]}")
    assert recipe.train.loss.aux_weight == 0.4
    with torch.device("meta"):
        model = build_for_loading(recipe)
        src = {k: torch.empty(s) for k, s in manifest["state_dict"].items()}
    out, report = apply_keymap(src, model.state_dict(), keymap_for(recipe, src))
    assert report.ok, report.problems()
    assert not report.ignored  # the three decoders are part of the model now
    assert report.mapped == len(src)
    assert len(model.auxiliary_head.decoders) == 3


def test_ssseg_aux_decoder_matches_ssseg_sequential_order():
    """conv-BN-ReLU-upsample x2, dropout, 1x1: the ctxseg head equals ssseg's Sequential with the
    converter's key map (so the layer order and the x4 nearest upsampling after each conv are checked)."""
    import re

    from ctxseg.convert.ssseg import _aux_decoders_rules
    from ctxseg.models.heads.ssseg_aux import SssegAuxHeads

    cfg = {"type": "ssseg_aux", "in_index": [0, 1, 2], "channels": 6, "num_convs": 2, "upsample": 4}
    head = SssegAuxHeads(in_channels=[5, 5, 5, 5], num_classes=3, in_index=[0, 1, 2], channels=6).eval()

    def reference():  # ssseg DefaultAuxiliaryDecoder, num_convs=2, upsample scale 4
        layers = []
        for j in range(2):
            layers += [
                nn.Conv2d(5 if j == 0 else 6, 6, 3, 1, 1, bias=False),
                nn.BatchNorm2d(6),
                nn.ReLU(),
                nn.Upsample(scale_factor=4),
            ]
        return nn.Sequential(*layers, nn.Dropout2d(0.1), nn.Conv2d(6, 3, 1))

    refs = nn.ModuleList(reference() for _ in range(3)).eval()
    g = torch.Generator().manual_seed(0)
    for p in refs.state_dict().values():
        if p.is_floating_point():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    rules = [(re.compile(p), r) for p, r in _aux_decoders_rules(cfg)]
    target = head.state_dict()
    for k, v in refs.state_dict().items():
        key = f"auxiliary_decoder.{k}"
        name = next(p.sub(r, key) for p, r in rules if p.fullmatch(key))
        target[name[len("auxiliary_head.") :]].copy_(v)
    head.load_state_dict(target)
    feats = [torch.randn(2, 5, 3, 4, generator=g) for _ in range(4)]
    with torch.no_grad():
        ours = head(feats)["logits"]
        theirs = [refs[i](feats[i]) for i in range(3)]
    assert len(ours) == 3
    for a, b in zip(ours, theirs):
        assert a.shape == (2, 3, 48, 64)
        torch.testing.assert_close(a, b)


def test_criterion_weights_each_aux_decoder():
    from ctxseg.losses import Criterion

    recipe = load_recipe("mcibi-deeplabv3-vitl-ade20k", ["data.num_classes=4"])
    crit = Criterion(recipe)

    class Core(nn.Module):
        def plugin_losses(self, *a):
            return {}

    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    aux = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(3)]
    total, terms = crit(Core(), {"logits": torch.randn(2, 4, 8, 8, generator=g), "aux_logits": aux}, target, 0)
    for i in range(3):
        expect = 0.4 * float(nn.functional.cross_entropy(aux[i], target))
        assert terms[f"loss_aux{i + 1}"] == pytest.approx(expect, rel=1e-5)
    assert "loss_aux" not in terms


def test_vit_recipes_use_the_jx_weights_and_they_fit(no_downloads):
    """ssseg's structure_type jx_vit_large_p16_384 = timm's original release (no timm 1.x tag holds
    it); its layout (timm names, 24x24 grid, head, final norm) maps strictly onto the ViT-L/16 at 512."""
    from ctxseg.models.backbones.pretrained import compare, timm_skeleton
    from ctxseg.models.backbones.vit import vit_key_filter

    for ds in ("ade20k", "cocostuff10k"):
        bb = _backbone_cfg(f"mcibi-deeplabv3-vitl-{ds}")
        assert bb["pretrained"] == "official:init-ssseg-vit-large-p16-384"
    assert load_weights()["init-ssseg-vit-large-p16-384"]["url"].endswith(
        "/v0.1-vitjx/jx_vit_large_p16_384-b3be5167.pth"
    )
    skeleton = timm_skeleton("vit_large_patch16_384")  # the jx file's layout (timm 0.4 named it so)
    assert skeleton["pos_embed"].shape == (1, 577, 1024)
    with torch.device("meta"):
        model = _build(dict(bb, pretrained=None))
        mapped = vit_key_filter(skeleton, model)
    report = compare(mapped, model.state_dict(), "jx")
    assert report.ok, report.problems()
    assert set(report.skipped) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert {k for k in report.kept_init} == {f"norm_layers.{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    assert "24x24 to a 32x32 grid (bilinear)" in report.notes[0]


def test_vit_pos_embed_resized_bilinearly_as_ssseg(tmp_path, no_downloads):
    import torch.nn.functional as F

    from ctxseg.models.backbones.vit import vit

    small = vit(embed_dim=16, depth=2, num_heads=2, out_indices=[0, 1], img_size=64)  # 4x4 grid
    src = {f"{k}": v.clone() for k, v in small.net.state_dict().items()}
    src["pos_embed"] = torch.randn(1, 1 + 6 * 6, 16)  # trained at a 6x6 grid
    src.update(
        {
            "norm.weight": torch.ones(16),
            "norm.bias": torch.zeros(16),
            "head.weight": torch.randn(10, 16),
            "head.bias": torch.zeros(10),
        }
    )
    path = tmp_path / "vit.pth"
    torch.save(src, path)
    model = vit(embed_dim=16, depth=2, num_heads=2, out_indices=[0, 1], img_size=64, pretrained=str(path))
    grid = src["pos_embed"][:, 1:].reshape(1, 6, 6, 16).permute(0, 3, 1, 2)
    expect = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(model.net.pos_embed[:, 1:], expect)
    torch.testing.assert_close(model.net.pos_embed[:, :1], src["pos_embed"][:, :1])


# ---------------------------------------------------------------------------------------------
# item 7: CAC FCN-MobileNetV2: mmcls ImageNet weights, plain-BN backbone


def _mmcls_mobilenetv2_checkpoint() -> dict:
    """mmcls' mobilenet_v2_batch256_imagenet layout: the official mmseg MobileNetV2 keys (from the
    released CAC model's manifest) under `backbone.`, plus mmcls' last 1x1 conv `conv2` and `head.fc`."""
    manifest = json.loads(golden("cac", "manifest_fcn_m-v2-d8_512x512_160k_ade20k_cac.json").read_text())
    shapes = {k: s for k, s in manifest.items() if k.startswith("backbone.")}
    shapes.update(
        {"backbone.conv2.conv.weight": [1280, 320, 1, 1], "head.fc.weight": [1000, 1280], "head.fc.bias": [1000]}
    )
    for p in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"backbone.conv2.bn.{p}"] = [1280]
    return {"meta": {"mmcls_version": "0.x", "CLASSES": ["tench"]}, "state_dict": _random_state(shapes, seed=2)}


def test_cac_mobilenetv2_recipes_name_the_mmcls_weights_and_plain_bn():
    # the CAC fork's backbone has plain BN (its config replaces the backbone dict without a norm_cfg);
    # mmseg 1.2.2's fcn-mv2 backbone gets the model's SyncBN (norm = "model")
    for name, entry, norm in (
        ("fcn-cac-mv2-ade20k-160k", "init-cac-mobilenet-v2", "BN"),
        ("fcn-mv2-ade20k-160k", "init-mmcls-mobilenet-v2", "model"),
    ):
        recipe = load_recipe(name)
        bb = recipe.model.backbone
        assert bb["pretrained"] == f"official:{entry}"
        assert load_weights()[entry]["url"] == (
            "https://download.openmmlab.com/mmclassification/v0/mobilenet_v2/"
            "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth"
        )
        assert bb["norm"] == norm and recipe.model.norm == "SyncBN"


def test_mmcls_mobilenetv2_checkpoint_loads_strictly(tmp_path, no_downloads, capsys):
    ckpt = _mmcls_mobilenetv2_checkpoint()
    path = tmp_path / "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth"
    torch.save(ckpt, path)
    bb = _build(_backbone_cfg("fcn-cac-mv2-ade20k-160k", pretrained=str(path)))
    ours = bb.state_dict()
    src = ckpt["state_dict"]
    loaded = [k for k in src if k.startswith("backbone.") and not k.startswith("backbone.conv2.")]
    assert len(loaded) == len(ours)
    for k in loaded:
        assert torch.equal(ours[k[len("backbone.") :]], src[k]), k
    out = capsys.readouterr().out
    assert "mmcls MobileNetV2" in out and "conv2.conv.weight" in out and "head.fc.weight" in out


def test_mmcls_checkpoint_with_a_missing_tensor_is_refused(tmp_path, no_downloads):
    ckpt = _mmcls_mobilenetv2_checkpoint()
    del ckpt["state_dict"]["backbone.layer3.2.conv.1.conv.weight"]
    path = tmp_path / "mv2.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"backbone tensor not filled: layer3\.2\.conv\.1\.conv\.weight"):
        _build(_backbone_cfg("fcn-cac-mv2-ade20k-160k", pretrained=str(path)))


def test_timm_mobilenetv2_maps_block_for_block():
    """timm's mobilenetv2_100 is the same network: with its weights mapped, ctxseg's MobileNetV2 (at
    classification strides) computes timm's stage outputs exactly."""
    import timm

    from ctxseg.models.backbones.mobilenetv2 import MobileNetV2, mobilenetv2_key_filter
    from ctxseg.models.backbones.pretrained import compare

    ref = timm.create_model("mobilenetv2_100", pretrained=False).eval()
    for m in ref.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    ours = MobileNetV2(strides=(1, 2, 2, 2, 1, 2, 1), dilations=(1,) * 7, out_indices=(1, 2, 4, 6)).eval()
    mapped = mobilenetv2_key_filter(ref.state_dict(), ours)
    report = compare(mapped, ours.state_dict(), "timm")
    assert report.ok, report.problems()
    assert {k.split(".")[0] for k in report.skipped} == {"conv_head", "bn2", "classifier"}
    ours.load_state_dict(mapped.state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = ours(x)
        h, feats = ref.bn1(ref.conv_stem(x)), []
        for i, stage in enumerate(ref.blocks):
            h = stage(h)
            if i in (1, 2, 4, 6):
                feats.append(h)
    for a, b in zip(got, feats):
        torch.testing.assert_close(a, b)


def test_plain_bn_backbone_stays_bn_under_syncbn():
    from ctxseg.engine.offline import build_for_loading
    from ctxseg.models.norm import convert_sync_batchnorm

    model = convert_sync_batchnorm(build_for_loading(load_recipe("fcn-cac-mv2-ade20k-160k")))
    bb = [type(m) for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    rest = [
        type(m)
        for n, m in model.named_modules()
        if not n.startswith("backbone") and isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    assert bb and set(bb) == {nn.BatchNorm2d}
    assert rest and set(rest) == {nn.SyncBatchNorm}


# ---------------------------------------------------------------------------------------------
# item 12: strict by default, with a report; leniency only when asked


def _timm_resnet18_file(tmp_path, edit=None):
    import timm

    src = timm.create_model("resnet18", pretrained=False).state_dict()
    if edit:
        edit(src)
    path = tmp_path / "r18.pth"
    torch.save(src, path)
    return str(path), src


CFG18 = {"type": "resnet", "depth": 18, "deep_stem": False}


def test_exact_timm_file_loads_with_a_report(tmp_path, capsys):
    path, src = _timm_resnet18_file(tmp_path)
    bb = _build(dict(CFG18, pretrained=path))
    assert all(torch.equal(bb.net.state_dict()[k], v) for k, v in src.items() if not k.startswith("fc."))
    out = capsys.readouterr().out
    assert (
        f"loaded {len(src) - 2} tensors" in out
        and "skipped 2 source tensors (ImageNet classifier): fc.weight, fc.bias" in out
    )


@pytest.mark.parametrize(
    "problem, edit, expect",
    [
        (
            "unexpected",
            lambda s: s.__setitem__("layer5.0.conv1.weight", torch.zeros(1)),
            "source tensor with no place in the backbone: layer5.0.conv1.weight",
        ),
        ("missing", lambda s: s.pop("layer2.1.bn2.weight"), "backbone tensor not filled: layer2.1.bn2.weight"),
        (
            "shape",
            lambda s: s.__setitem__("layer1.0.conv1.weight", torch.zeros(64, 64, 1, 1)),
            "shape mismatch at layer1.0.conv1.weight",
        ),
    ],
)
def test_strict_by_default(tmp_path, problem, edit, expect):
    path, _ = _timm_resnet18_file(tmp_path, edit)
    with pytest.raises(UserError) as e:
        _build(dict(CFG18, pretrained=path))
    assert expect in str(e.value) and "pretrained_strict = false" in str(e.value)


def test_lenient_only_when_asked(tmp_path, capsys):
    path, src = _timm_resnet18_file(
        tmp_path, lambda s: (s.pop("layer2.1.bn2.weight"), s.__setitem__("extra.weight", torch.zeros(2)))
    )
    bb = _build(dict(CFG18, pretrained=path, pretrained_strict=False))
    assert torch.equal(bb.net.layer4[1].conv2.weight, src["layer4.1.conv2.weight"])
    out = capsys.readouterr().out
    assert "NOT LOADED" in out and "layer2.1.bn2.weight" in out and "extra.weight" in out


def test_every_timm_recipe_source_fits_strictly(no_downloads):
    """Every recipe's backbone fits timm's weights strictly (checked on the meta device): named in the
    recipe, or the `timm` alternative of a recipe that defaults to its official init."""
    from ctxseg.config import list_recipes
    from ctxseg.models.backbones import pretrained as P
    from ctxseg.models.backbones.hrnet import _TIMM_NAMES, hrnet_key_filter
    from ctxseg.models.backbones.resnet import resnet_key_filter

    checked = set()
    for name in list_recipes():
        bb = dict(load_recipe(name).model.backbone)
        spec = bb.get("pretrained") or ""
        if spec.startswith("official") and bb.get("stem_channels", 64) == 64:
            spec = "timm"  # the alternative the recipes keep available
        if not spec.startswith("timm") or bb["type"] not in ("resnet", "hrnet", "resnest"):
            continue
        key = json.dumps(bb, sort_keys=True)
        if key in checked:
            continue
        checked.add(key)
        with torch.device("meta"):
            m = _build(dict(bb, pretrained=None))
        if bb["type"] == "hrnet":
            rep = P.check_timm_source(m, spec, hrnet_key_filter, _TIMM_NAMES[bb.get("arch", "w18")])
        elif bb["type"] == "resnet":
            rep = P.check_timm_source(m.net, spec, resnet_key_filter, f"resnet{bb.get('depth', 50)}c")
        else:
            rep = P.check_timm_source(
                m.net, spec, P.same_names([(r"fc\.(weight|bias)", "cls")], "timm"), f"resnest{bb['depth']}e"
            )
        assert rep.ok, f"{name}: {rep.problems()}"
    assert len(checked) >= 5
