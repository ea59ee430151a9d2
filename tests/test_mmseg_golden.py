"""mmseg goldens, driven by the data: every `mmseg-*` folder with a config.json is a case. Its
model is built from its own config.json (tests/golden_cases.py), converted through the real CLI,
run, and EVERY tensor of its io*.safetensors files is compared within the tolerance its README
states (max |ours - ref| <= T * max(1, max |ref|)); plus one test per documented quirk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ctxseg.config import to_toml, validate_recipe
from ctxseg.data.transforms import normalize
from ctxseg.engine.checkpoint import load_model
from ctxseg.engine.inference import infer
from ctxseg.engine.settings import InferenceSettings
from tests.conftest import GOLDEN, golden, run_cli
from tests.golden_cases import Stored, case_folders, config, mmseg_recipe, readme_tolerance

FOLDERS = case_folders("mmseg-")
CASES = [f[len("mmseg-") :] for f in FOLDERS]


def _io_files(case: str) -> list[str]:
    files = sorted(p.stem for p in (GOLDEN / f"mmseg-{case}").glob("*.safetensors"))
    assert files and all(f.startswith("io") for f in files), f"mmseg-{case}: files the tests do not read: {files}"
    return files


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, str]:
    """case -> converted .safetensors, each made by `ctxseg convert mmseg` (a subprocess) with a
    recipe written from the case's own config.json."""
    from concurrent.futures import ThreadPoolExecutor

    out_dir = tmp_path_factory.mktemp("mmseg")
    paths = {case: out_dir / f"{case}.safetensors" for case in CASES}
    recipes = {}
    for case in CASES:
        raw = mmseg_recipe(f"mmseg-{case}")
        validate_recipe(raw)  # a clear failure here names the key the translation got wrong
        recipes[case] = out_dir / f"{case}.toml"
        recipes[case].write_text(to_toml(raw) + "\n")

    def convert(case):
        return run_cli(
            "convert",
            "mmseg",
            str(golden(f"mmseg-{case}", "checkpoint.pth")),
            "--recipe",
            str(recipes[case]),
            "-o",
            str(paths[case]),
        )

    with ThreadPoolExecutor(2) as pool:  # two subprocesses at a time
        procs = list(pool.map(convert, CASES))
    for case, proc in zip(CASES, procs):
        assert "mapped" in proc.stdout and paths[case].is_file(), case
    return {case: str(p) for case, p in paths.items()}


def test_cases_are_discovered():
    assert {"ocrnet-hrnet", "ocrnet-resnet", "fcn-resnet", "pspnet-resnet", "deeplabv3-resnet", "upernet-swin"} <= set(
        CASES
    )


def _model(converted, case):
    model, recipe, extra = load_model(converted[case])
    assert not model.training
    model.with_aux = True  # also compute the auxiliary head (golden `aux_logits`)
    return model, recipe


def _close(ours: torch.Tensor, ref: torch.Tensor, name: str, rel: float | None = None) -> None:
    """max |ours - ref| <= rel * max(1, max |ref|).

    rel defaults to the README tolerance of the case `name` starts with."""
    rel = readme_tolerance(f"mmseg-{name.split('/')[0]}") if rel is None else rel
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    tol = rel * max(1.0, ref.abs().max().item())
    err = (ours.float() - ref.float()).abs().max().item()
    assert err <= tol, f"{name}: max abs err {err:.3g} > {tol:.3g}"


def _store(seen: dict, name: str, use_input: bool = False):
    """A forward hook that records a module's output (or first input) and changes nothing."""

    def hook(module, inputs, output):
        seen[name] = inputs[0] if use_input else output

    return hook


def _ocr_hooks(head, seen: dict) -> list:
    """Intermediates of the OCR stage under their golden names (heads without them add none)."""
    if not hasattr(head, "object_context_block"):
        return []
    return [
        head.bottleneck.register_forward_hook(_store(seen, "ocr.pixel_repr")),
        head.spatial_gather_module.register_forward_hook(_store(seen, "ocr.object_region_repr")),
        head.object_context_block.register_forward_hook(_store(seen, "ocr.object_context")),
        head.region_head.convs.register_forward_hook(_store(seen, "aux.head_input", use_input=True)),
    ]


def _run(model, recipe, x):
    seen: dict = {}
    hooks = _ocr_hooks(model.decode_head, seen)
    try:
        with torch.no_grad():
            feats = model.backbone(x)
            out = model(x)
            up = infer(
                model,
                x,
                InferenceSettings(recipe.data.num_classes, mode="whole", align_corners=recipe.model.align_corners),
            )
    finally:
        for h in hooks:
            h.remove()
    res = {f"backbone.{i}": f for i, f in enumerate(feats)}
    res.update({k: out[k] for k in ("logits", "feats", "aux_logits")})
    res["logits_upsampled"] = up
    if "ocr.pixel_repr" in seen:  # the region logits' spatial softmax, as mmseg's SpatialGatherModule
        n, k = out["aux_logits"].shape[:2]
        seen["ocr.soft_object_regions"] = out["aux_logits"].reshape(n, k, -1).softmax(2).reshape_as(out["aux_logits"])
    res.update(seen)
    return res


@pytest.mark.parametrize("case", CASES)
def test_converted_model_matches_mmseg(converted, case):
    """Every tensor each io file stores is compared (an unknown name fails: map it here)."""
    model, recipe = _model(converted, case)
    rel = readme_tolerance(f"mmseg-{case}")
    pre = config(f"mmseg-{case}")["data_preprocessor"]
    for io in _io_files(case):
        g = Stored("mmseg", f"mmseg-{case}", f"{io}.safetensors")
        res = _run(model, recipe, g["input"])
        for name in g.keys():
            where = f"{case}/{io}/{name}"
            if g.is_input(name):
                continue  # the network input itself (checked against image_bgr_uint8)
            ref = g.ref(name)
            if name == "image_bgr_uint8":  # the raw input: our preprocessing must give `input`
                assert pre["bgr_to_rgb"], where
                ours = np.stack([normalize(im.transpose(1, 2, 0), pre["mean"], pre["std"]) for im in ref.numpy()])
                np.testing.assert_allclose(ours, g["input"].numpy(), atol=2e-6, rtol=0, err_msg=where)
            elif name == "pred":  # may differ only where the golden top-2 logits are within tolerance
                ref_up = g.ref("logits_upsampled")
                diff = res["logits_upsampled"].argmax(1) != ref.long()
                if diff.any():
                    top2 = ref_up.topk(2, dim=1).values
                    gap = (top2[:, 0] - top2[:, 1])[diff]
                    assert (gap <= rel * max(1.0, ref_up.abs().max().item())).all(), f"{where}: pred differs"
            else:
                assert name in res, f"{where}: stored tensor with no ctxseg counterpart (map it in _run)"
                _close(res[name], ref, where, rel)
        g.assert_all_compared()


def test_converter_report_and_cascade_key_layout(converted):
    """OCR cascade: mmseg decode_head.0 (FCN) -> region_head, decode_head.1 (OCR) -> the head."""
    from ctxseg.convert.base import load_foreign
    from ctxseg.engine.checkpoint import read_checkpoint

    src = load_foreign(golden("mmseg-ocrnet-hrnet", "checkpoint.pth"))
    state, recipe, extra = read_checkpoint(converted["ocrnet-hrnet"])
    assert extra["converted_from"] == "mmseg:checkpoint.pth"
    assert len(state) == len(src)
    torch.testing.assert_close(
        state["decode_head.region_head.convs.0.conv.weight"], src["decode_head.0.convs.0.conv.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        state["decode_head.conv_seg.weight"], src["decode_head.1.conv_seg.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        state["decode_head.object_context_block.query_project.1.conv.weight"],
        src["decode_head.1.object_context_block.query_project.1.conv.weight"],
        rtol=0,
        atol=0,
    )
    # ResNetV1c deep stem -> timm conv1.N / bn1
    src_r = load_foreign(golden("mmseg-ocrnet-resnet", "checkpoint.pth"))
    state_r, _, _ = read_checkpoint(converted["ocrnet-resnet"])
    torch.testing.assert_close(state_r["backbone.net.conv1.6.weight"], src_r["backbone.stem.6.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        state_r["backbone.net.bn1.running_var"], src_r["backbone.stem.7.running_var"], rtol=0, atol=0
    )


def test_converter_is_strict(tmp_path):
    """A checkpoint with an unknown key fails with exit code 2 and writes nothing."""
    src = torch.load(golden("mmseg-fcn-resnet", "checkpoint.pth"), map_location="cpu", weights_only=True)
    src["state_dict"]["decode_head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": src["state_dict"]}, bad)
    dst = tmp_path / "out.safetensors"
    recipe = tmp_path / "fcn.toml"
    recipe.write_text(to_toml(mmseg_recipe("mmseg-fcn-resnet")) + "\n")
    proc = run_cli("convert", "mmseg", str(bad), "--recipe", str(recipe), "-o", str(dst), check=False)
    assert proc.returncode == 2
    assert "decode_head.extra.weight" in proc.stdout + proc.stderr
    assert not dst.exists()


# ------------------------------------------------------------------------------------------
# quirks listed in the READMEs


def test_quirk_hrnet_double_bilinear_resize(converted):
    """Fuse layers: Upsample(x2^(j-i)) THEN resize to the target; a single resize differs on odd sizes."""
    from ctxseg.config import apply_overrides, validate_recipe
    from ctxseg.models.segmentor import build_segmentor

    model, recipe = _model(converted, "ocrnet-hrnet")
    direct = build_segmentor(
        validate_recipe(apply_overrides(recipe.to_dict(), ['model.backbone.fuse_upsample="direct"']))
    )
    direct.load_state_dict(model.state_dict())
    direct.eval()
    g_even = load_file(str(golden("mmseg-ocrnet-hrnet", "io.safetensors")))
    g_odd = load_file(str(golden("mmseg-ocrnet-hrnet", "io_odd.safetensors")))
    with torch.no_grad():
        _close(direct(g_even["input"])["logits"], g_even["logits"], "ocrnet-hrnet/direct/io")  # identity on even sizes
        ours = model(g_odd["input"])["logits"]
        alt = direct(g_odd["input"])["logits"]
    _close(ours, g_odd["logits"], "ocrnet-hrnet/io_odd")
    rel = (alt - g_odd["logits"]).abs().max() / g_odd["logits"].abs().max()
    assert rel > 1e-2, "single resize should NOT match mmseg at odd sizes"
    # and the upsampling is bilinear: nearest (timm's HRNet) is far off
    assert model.backbone.stage2[0].fuse_layers[0][1][-1].scale_factor == 2


def test_quirk_contract_dilation():
    """ResNetV1c-D8: first block of a dilated stage uses half the dilation (1,2,2,.. / 2,4,4), padding = dilation."""
    cfg = json.loads(golden("mmseg-deeplabv3-resnet", "config.json").read_text())
    expected = cfg["backbone_resolved"]["per_block_conv2_dilation"]
    from ctxseg.models.backbones.resnet import resnet

    net = resnet(depth=50, stem_channels=8, base_channels=4).net
    for name, (dil, pad) in expected.items():
        layer, idx = name.split(".")
        conv2 = getattr(net, layer)[int(idx)].conv2
        assert (conv2.dilation[0], conv2.padding[0]) == (dil, pad), name
    assert net.layer3[0].downsample is not None and net.layer3[0].downsample[0].stride == (1, 1)


def test_quirk_aspp_order_and_3x3_bottleneck(converted):
    """mmseg ASPP: image pool FIRST in the concat, a 3x3 bottleneck, no dropout inside ASPP."""
    model, recipe = _model(converted, "deeplabv3-resnet")
    head = model.decode_head
    assert head.bottleneck.conv.kernel_size == (3, 3)
    assert [m.conv.dilation[0] for m in head.aspp_modules] == [1, 12, 24, 36]
    seen = {}
    hook = head.bottleneck.register_forward_hook(_store(seen, "cat", use_input=True))
    g = load_file(str(golden("mmseg-deeplabv3-resnet", "io_odd.safetensors")))
    with torch.no_grad():
        model(g["input"])
    hook.remove()
    c = head.channels
    first = seen["cat"][:, :c]
    torch.testing.assert_close(
        first, first[:, :, :1, :1].expand_as(first), msg="branch 0 must be the (constant) image pool"
    )
    # torchvision's layout (image pool LAST) with the same weights gives other features
    w = head.bottleneck.conv.weight
    with torch.no_grad():
        alt = F.conv2d(torch.cat([seen["cat"][:, c:], first], 1), w, padding=1)
        ref = F.conv2d(seen["cat"], w, padding=1)
    assert (alt - ref).abs().max() > 1e-2


def test_quirk_ocr_cascade_layout_and_attention_scaling(converted):
    """Intermediates of the OCR stage, and that the attention scale is ocr_channels**-0.5."""
    for case in ("ocrnet-hrnet", "ocrnet-resnet"):
        model, recipe = _model(converted, case)
        head = model.decode_head
        seen = {}
        hooks = [
            head.bottleneck.register_forward_hook(_store(seen, "ocr.pixel_repr")),
            head.spatial_gather_module.register_forward_hook(_store(seen, "ocr.object_region_repr")),
            head.object_context_block.register_forward_hook(_store(seen, "ocr.object_context")),
            head.region_head.convs.register_forward_hook(_store(seen, "aux.head_input", use_input=True)),
        ]
        for io in _io_files(case):
            seen.clear()
            g = load_file(str(golden(f"mmseg-{case}", f"{io}.safetensors")))
            with torch.no_grad():
                out = model(g["input"])
            n, k = out["aux_logits"].shape[:2]
            seen["ocr.soft_object_regions"] = (
                out["aux_logits"].reshape(n, k, -1).softmax(2).reshape_as(out["aux_logits"])
            )
            for name in [x for x in g if x.startswith(("ocr.", "aux."))]:
                _close(seen[name], g[name], f"{case}/{io}/{name}")
        for h in hooks:
            h.remove()
    # attention scaling: a different scale must break the match
    model, recipe = _model(converted, "ocrnet-resnet")
    block = model.decode_head.object_context_block
    g = load_file(str(golden("mmseg-ocrnet-resnet", "io.safetensors")))
    orig_forward = block.forward

    def unscaled(q, kf):
        n = q.shape[0]
        query = block.query_project(q).reshape(n, block.channels, -1).transpose(1, 2)
        key = block.key_project(kf).reshape(n, block.channels, -1)
        value = block.value_project(kf).reshape(n, block.channels, -1).transpose(1, 2)
        ctx = (
            torch.bmm(torch.bmm(query, key).softmax(-1), value).transpose(1, 2).reshape(n, block.channels, *q.shape[2:])
        )
        return block.bottleneck(torch.cat([block.out_project(ctx), q], 1))

    block.forward = unscaled
    with torch.no_grad():
        alt = model(g["input"])["logits"]
    block.forward = orig_forward
    assert (alt - g["logits"]).abs().max() > 1e-3


def test_quirk_exact_size_final_resize(converted):
    """logits_upsampled = interpolate(logits, size=input size); a scale-factor resize differs."""
    model, recipe = _model(converted, "ocrnet-resnet")
    g = load_file(str(golden("mmseg-ocrnet-resnet", "io_odd.safetensors")))
    h, w = g["input"].shape[2:]
    with torch.no_grad():
        up = infer(model, g["input"], InferenceSettings(recipe.data.num_classes))
    _close(up, g["logits_upsampled"], "ocrnet-resnet/io_odd/logits_upsampled")
    # what a stride-based upsampling would do: x8 then crop to the image; or align_corners=True
    by_stride = F.interpolate(g["logits"], scale_factor=8, mode="bilinear", align_corners=False)[:, :, :h, :w]
    corners = F.interpolate(g["logits"], size=(h, w), mode="bilinear", align_corners=True)
    for alt in (by_stride, corners):
        assert alt.shape == up.shape
        assert (alt - g["logits_upsampled"]).abs().max() > 1e-2


def test_ocr_cascade_training_losses():
    """Training: the region (FCN) logits are supervised with weight 0.4, the OCR logits with 1.0,
    gradients reach every parameter (prev_output is not detached, as in mmseg)."""
    from ctxseg.losses import Criterion, cross_entropy
    from ctxseg.models.segmentor import build_segmentor

    recipe = validate_recipe(mmseg_recipe("mmseg-ocrnet-hrnet"))
    torch.manual_seed(0)
    model = build_segmentor(recipe).train()
    x = torch.randn(2, 3, 64, 96)
    target = torch.randint(0, 7, (2, 64, 96))
    target[:, :4] = 255
    out = model(x)
    assert set(out) >= {"logits", "aux_logits", "feats"}
    total, terms = Criterion(recipe)(model, out, target, step=0)
    up = lambda t: F.interpolate(t, size=(64, 96), mode="bilinear", align_corners=False)  # noqa: E731
    assert terms["loss_aux"] == pytest.approx(
        0.4 * float(cross_entropy(up(out["aux_logits"]), target).detach()), rel=1e-5
    )
    assert terms["loss_ce"] == pytest.approx(float(cross_entropy(up(out["logits"]), target).detach()), rel=1e-5)
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad[:5]
    # the OCR loss alone also reaches the region head (no detach of the soft object regions)
    model.zero_grad()
    out = model(x)
    cross_entropy(up(out["logits"]), target).backward()
    assert model.decode_head.region_head.conv_seg.weight.grad.abs().sum() > 0
