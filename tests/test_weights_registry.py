"""The built-in weights registry (recipes/provenance/weights.toml, issue 20 §1): every recipe whose
official code base released a model or names an init has an entry; names, hashes, URLs and layouts
agree; each init layout maps strictly onto the backbone of every recipe that starts from it (synthetic
state dicts in the official layout, key names and shapes from the golden manifests of the official
models); `recipes show --provenance` prints the rows. No network: nothing is downloaded."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pytest
import torch

from ctxseg.config import list_recipes, load_recipe
from ctxseg.errors import UserError
from ctxseg.models.builder import BACKBONES
from ctxseg.provenance import compare, load_table, load_weights, official_entry_name, resolve_row, weights_rows
from tests.conftest import golden

WEIGHTS = load_weights()
TABLE = load_table()
RECIPES = list_recipes()
RELEASED = {n: e for n, e in WEIGHTS.items() if e["kind"] == "released"}
INITS = {n: e for n, e in WEIGHTS.items() if e["kind"] == "init"}
RELEASED_LAYOUTS = {"mmseg", "ssseg", "openseg", "cac", "ctxseg"}
INIT_LAYOUTS = {
    "hrnet-imagenet",
    "mmcv-resnet-v1c",
    "mmcv-resnest",
    "mmcls-mobilenetv2",
    "mmseg-swin",
    "timm-vit",
    "openseg-deepbase",
}
# recipes with published numbers but no released model, and why (the official sources were read)
NO_RELEASE = {
    "ocrnet-hr18-ade20k-160k": "mmseg 1.2.2 configs/ocrnet/metafile.yaml has no entry for this config",
    "ocrnet-hr18s-ade20k-160k": "mmseg 1.2.2 configs/ocrnet/metafile.yaml has no entry for this config",
    "contrast-hrnet48-t005": "ContrastiveSeg's temperature study publishes the number only",
    "contrast-hrnet48-t007": "ContrastiveSeg's temperature study publishes the number only",
    "contrast-hrnet48-t02": "ContrastiveSeg's temperature study publishes the number only",
    "contrast-hrnet48-t03": "ContrastiveSeg's temperature study publishes the number only",
    "contrast-hrnet48-t04": "ContrastiveSeg's temperature study publishes the number only",
}
# GitHub release assets whose official README publishes the URL but no hash (nothing to invent)
UNHASHED_HOSTS = (
    "https://github.com/SegmentationBLWX/modelstore/",
    "https://github.com/tfzhou/pretrained_weights/",
    "https://github.com/hsfzxjy/models.storage/",
)
PUBLISHED = ("miou", "miou_flip", "miou_ms")


def _file_prefix(url: str) -> str | None:
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", PurePosixPath(urlparse(url).path).name)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------------
# coverage and names


def test_every_official_recipe_has_its_init_entry_and_uses_it():
    """Each provenance row's `pretrained` is an init entry's `official_name`, the entry lists the
    recipe, and the recipe's default spelling is `official:<entry>` (which the comparison accepts)."""
    listed: dict[str, str] = {}
    for name, e in INITS.items():
        for r in e["recipes"]:
            assert r in RECIPES, f"{name}: recipes lists unknown recipe {r}"
            assert r not in listed, f"{r} is listed by {listed.get(r)} and {name}"
            listed[r] = name
    for r in RECIPES:
        if r not in TABLE["recipes"]:
            continue
        values, _, _ = resolve_row(r, TABLE)
        assert r in listed, f"{r}: its official config starts from {values['pretrained']!r}: no init entry lists it"
        assert INITS[listed[r]]["official_name"] == values["pretrained"], r
    for r, entry in listed.items():
        assert load_recipe(r).model.backbone.get("pretrained") == f"official:{entry}", r


def test_every_published_row_has_its_released_model_or_a_reason():
    for r in RECIPES:
        if r not in TABLE["recipes"]:
            continue
        values, _, _ = resolve_row(r, TABLE)
        if not any(k in values for k in PUBLISHED):
            continue
        has = [n for n, e in RELEASED.items() if e["recipe"] == r]
        assert has or r in NO_RELEASE, f"{r}: published numbers but no released model in the registry"
        assert not (has and r in NO_RELEASE), r
    for r in NO_RELEASE:
        assert r in RECIPES


def test_released_rows_name_their_recipe_and_its_published_numbers():
    for name, e in RELEASED.items():
        assert e["recipe"] in RECIPES, name
        assert name == e["recipe"], f"{name}: a released entry is named after its recipe"
        assert e.get("published"), name
        values, _, _ = resolve_row(e["recipe"], TABLE)
        for k, v in e["published"].items():
            assert k in PUBLISHED, (name, k)
            if k in values:  # the recipe's row states it: the same number, from the same source
                assert v == pytest.approx(values[k]), (name, k)


def test_every_row_is_well_formed():
    assert len(RELEASED) >= 60 and len(INITS) >= 20
    for name, e in WEIGHTS.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name), name
        assert e["kind"] in ("released", "init"), name
        assert e.get("source"), f"{name}: every fact has a source"
        if e["kind"] == "released":
            assert e["layout"] in RELEASED_LAYOUTS, name
            assert "recipes" not in e and "official_name" not in e, name
        else:
            assert e["layout"] in INIT_LAYOUTS, name
            assert e.get("official_name") and e.get("recipes"), name
            assert "recipe" not in e and "published" not in e, name


def test_urls_hashes_and_pages():
    for name, e in WEIGHTS.items():
        fetchable = e.get("fetchable", True)
        assert isinstance(fetchable, bool), name
        for key in ("url", "page"):
            if e.get(key):
                assert e[key].startswith("https://"), f"{name}: {key} is not https"
        if fetchable:
            assert e.get("url"), name
            assert "page" not in e, name
            if not e["url"].startswith(UNHASHED_HOSTS):
                assert e.get("sha256"), f"{name}: a fetchable file needs its hash"
        else:
            assert e.get("page"), f"{name}: a file that cannot be fetched records the page it is behind"
        if e.get("sha256"):
            assert re.fullmatch(r"[0-9a-f]{8,64}", e["sha256"]), name
            assert len(e["sha256"]) in (8, 64), f"{name}: a published prefix (8) or the full digest (64)"
        prefix = _file_prefix(e.get("url") or "")
        if prefix is not None and fetchable:  # the hash in the file name is the published one
            assert e.get("sha256"), name
            assert e["sha256"].startswith(prefix) or prefix.startswith(e["sha256"]), name
        if "size" in e:
            assert isinstance(e["size"], int) and e["size"] > 0, name


def test_the_same_file_has_the_same_hash_everywhere():
    by_url: dict[str, set] = {}
    for e in WEIGHTS.values():
        if e.get("url") and e.get("sha256"):
            by_url.setdefault(e["url"], set()).add(e["sha256"])
    assert all(len(h) == 1 for h in by_url.values()), by_url


# ---------------------------------------------------------------------------------------------
# the provenance comparison and the pre-training check accept the spelling (without fetching)


def test_official_spelling_matches_only_its_own_entry():
    r = "ocrnet-hr18-cityscapes-80k"
    lines = {l.key: l for l in compare(load_recipe(r), TABLE)}
    assert lines["pretrained"].status == "ok"
    other = load_recipe(r, ["model.backbone.pretrained=official:init-hrnetv2-w48"])
    assert {l.key: l.status for l in compare(other, TABLE)}["pretrained"] == "MISMATCH"
    plain = load_recipe(r, ["model.backbone.pretrained=official"])
    assert {l.key: l.status for l in compare(plain, TABLE)}["pretrained"] == "ok"
    assert official_entry_name("official", r) == "init-hrnetv2-w18"
    assert official_entry_name("timm", r) is None
    unknown = load_recipe(r, ["model.backbone.pretrained=official:no-such-entry"])
    assert {l.key: l.status for l in compare(unknown, TABLE)}["pretrained"] == "MISMATCH"


@pytest.fixture
def no_network(monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_check_recipe_pretrained_accepts_official_without_fetching(no_network):
    from ctxseg.models.backbones.pretrained import check_recipe_pretrained

    bb = load_recipe("ocrnet-hr48-cityscapes-80k").model.backbone
    line = check_recipe_pretrained(bb, recipe_name="ocrnet-hr48-cityscapes-80k")
    assert "init-hrnetv2-w48" in line and "hrnetv2_w48-d2186c55.pth" in line
    line = check_recipe_pretrained(dict(bb, pretrained="official"), recipe_name="ocrnet-hr48-cityscapes-80k")
    assert "init-hrnetv2-w48" in line
    with pytest.raises(UserError, match="is a released model, not an initialisation"):
        check_recipe_pretrained(dict(bb, pretrained="official:ocrnet-hr48-cityscapes-80k"))
    with pytest.raises(UserError, match="lists no initialisation for recipe 'demo'"):
        check_recipe_pretrained(dict(bb, pretrained="official"), recipe_name="demo")


def test_a_file_behind_a_page_stops_before_training_with_the_page(no_network, monkeypatch):
    import ctxseg.models.backbones.pretrained as P

    try:  # when ctxseg.weights is there, it decides whether a user copy is cached: none is here
        import ctxseg.weights as W

        monkeypatch.setattr(type(W.find("init-openseg-resnet101-deepbase")), "cached", property(lambda self: False))
    except ImportError:
        pass
    bb = load_recipe("ce-deeplabv3-r101-cityscapes").model.backbone
    with pytest.raises(UserError) as e:
        P.check_recipe_pretrained(bb, recipe_name="ce-deeplabv3-r101-cityscapes")
    msg = str(e.value)
    assert "ctxseg weights add" in msg and "models.storage/releases/tag/openseg-pytorch-pretrained" in msg
    assert "resnet101-imagenet.pth" in msg and "deep-base" in msg


# ---------------------------------------------------------------------------------------------
# strict key mapping of every init layout onto the backbones that start from it


def _manifest_shapes(folder: str, file: str, prefix: str) -> dict[str, list[int]]:
    data = json.loads(golden(folder, file).read_text())
    data = data.get("state_dict", data)
    return {k[len(prefix) :]: s for k, s in data.items() if k.startswith(prefix)}


def _hrnet_head(channels: list[int]) -> dict[str, list[int]]:
    """HRNet-Image-Classification's head (incre_modules, downsamp_modules, final_layer, classifier):
    in the msra / openseg ImageNet files, not in HRNetV2p (a few representative tensors per module)."""
    shapes = {}
    for i, c in enumerate(channels):
        shapes[f"incre_modules.{i}.0.conv1.weight"] = [32 * 2**i, c, 1, 1]
    for i in range(3):
        shapes[f"downsamp_modules.{i}.0.weight"] = [256 * 2 ** (i + 1), 128 * 2**i, 3, 3]
    shapes.update({"final_layer.0.weight": [2048, 1024, 1, 1], "classifier.weight": [1000, 2048]})
    shapes["classifier.bias"] = [1000]
    return shapes


_HRNET_MANIFEST = {
    "w18_small": "ocrnet_hr18s_4xb2-80k_cityscapes-512x1024.json",
    "w18": "ocrnet_hr18_4xb2-80k_cityscapes-512x1024.json",
    "w48": "ocrnet_hr48_4xb2-80k_cityscapes-512x1024.json",
}


def _source(layout: str, bb: dict) -> dict[str, list[int]]:
    """Key names and shapes of the init file in `layout` for backbone config `bb`."""
    if layout == "hrnet-imagenet":
        arch = bb.get("arch", "w18")
        shapes = _manifest_shapes("mmseg-manifests", _HRNET_MANIFEST[arch], "backbone.")
        branch = [shapes[f"stage4.0.branches.{i}.0.conv1.weight"][0] for i in range(4)]
        return {**shapes, **_hrnet_head(branch)}
    if layout == "mmcv-resnet-v1c":
        file = {
            50: "deeplabv3_r50-d8_4xb2-80k_cityscapes-512x1024.json",
            101: "deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.json",
        }
        shapes = _manifest_shapes("mmseg-manifests", file[bb.get("depth", 50)], "backbone.")
        return {**shapes, "fc.weight": [1000, 2048], "fc.bias": [1000]}
    if layout == "mmcv-resnest":
        shapes = _manifest_shapes("ssseg-mcibi-manifests", "mcibi_deeplabv3_resnest101os8_ade20k.json", "backbone_net.")
        return {**shapes, "fc.weight": [1000, 2048], "fc.bias": [1000]}
    raise AssertionError(layout)


def _filter_and_target(bb: dict):
    from ctxseg.models.backbones.hrnet import hrnet_key_filter
    from ctxseg.models.backbones.resnest import resnest_key_filter
    from ctxseg.models.backbones.resnet import resnet_key_filter

    cfg = dict(bb, pretrained=None)
    kind = cfg.pop("type")
    with torch.device("meta"):
        model = BACKBONES[kind](**cfg)
    if kind == "hrnet":
        return hrnet_key_filter, model
    if kind == "resnet":
        return resnet_key_filter, model.net
    if kind == "resnest":
        return resnest_key_filter, model.net
    raise AssertionError(kind)


STRICT_LAYOUTS = ("hrnet-imagenet", "mmcv-resnet-v1c", "mmcv-resnest")


@pytest.mark.parametrize("entry", sorted(n for n, e in INITS.items() if e["layout"] in STRICT_LAYOUTS))
def test_init_layout_loads_strictly_into_every_recipe_backbone(entry):
    """Every key of the init file is used or skipped with a reason, every backbone tensor is filled
    (or kept at init with a reason), all shapes agree, for each backbone configuration that starts from it."""
    from ctxseg.models.backbones.pretrained import compare as fit

    layout = INITS[entry]["layout"]
    seen = set()
    for r in INITS[entry]["recipes"]:
        bb = dict(load_recipe(r).model.backbone)
        key = json.dumps({k: v for k, v in bb.items() if k != "pretrained"}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        shapes = _source(layout, bb)
        with torch.device("meta"):
            src = {k: torch.empty(s) for k, s in shapes.items()}
        key_filter, target = _filter_and_target(bb)
        report = fit(key_filter(src, target), target.state_dict(), entry)
        assert report.ok, f"{entry} -> {r}:\n{report.problems()}"
        assert all(why for why in report.skipped.values())
        assert len(report.loaded) + len(report.kept_init) == len(target.state_dict()), r
        if layout != "mmcv-resnet-v1c" or "fc.weight" in shapes:
            assert report.skipped, "the ImageNet classifier is skipped, with its reason"


def test_mmcv_resnet_stem_maps_onto_timms_deep_stem(tmp_path):
    """The mmcv ResNetV1c file's values land where they belong (a real load, ResNet-50 V1c)."""
    from ctxseg.models.backbones.pretrained import load_pretrained
    from ctxseg.models.backbones.resnet import resnet, resnet_key_filter

    shapes = _source("mmcv-resnet-v1c", {"depth": 50})
    g = torch.Generator().manual_seed(0)
    src = {k: torch.randn(s, generator=g) if s else torch.tensor(3) for k, s in shapes.items()}
    path = tmp_path / "resnet50_v1c-2cccc1ad.pth"
    torch.save({"state_dict": src}, path)
    bb = resnet(depth=50)
    report = load_pretrained(bb.net, str(path), resnet_key_filter)
    assert report.ok and report.layout.startswith("mmcv ResNetV1c")
    assert torch.equal(bb.net.conv1[6].weight, src["stem.6.weight"])
    assert torch.equal(bb.net.bn1.running_var, src["stem.7.running_var"])
    assert torch.equal(bb.net.layer3[5].conv2.weight, src["layer3.5.conv2.weight"])
    assert set(report.skipped) == {"fc.weight", "fc.bias"}


def test_mmseg_swin_pretrain_layout_loads_into_swin_t(tmp_path):
    """mmseg's converted Swin-T pretrain (swin_tiny_patch4_window7_224_20220317-1cdeb081.pth): the
    backbone names of mmseg's UperNet Swin-T without the output norms, plus the final `norm`."""
    from ctxseg.models.backbones.swin_keys import relative_position_index

    shapes = _manifest_shapes(
        "mmseg-manifests", "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.json", "backbone."
    )
    shapes = {k: s for k, s in shapes.items() if not re.fullmatch(r"norm\d\..+", k)}
    shapes.update({"norm.weight": [768], "norm.bias": [768]})
    src = {
        k: relative_position_index(7) if k.endswith("relative_position_index") else torch.zeros(s)
        for k, s in shapes.items()
    }
    src["stages.0.blocks.0.attn.w_msa.qkv.weight"] = torch.randn(shapes["stages.0.blocks.0.attn.w_msa.qkv.weight"])
    path = tmp_path / "swin_tiny_patch4_window7_224_20220317-1cdeb081.pth"
    torch.save({"state_dict": src}, path)
    bb = dict(load_recipe("upernet-swin-t-ade20k-160k").model.backbone, pretrained=str(path))
    model = BACKBONES[bb.pop("type")](**bb)
    assert torch.equal(model.stages[0].blocks[0].attn.w_msa.qkv.weight, src["stages.0.blocks.0.attn.w_msa.qkv.weight"])


def test_every_init_layout_has_a_strict_check():
    """The layouts checked here, by test_pretrained.py (mmcls MobileNetV2, jx ViT, openseg deep-base)
    or above cover every init entry of the registry."""
    checked_elsewhere = {"mmcls-mobilenetv2", "timm-vit", "openseg-deepbase", "mmseg-swin"}
    assert {e["layout"] for e in INITS.values()} <= set(STRICT_LAYOUTS) | checked_elsewhere


# ---------------------------------------------------------------------------------------------
# the CLI


def test_recipes_show_provenance_prints_the_weights_rows():
    from tests.conftest import run_cli

    out = run_cli("recipes", "show", "ocrnet-hr18-cityscapes-80k", "--provenance", env={"COLUMNS": "400"}).stdout
    assert "official weights" in out
    assert "ocrnet_hr18_512x1024_80k_cityscapes_20200614_230521-c2e1dd4a.pth" in out and "c2e1dd4a" in out
    assert "init-hrnetv2-w18" in out and "hrnetv2_w18-00eb2006.pth" in out and "00eb2006" in out
    assert "miou 78.57" in out and "MISMATCH" not in out
    from ctxseg.cli.common import out as console
    from ctxseg.cli.recipes import _print_weights

    width = console.width
    console.width = 400
    try:
        with console.capture() as cap:  # in-process: one CLI start-up per test file is enough
            _print_weights("fcn-cac-mv2-ade20k-160k")
    finally:
        console.width = width
    cac = cap.get()
    assert "not fetchable" in cac and "sharepoint.com" in cac and "init-cac-mobilenet-v2" in cac


def test_weights_rows_of_a_recipe():
    rows = dict(weights_rows("mcibi-deeplabv3-s101-lip"))
    assert set(rows) == {"mcibi-deeplabv3-s101-lip", "init-ssseg-resnest101"}
    assert rows["init-ssseg-resnest101"]["url"].endswith("resnest101_d2-f3b931b2.pth")
    assert weights_rows("demo") == []
