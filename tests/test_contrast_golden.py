"""ContrastiveSeg against ../shared/golden/contrastiveseg, driven by the data: every case of
loss.json / queue.json (groups contrast_nomem, contrast_mem, sampling, forward, contrast_ce, queue)
and every model folder with a config.json (hrnet-contrast) is a case; the model is built from its
own config.json (tests/golden_cases.py contrast_model_recipe), tolerances are the README's, and
each test compares EVERY tensor its case stores (`<group>/<case>/*`), failing by name on one it
does not (tests/golden_cases.py GOLDEN_INPUTS lists the inputs)."""

from __future__ import annotations

import json

import pytest
import torch

from ctxseg.config import to_toml, validate_recipe
from ctxseg.losses import Criterion
from ctxseg.losses.contrast import contrastive_loss, pixel_contrast_loss, queue_contrast_set, sample_anchors
from ctxseg.models.context.contrast import PixelContrast
from ctxseg.models.heads.base import ClassifierSlot
from tests.conftest import GOLDEN, golden, run_cli
from tests.golden_cases import Stored, contrast_model_folders, contrast_model_recipe, contrast_tolerances

LOSS = json.loads(golden("contrastiveseg", "loss.json").read_text())
QUEUE = json.loads(golden("contrastiveseg", "queue.json").read_text())
TOL = contrast_tolerances()
MODELS = contrast_model_folders()
LOSS_GROUPS = ("contrast_nomem", "contrast_mem", "sampling", "forward", "contrast_ce")  # the groups tested below
QUEUE_STATE = ("segment_queue", "segment_queue_ptr", "pixel_queue", "pixel_queue_ptr")


def _cases(meta: dict, group: str) -> list:
    return [pytest.param(c, id=c["name"]) for c in meta.get(group, [])]


def loss_file() -> Stored:
    return Stored("contrastiveseg", "contrastiveseg", "loss.safetensors")


def close(ours: torch.Tensor, stored: Stored, key: str, kind: str) -> None:
    ref = stored.ref(key)
    atol, rtol = TOL[kind]
    ours = ours.detach()
    if kind == "exact":
        assert ours.shape == ref.shape and torch.equal(ours.to(ref.dtype), ref), f"{key}: not equal"
        return
    assert ours.dtype == ref.dtype, f"{key}: dtype {ours.dtype} vs {ref.dtype}"
    assert torch.allclose(ours.reshape(ref.shape), ref, atol=atol, rtol=rtol, equal_nan=True), (
        f"{key}: {ours.flatten()[:4].tolist()} vs {ref.flatten()[:4].tolist()} "
        f"(atol {atol}, rtol {rtol}; NaN expected where stored)"
    )


def test_cases_are_discovered():
    assert "hrnet-contrast" in MODELS and QUEUE["queue"]
    assert all(LOSS[g] for g in LOSS_GROUPS)


def test_every_stored_case_has_a_test():
    """A `<group>/<case>/...` key of a group or case that loss.json / queue.json does not list (so
    no test would run it) fails here by name."""
    for meta, name, groups in ((LOSS, "loss.safetensors", LOSS_GROUPS), (QUEUE, "queue.safetensors", ("queue",))):
        stored = Stored("contrastiveseg", "contrastiveseg", name)
        known = {f"{g}/{c['name']}" for g in groups for c in meta[g]}
        orphans = sorted({"/".join(k.split("/")[:2]) for k in stored.keys()} - known)
        assert not orphans, f"{name}: stored cases no test runs: {orphans}"
    stray = sorted(
        set(p.name for p in (GOLDEN / "contrastiveseg").glob("*.safetensors"))
        - {"loss.safetensors", "queue.safetensors"}
    )
    assert not stray, f"contrastiveseg: safetensors files no test reads: {stray}"
    for folder in MODELS:
        files = sorted(p.name for p in (GOLDEN / "contrastiveseg" / folder).glob("*.safetensors"))
        assert files == ["io.safetensors"], f"{folder}: files no test reads: {files}"


# ------------------------------------------------------------------------------------------------
# loss.safetensors


@pytest.mark.parametrize("case", _cases(LOSS, "contrast_nomem"))
def test_contrastive_no_queue(case):
    s, p = loss_file(), f"contrast_nomem/{case['name']}/"
    for dt in ("f64", "f32"):
        loss, _ = contrastive_loss(s[p + f"X_{dt}"], s[p + "y"], case["temperature"], case["base_temperature"])
        close(loss, s, p + f"loss_{dt}", f"loss_{dt}")
    s.assert_all_compared(lambda k: k.startswith(p))


@pytest.mark.parametrize("case", _cases(LOSS, "contrast_mem"))
def test_contrastive_with_queue(case):
    s, p = loss_file(), f"contrast_mem/{case['name']}/"
    queue = s[p + "queue_f32"]
    loss, _ = contrastive_loss(s[p + "X_f32"], s[p + "y"], case["temperature"], case["base_temperature"], queue=queue)
    close(loss, s, p + "loss_f32", "loss_f32")
    rows, labels = queue_contrast_set(queue)
    zero = case["zero_rows_at_end"]  # class 0 is skipped: its rows stay zero, label 0
    assert (rows[-zero:] == 0).all() and (labels[-zero:] == 0).all()
    if p + "X_contrast_f32" in s:
        close(rows, s, p + "X_contrast_f32", "exact")
        close(labels, s, p + "y_contrast", "exact")
    s.assert_all_compared(lambda k: k.startswith(p))


@pytest.mark.parametrize("case", _cases(LOSS, "sampling"))
def test_sampling_facts(case):
    s, p = loss_file(), f"sampling/{case['name']}/"
    labels, predict = s[p + "labels"], s[p + "predict"]
    feats = torch.randn(*labels.shape, 3, dtype=torch.float64)
    a = sample_anchors(feats, labels, predict, case["max_samples"], case["max_views"], -1, random=False)
    if case["returns_none"]:
        assert a is None
    else:
        assert a.n_view == case["n_view"] and a.pairs.shape[0] == case["total_classes"]
        for key in ("pairs", "num_hard", "num_easy", "num_hard_keep", "num_easy_keep"):
            close(getattr(a, key), s, p + key, "exact")
        close(a.indices, s, p + "indices_identity_perm", "exact")
        assert a.feats.dtype == torch.float32  # official: written into a float32 tensor
        assert torch.equal(a.feats, feats[a.pairs[:, :1], a.indices].float())
    s.assert_all_compared(lambda k: k.startswith(p))


@pytest.mark.parametrize("case", _cases(LOSS, "forward"))
def test_full_forward(case):
    s, p = loss_file(), f"forward/{case['name']}/"
    queue = torch.cat([s[p + "segment_queue"], s[p + "pixel_queue"]], dim=1) if case["mem_variant"] else None
    res = pixel_contrast_loss(
        s[p + "embed"],
        s[p + "labels"],
        s[p + "predict"],
        case["temperature"],
        case["base_temperature"],
        case["max_samples"],
        case["max_views"],
        -1,
        queue=queue,
        random=False,
    )
    close(res.labels_down, s, p + "labels_down", "exact")
    close(res.anchors.feats, s, p + "anchors", "exact")
    close(res.anchors.labels, s, p + "anchor_labels", "exact")
    assert res.anchors.n_view == case["n_view"]
    close(res.loss, s, p + "loss", "loss_f32")
    s.assert_all_compared(lambda k: k.startswith(p))


def _contrast_ce_model(case: dict, memory_size: int | None):
    """ctxseg's model + Criterion for a ContrastCELoss case: the case's contrast settings as the
    pixel_contrast plug-in, openseg's FSCELoss as the recipe's weighted-mean CE (class weights,
    normalised by the summed weights), logits upsampled with align_corners=True, ignore -1."""
    c = case["contrast"]
    mem = c.get("with_memory", False)
    plugin = {
        "type": "pixel_contrast",
        "proj_dim": c["proj_dim"],
        "temperature": c["temperature"],
        "base_temperature": c["base_temperature"],
        "max_samples": c["max_samples"],
        "max_views": c["max_views"],
        "loss_weight": c["loss_weight"],
        "warmup": c["warmup_iters"],
        "use_queue": mem,
    }
    if mem:
        plugin.update(memory_size=memory_size, pixel_update_freq=c["pixel_update_freq"])
    recipe = validate_recipe(
        {
            "name": f"golden-contrast-ce-{case['name']}",
            "data": {"num_classes": len(case["ce_weight"]), "ignore_index": case["ce_ignore_index"]},
            "model": {
                "align_corners": True,
                "backbone": {"type": "resnet", "depth": 18, "stem_channels": 8, "base_channels": 4},
                "head": {"type": "fcn", "channels": 8, "num_convs": 1},
                "plugins": [plugin],
            },
            "train": {"loss": {"class_weight": case["ce_weight"], "class_weight_norm": "weights"}},
        }
    )
    from ctxseg.models.segmentor import build_segmentor

    model = build_segmentor(recipe).train()
    model.plugins["contrast"].random_sampling = False  # identity permutation, as the golden
    return model, Criterion(recipe), recipe


@pytest.mark.parametrize("case", _cases(LOSS, "contrast_ce"))
def test_contrast_ce_through_the_criterion(case):
    """ContrastCELoss = weighted-mean CE + loss_weight x contrast once iters >= warmup_iters, computed
    by ctxseg's Criterion over the model's plug-in terms (the golden's seg / embed as the outputs)."""
    s, p = loss_file(), f"contrast_ce/{case['name']}/"
    # the stored queues are shrunk ([C, 3, D] instead of the config's memory_size 5000)
    queue_size = s[p + "segment_queue"].shape[1] if p + "segment_queue" in s else None
    model, criterion, recipe = _contrast_ce_model(case, queue_size)
    plugin = model.plugins["contrast"]
    if plugin.use_queue:
        plugin.segment_queue.copy_(s[p + "segment_queue"])
        plugin.pixel_queue.copy_(s[p + "pixel_queue"])
    outputs = {"logits": s[p + "seg"], "embed": s[p + "embed"]}
    target = s[p + "target"]
    warmup = recipe.model.plugins[0]["warmup"]
    with_embed, terms = criterion(model, outputs, target, step=warmup)  # with_embed: iters >= warmup_iters
    close(with_embed, s, p + "loss_with_embed", "loss_f32")
    assert {k for k in terms if not k.startswith("stat_")} == {
        "loss_ce",
        "loss_contrast",
    }  # stat_* are logged, not summed
    without, terms = criterion(model, outputs, target, step=warmup - 1)
    close(without, s, p + "loss_without_embed", "loss_f32")
    assert terms["loss_contrast"] == 0.0
    plugin.official_single_process = True  # the official non-distributed trainer never switches it on
    assert float(criterion(model, outputs, target, step=10**6)[0]) == pytest.approx(float(without), rel=1e-7)
    s.assert_all_compared(lambda k: k.startswith(p))


# ------------------------------------------------------------------------------------------------
# queue.safetensors


class _Head(torch.nn.Module):
    channels = 8


@pytest.mark.parametrize("case", _cases(QUEUE, "queue"))
def test_official_queue_update(case):
    s = Stored("contrastiveseg", "contrastiveseg", "queue.safetensors")
    p = f"queue/{case['name']}/"
    m = PixelContrast(
        classifier=ClassifierSlot(_Head()),
        in_channels=[8],
        num_classes=case["C"],
        proj_dim=case["D"],
        use_queue=True,
        memory_size=case["M"],
        pixel_update_freq=case["K"],
        official_queue_update=True,
        network_stride=case["stride"],
        ignore_index=-1,
    )
    m.random_sampling = False  # identity permutation, as the golden
    for k in QUEUE_STATE:
        getattr(m, k).copy_(s[p + "init/" + k])
    for step in range(case["num_steps"]):
        m.update_queues(s[p + f"step{step}/keys"], s[p + f"step{step}/labels"])
        for k in QUEUE_STATE:
            close(getattr(m, k), s, p + f"step{step}/{k}", "exact" if k.endswith("_ptr") else "queue")
    s.assert_all_compared(lambda k: k.startswith(p))


# ------------------------------------------------------------------------------------------------
# model folders (hrnet-contrast): converted through the CLI, every stored tensor in f32 and f64


@pytest.mark.parametrize("folder", MODELS)
def test_official_model_through_cli(folder, tmp_path):
    from ctxseg.engine.checkpoint import load_model

    recipe = tmp_path / f"{folder}.toml"
    recipe.write_text(to_toml(contrast_model_recipe(folder)) + "\n")
    dst = tmp_path / f"{folder}.safetensors"
    run_cli(
        "convert",
        "openseg",
        str(golden("contrastiveseg", folder, "checkpoint.pth")),
        "--recipe",
        str(recipe),
        "-o",
        str(dst),
    )
    model, _, _ = load_model(dst)
    s = Stored("contrastiveseg", "contrastiveseg", folder, "io.safetensors")
    plugin = model.plugins["contrast"]
    seen: dict = {}
    plugin.proj_head.proj.register_forward_hook(lambda mod, i, o: seen.__setitem__("proj_pre_norm", o))
    dtypes = sorted({k.rsplit("_", 1)[1] for k in s.keys()})
    assert dtypes == ["f32", "f64"], dtypes
    for dt in dtypes:
        m = (model.double() if dt == "f64" else model.float()).eval()
        x = s[f"input_{dt}"]
        with torch.no_grad():
            feats = m.backbone(x)
            out = m.decode_head(feats)
            embed = plugin.project(out, feats)
            full = m(x)
        ours = {f"backbone_out{i}": f for i, f in enumerate(feats)}
        ours.update(feats=out["feats"], seg=out["logits"], embed=embed, proj_pre_norm=seen["proj_pre_norm"])
        for name, value in ours.items():
            close(value, s, f"{name}_{dt}", f"model_{dt}")
        assert set(full) == {"logits", "feats"}  # nothing added at test time
        assert torch.equal(full["logits"], out["logits"])
    s.assert_all_compared()
