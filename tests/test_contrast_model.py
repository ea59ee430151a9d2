"""ContrastiveSeg plug-in: the intended queue update, queue state through save/load, plug-in outputs,
and the full-size key manifests. The tensor goldens (official queue update, the tiny official HRNet
contrast model through `ctxseg convert openseg`) are in tests/test_contrast_golden.py."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ctxseg.models.context.contrast import PixelContrast
from ctxseg.models.heads.base import ClassifierSlot
from tests.conftest import golden
from tests.golden_cases import contrast_model_recipe

STATE = ("segment_queue", "segment_queue_ptr", "pixel_queue", "pixel_queue_ptr")


class _Head(torch.nn.Module):
    channels = 8


def test_intended_queue_update_is_a_ring_buffer():
    m = PixelContrast(
        classifier=ClassifierSlot(_Head()),
        in_channels=[8],
        num_classes=3,
        proj_dim=4,
        use_queue=True,
        memory_size=5,
        pixel_update_freq=2,
        ignore_index=255,
    )
    keys = F.normalize(torch.randn(1, 4, 2, 2), dim=1)
    labels = torch.tensor(
        [[[1, 1, 2, 2], [1, 1, 2, 2], [255, 255, 1, 1], [255, 255, 1, 1]]]
    )  # 4x4 -> 2x2 grid [[1,2],[255,1]]
    m.random_sampling = False
    for step in range(3):
        m.update_queues(keys, labels)
    assert m.pixel_queue_ptr.tolist() == [0, (3 * 2) % 5, 3 % 5]  # advances by K (2 pixels of class 1, 1 of class 2)
    assert m.segment_queue_ptr.tolist() == [0, 3, 3]
    flat = keys[0].reshape(4, 4)
    mean1 = F.normalize(flat[:, [0, 3]].mean(1), dim=0)
    assert torch.allclose(m.segment_queue[1, 2], mean1, atol=1e-6)
    assert torch.allclose(m.pixel_queue[1, 0], flat[:, 3], atol=1e-6)  # step 2 wrapped: slot 0 = second pixel
    assert torch.allclose(m.pixel_queue[2, 0], flat[:, 1], atol=1e-6)


def test_plugin_outputs_only_while_training():
    m = PixelContrast(classifier=ClassifierSlot(_Head()), in_channels=[8], num_classes=3, proj_dim=4, proj="convmlp")
    outs = {"feats": torch.randn(2, 8, 5, 5), "logits": torch.randn(2, 3, 5, 5)}
    m.train()
    e = m(outs, [], None)["embed"]
    assert e.shape == (2, 4, 5, 5) and torch.allclose(e.norm(dim=1), torch.ones(2, 5, 5), atol=1e-5)
    m.eval()
    assert m(outs, [], None) == {}


def test_queue_state_survives_save_and_load(tmp_path):
    from ctxseg.config import validate_recipe
    from ctxseg.engine.checkpoint import load_model, save_weights
    from ctxseg.models.segmentor import build_segmentor

    raw = contrast_model_recipe("hrnet-contrast")  # the tiny official model, with queues
    raw["model"]["plugins"][0].update(use_queue=True, memory_size=7, pixel_update_freq=3, max_views=1)
    recipe = validate_recipe(raw)
    model = build_segmentor(recipe).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    out = model(images, labels)
    model.after_train_step(out, labels, step=0, lr=0.01)
    plug = model.plugins["contrast"]
    assert int(plug.pixel_queue_ptr.sum()) > 0
    path = save_weights(tmp_path / "m.safetensors", model, recipe)
    loaded, _, _ = load_model(path)
    for k in STATE:
        assert torch.equal(getattr(loaded.plugins["contrast"], k), getattr(plug, k)), k


def _manifest_check(name: str, recipe_name: str, overrides: list[str]):
    from ctxseg.config import load_recipe
    from ctxseg.convert.base import apply_keymap
    from ctxseg.convert.openseg import keymap_for
    from ctxseg.models.segmentor import build_segmentor

    manifest = json.loads(golden("contrastiveseg", name).read_text())
    src = {k[7:] if k.startswith("module.") else k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    recipe = load_recipe(recipe_name, overrides)
    recipe.model.backbone = {k: v for k, v in recipe.model.backbone.items() if k != "pretrained"}
    with torch.device("meta"):
        model = build_segmentor(recipe)
    _, report = apply_keymap(src, model.state_dict(), keymap_for(recipe, src))
    assert report.ok, report.problems()
    assert report.mapped == len(src) - len(report.ignored)
    return report


@pytest.mark.parametrize(
    "name,recipe",
    [
        ("manifest_hrnet_w48_contrast.json", "contrast-hrnet48"),
        ("manifest_hrnet_w48_mem.json", "contrast-hrnet48-mem"),
        ("manifest_deeplab_v3_contrast_r101.json", "contrast-deeplabv3-r101-cityscapes"),
    ],
)
def test_full_size_manifests_map_every_key(name, recipe):
    report = _manifest_check(name, recipe, [])
    assert not report.ignored


def test_contrast_checkpoint_into_plain_model_lists_training_only_keys():
    report = _manifest_check("manifest_hrnet_w48_contrast.json", "ce-hrnet48-cityscapes", [])
    assert len(report.ignored) == 9 and all("proj_head" in k for k in report.ignored)
