"""Swin + UPerNet against ../shared/golden/mmseg-upernet-swin (mmseg 1.2.2), one test per quirk.
The model is built from the case's config.json (tests/golden_cases.py mmseg_recipe); every stored
tensor is compared by tests/test_mmseg_golden.py. Tolerance: the README's
max |ours - ref| <= T * max(1, max |ref|).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ctxseg.config import apply_overrides, load_recipe, to_toml, validate_recipe
from ctxseg.convert.base import convert_state_dict, load_foreign
from ctxseg.convert.mmseg import keymap_for
from ctxseg.convert.mmseg_swin import orig_to_unfold, swin_keymap, unfold_to_orig
from ctxseg.engine.checkpoint import load_model, read_checkpoint
from ctxseg.errors import UserError
from ctxseg.models.segmentor import build_segmentor
from tests.conftest import golden, run_cli
from tests.golden_cases import mmseg_recipe, readme_tolerance

CASE = "mmseg-upernet-swin"
TOL = readme_tolerance(CASE)


def _recipe(*overrides: str):
    """The case's model as built from its config.json, with recipe overrides."""
    return validate_recipe(apply_overrides(mmseg_recipe(CASE), list(overrides)))


def _close(ours: torch.Tensor, ref: torch.Tensor, name: str) -> None:
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    tol = TOL * max(1.0, ref.abs().max().item())
    err = (ours.float() - ref.float()).abs().max().item()
    assert err <= tol, f"{name}: max abs err {err:.3g} > {tol:.3g}"


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("swin")
    dst, recipe = out / "swin.safetensors", out / "swin.toml"
    recipe.write_text(to_toml(mmseg_recipe(CASE)) + "\n")
    proc = run_cli("convert", "mmseg", str(golden(CASE, "checkpoint.pth")), "--recipe", str(recipe), "-o", str(dst))
    assert "mapped" in proc.stdout and dst.is_file()
    return str(dst)


@pytest.fixture(scope="module")
def model(converted):
    m, recipe, _ = load_model(converted)
    assert not m.training
    m.with_aux = True
    return m


def _variant(model, *overrides: str, state: dict | None = None):
    """The golden model rebuilt with recipe overrides (same weights unless `state` is given)."""
    recipe = _recipe(*overrides)
    m = build_segmentor(recipe).eval()
    m.load_state_dict(state or model.state_dict())
    return m


def _gold(io: str) -> dict:
    return load_file(str(golden(CASE, f"{io}.safetensors")))


def test_converter_report(converted):
    src = load_foreign(golden(CASE, "checkpoint.pth"))
    state, _, extra = read_checkpoint(converted)
    assert extra["converted_from"] == "mmseg:checkpoint.pth"
    n_index = sum(k.endswith("relative_position_index") for k in src)
    assert n_index == 8 and len(state) == len(src) - n_index  # indices are derived, not stored
    torch.testing.assert_close(
        state["backbone.stages.1.blocks.1.mlp.fc1.weight"],
        src["backbone.stages.1.blocks.1.ffn.layers.0.0.weight"],
        rtol=0,
        atol=0,
    )
    torch.testing.assert_close(
        state["backbone.stages.3.blocks.0.mlp.fc2.bias"],
        src["backbone.stages.3.blocks.0.ffn.layers.1.bias"],
        rtol=0,
        atol=0,
    )


# ------------------------------------------------------------------------------------------
# quirks listed in the README


def test_quirk_unfold_ordered_patch_merging(model):
    """mmseg merges 2x2 patches in nn.Unfold order; original/timm order needs permuted weights."""
    g = _gold("io")
    state = model.state_dict()
    timm_order = _variant(model, 'model.backbone.merge_order="timm"')  # same (unpermuted) weights
    with torch.no_grad():
        assert _rel(timm_order(g["input"])["logits"], g["logits"]) > 0.5
    # with the weights permuted to the original order (what a converter must do) it is exact again
    perm = {k: (unfold_to_orig(v) if ".downsample." in k else v) for k, v in state.items()}
    timm_order = _variant(model, 'model.backbone.merge_order="timm"', state=perm)
    with torch.no_grad():
        _close(timm_order(g["input"])["logits"], g["logits"], "timm-order+permuted")
    # the merged vector itself: c*4 + 2*dh + dw, checked against nn.Unfold
    merge = model.backbone.stages[0].downsample
    x = torch.randn(1, 6 * 10, 8)
    seen = {}
    h = merge.norm.register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    merge(x, (6, 10))
    h.remove()
    ref = torch.nn.Unfold(2, stride=2)(x.view(1, 6, 10, 8).permute(0, 3, 1, 2)).transpose(1, 2)
    torch.testing.assert_close(seen["in"], ref, rtol=0, atol=0)
    w = torch.randn(3, 32)
    torch.testing.assert_close(orig_to_unfold(unfold_to_orig(w)), w, rtol=0, atol=0)


def test_quirk_always_shift(model):
    """Odd blocks shift even when the padded map is one window (stages 3/4 here)."""
    g = _gold("io")
    no_shift = _variant(model, "model.backbone.always_shift=false")
    with torch.no_grad():
        rel = _rel(no_shift(g["input"])["logits"], g["logits"])
    assert rel > 0.1, rel
    assert model.backbone.stages[3].blocks[1].attn.shift_size == 3


def test_quirk_padding_corner_and_unmasked(model):
    """io_odd: 45x70 -> 12x18 -> 6x9 -> 3x5 -> 2x3 (corner padding), padded window tokens unmasked."""
    g = _gold("io_odd")
    with torch.no_grad():
        shapes = [tuple(f.shape[2:]) for f in model.backbone(g["input"])]
    assert shapes == [(12, 18), (6, 9), (3, 5), (2, 3)]
    masked = _variant(model, "model.backbone.mask_padding=true")
    with torch.no_grad():
        rel = _rel(masked(g["input"])["logits"], g["logits"])
    assert rel > 1e-2, "masking the padded tokens must change the result (mmseg does not mask them)"


def test_quirk_relative_position_index_and_bias(model):
    """relative_position_index is derived (equal to mmseg's persistent buffer); bias table (2w-1)^2 x heads."""
    src = load_foreign(golden(CASE, "checkpoint.pth"))
    attn = model.backbone.stages[2].blocks[1].attn.w_msa
    torch.testing.assert_close(
        attn.relative_position_index,
        src["backbone.stages.2.blocks.1.attn.w_msa.relative_position_index"],
        rtol=0,
        atol=0,
    )
    assert tuple(attn.relative_position_bias_table.shape) == (169, 8)
    bad = dict(src)
    bad["backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"] = bad[
        "backbone.stages.0.blocks.0.attn.w_msa.relative_position_index"
    ].flip(0)
    recipe = _recipe()
    with pytest.raises(UserError, match="relative_position_index"):
        convert_state_dict(bad, model, keymap_for(recipe, bad))


def test_quirk_output_norms_and_ffn(model):
    """Stage outputs go through norm{i}; GELU is exact (erf)."""
    g = _gold("io")
    bb = model.backbone
    assert [getattr(bb, f"norm{i}").eps for i in range(4)] == [1e-5] * 4
    assert bb.stages[0].blocks[0].mlp.act.approximate == "none"
    seen = {}
    h = bb.norm2.register_forward_hook(lambda m, i, o: seen.setdefault("raw", i[0]))
    with torch.no_grad():
        bb(g["input"])
    h.remove()
    raw = seen["raw"].view(2, 4, 6, 32).permute(0, 3, 1, 2)
    assert _rel(raw, g["backbone.2"]) > 0.1  # without the output norm it would be far off


def test_quirk_uper_align_corners_false(model):
    """UPerNet top-down/PPM resizes use align_corners=False; True differs."""
    g = _gold("io_odd")
    ac = _variant(model, "model.align_corners=true")
    with torch.no_grad():
        assert _rel(ac(g["input"])["logits"], g["logits"]) > 1e-3


# ------------------------------------------------------------------------------------------
# full-size manifests (shape level, meta device: no memory, no weights)


def _meta_model(recipe):
    backbone = dict(recipe.model.backbone)
    backbone.pop("pretrained", None)
    recipe.model.backbone = backbone
    with torch.device("meta"):
        return build_segmentor(recipe)


def _manifest_src(path) -> dict:
    shapes = json.loads(path.read_text())
    return {
        k: torch.empty(
            v,
            device="meta",
            dtype=torch.int64 if k.endswith(("relative_position_index", "num_batches_tracked")) else torch.float32,
        )
        for k, v in shapes.items()
    }


def test_mmseg_swin_manifest_maps_onto_shipped_recipe():
    recipe = load_recipe("upernet-swin-t-ade20k-160k")
    model = _meta_model(recipe)
    src = _manifest_src(
        golden("mmseg-manifests", "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.json")
    )
    km = keymap_for(recipe, src)
    km.fixups = [f for f in km.fixups if f.__name__ != "check_index"]  # values unknown on meta tensors
    km.ignore.append(r".*relative_position_index")
    from ctxseg.convert.base import apply_keymap

    _, report = apply_keymap(src, model.state_dict(), km)
    assert report.ok, report.problems()
    assert len(src) == 271 and report.mapped == 271 - 12
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(
        torch.Size(s).numel()
        for k, s in json.loads(
            golden(
                "mmseg-manifests", "swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.json"
            ).read_text()
        ).items()
        if not k.endswith(("relative_position_index", "num_batches_tracked", "running_mean", "running_var"))
    )


@pytest.mark.parametrize(
    "arch,window,name",
    [
        ("tiny", 7, "upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_bs4_cac"),
        ("base", 12, "upernet_swin_base_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_cac"),
        ("large", 12, "upernet_swin_large_patch4_window12_512x512_160k_ade20k_pretrain_384x384_22K_cac"),
    ],
)
def test_cac_swin_backbone_manifests(arch, window, name):
    """The backbone keys of CAC's released (mmseg 0.x) Swin-T/B/L models map onto our presets."""
    src = {k: v for k, v in _manifest_src(golden("cac", f"manifest_{name}.json")).items() if k.startswith("backbone.")}
    from ctxseg.convert.base import apply_keymap
    from ctxseg.models.backbones.swin import swin

    with torch.device("meta"):
        bb = swin(arch=arch, window_size=window)
    target = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    km = swin_keymap(src)
    km.fixups = km.fixups[:1]
    km.ignore.append(r".*relative_position_index")
    _, report = apply_keymap(src, target, km)
    assert report.ok, report.problems()
    assert bb.out_channels == [src[f"backbone.norm{i}.weight"].shape[0] for i in range(4)]


def test_timm_swin_weights_load_and_match_timm(tmp_path):
    """`pretrained=` with a timm-layout state dict: same stage outputs as timm's own Swin at a size
    where the classification Swin is also unpadded (and, with always_shift=false, unshifted)."""
    import timm

    from ctxseg.models.backbones.swin import swin

    torch.manual_seed(0)
    ref = timm.create_model(
        "swin_tiny_patch4_window7_224",
        pretrained=False,
        embed_dim=8,
        depths=(2, 2, 2, 2),
        num_heads=(2, 4, 8, 16),
        img_size=224,
        num_classes=0,
    ).eval()
    for n, p in ref.named_parameters():  # non-trivial norms/biases so a mis-mapped key shows
        if p.dim() == 1:
            p.data.normal_(0.5 if n.endswith("weight") else 0.0, 0.2)
    path = tmp_path / "timm_swin.pth"
    torch.save(ref.state_dict(), path)
    ours = swin(
        embed_dims=8,
        depths=[2, 2, 2, 2],
        num_heads=[2, 4, 8, 16],
        always_shift=False,
        drop_path_rate=0.0,
        pretrained=str(path),
    ).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats = ref.forward_intermediates(x, intermediates_only=True, norm=False)
        seen = []
        hooks = [getattr(ours, f"norm{i}").register_forward_hook(lambda m, i, o: seen.append(i[0])) for i in range(4)]
        ours(x)
    for h in hooks:
        h.remove()
    for i, (a, b) in enumerate(zip(seen, feats)):
        _close(a.view(b.shape[0], *b.shape[2:], b.shape[1]).permute(0, 3, 1, 2), b, f"stage {i}")
