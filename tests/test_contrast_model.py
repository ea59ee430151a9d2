"""ContrastiveSeg plug-in: queue goldens, queue state through save/load, the tiny official HRNet
contrast model through `ctxseg convert openseg`, and the full-size key manifests."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ctxseg.models.heads.base import ClassifierSlot
from ctxseg.models.context.contrast import PixelContrast
from tests.conftest import REPO, golden, run_cli

QMETA = json.loads(golden("contrastiveseg", "queue.json").read_text())
Q = load_file(str(golden("contrastiveseg", "queue.safetensors")))
STATE = ("segment_queue", "segment_queue_ptr", "pixel_queue", "pixel_queue_ptr")


class _Head(torch.nn.Module):
    channels = 8


@pytest.mark.parametrize("case", QMETA["queue"], ids=lambda c: c["name"])
def test_official_queue_update(case):
    p = f"queue/{case['name']}/"
    m = PixelContrast(classifier=ClassifierSlot(_Head()), in_channels=[8], num_classes=case["C"], proj_dim=case["D"], use_queue=True, memory_size=case["M"],
                      pixel_update_freq=case["K"], official_queue_update=True, network_stride=case["stride"], ignore_index=-1)
    m.random_sampling = False  # identity permutation, as the golden
    for k in STATE:
        getattr(m, k).copy_(Q[p + "init/" + k])
    for s in range(case["num_steps"]):
        m.update_queues(Q[p + f"step{s}/keys"], Q[p + f"step{s}/labels"])
        for k in STATE:
            got, want = getattr(m, k), Q[p + f"step{s}/{k}"]
            if k.endswith("_ptr"):
                assert torch.equal(got, want), (s, k)
            else:
                assert torch.allclose(got, want, atol=1e-6, rtol=0), (s, k)


def test_intended_queue_update_is_a_ring_buffer():
    m = PixelContrast(classifier=ClassifierSlot(_Head()), in_channels=[8], num_classes=3, proj_dim=4, use_queue=True, memory_size=5, pixel_update_freq=2, ignore_index=255)
    keys = F.normalize(torch.randn(1, 4, 2, 2), dim=1)
    labels = torch.tensor([[[1, 1, 2, 2], [1, 1, 2, 2], [255, 255, 1, 1], [255, 255, 1, 1]]])  # 4x4 -> 2x2 grid [[1,2],[255,1]]
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


def _tiny_recipe_with_queue(tmp_path):
    text = (REPO / "tests" / "recipes" / "contrast_hrnet_tiny.toml").read_text()
    path = tmp_path / "tiny_mem.toml"
    path.write_text(text + "use_queue = true\nmemory_size = 7\npixel_update_freq = 3\nmax_views = 1\n")
    return path


def test_queue_state_survives_save_and_load(tmp_path):
    from ctxseg.config import load_recipe
    from ctxseg.engine.checkpoint import load_model, save_weights
    from ctxseg.models.segmentor import build_segmentor

    recipe = load_recipe(_tiny_recipe_with_queue(tmp_path))
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


def test_tiny_official_hrnet_contrast_through_cli(tmp_path):
    dst = tmp_path / "tiny.safetensors"
    run_cli("convert", "openseg", str(golden("contrastiveseg", "hrnet-contrast", "checkpoint.pth")),
            "--recipe", str(REPO / "tests" / "recipes" / "contrast_hrnet_tiny.toml"), "-o", str(dst))
    from ctxseg.engine.checkpoint import load_model

    model, _, _ = load_model(dst)
    io = load_file(str(golden("contrastiveseg", "hrnet-contrast", "io.safetensors")))
    for dt, tol in (("f32", 1e-4), ("f64", 1e-9)):
        m = (model.double() if dt == "f64" else model.float()).eval()
        with torch.no_grad():
            feats = m.backbone(io[f"input_{dt}"])
            for i in range(4):
                assert torch.allclose(feats[i], io[f"backbone_out{i}_{dt}"], atol=tol, rtol=tol), (dt, i)
            out = m.decode_head(feats)
            assert torch.allclose(out["feats"], io[f"feats_{dt}"], atol=tol, rtol=tol)
            assert torch.allclose(out["logits"], io[f"seg_{dt}"], atol=tol, rtol=tol)
            embed = m.plugins["contrast"].project(out, feats)
            assert torch.allclose(embed, io[f"embed_{dt}"], atol=tol, rtol=tol)
            assert set(m(io[f"input_{dt}"])) == {"logits", "feats"}  # nothing added at test time
            assert torch.allclose(m(io[f"input_{dt}"])["logits"], io[f"seg_{dt}"], atol=tol, rtol=tol)


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


@pytest.mark.parametrize("name,recipe", [("manifest_hrnet_w48_contrast.json", "contrast-hrnet48"),
                                         ("manifest_hrnet_w48_mem.json", "contrast-hrnet48-mem"),
                                         ("manifest_deeplab_v3_contrast_r101.json", "contrast-deeplabv3-r101-cityscapes")])
def test_full_size_manifests_map_every_key(name, recipe):
    report = _manifest_check(name, recipe, [])
    assert not report.ignored


def test_contrast_checkpoint_into_plain_model_lists_training_only_keys():
    report = _manifest_check("manifest_hrnet_w48_contrast.json", "ce-hrnet48-cityscapes", [])
    assert len(report.ignored) == 9 and all("proj_head" in k for k in report.ignored)
